"""Wan-Animate's conditioning geometry against the official code: animate_pose.py and the engine's clip tiling.

Compared with the official functions themselves, on many random cases: the face box around the driving face's
landmarks (`get_face_bboxes` of the preprocessing), the letterbox of the photo and of pose frames (`padding_resize`
of the preprocessing and of `WanAnimate`), the pose skeleton drawing (`draw_aapose_new`, the body part of
`draw_aapose_by_meta_new`: our renderer draws no hands), and `WanAnimate`'s frame padding to whole clips
(`get_valid_len`), its bouncing frame order (`inputs_padding`) and its temporal-guidance mask (`get_i2v_mask`).
The official preprocessing's pose and face models (YOLOv10m + ViTPose-H whole-body ONNX) are not available here,
so our engine's keypoints come from elsewhere (animate_pose.py says what): only what is drawn from them is compared.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from python_backends.generation.wan.animate.pose import (
    AAPOSE_KEYPOINTS,
    FACE_SCALE,
    face_box,
    i2v_mask,
    padding_resize,
    ping_pong_indices,
    render_pose,
    valid_length,
)

from .official import official_preprocess

EXACT = {"tolerance": 0.0, "why": "integers, 0/1 masks and uint8 pixels of the same cv2 calls"}


@pytest.fixture(scope="module")
def animate(official):
    return official.animate.WanAnimate


def test_face_box(official, parity) -> None:
    """get_face_bboxes(keypoints_face, scale=1.3, image_shape) as the preprocessing calls it: normalised face
    keypoints after one leading point, which it drops; ours on the 68 points in pixels."""
    get_face_bboxes = official_preprocess("utils").get_face_bboxes
    rng = np.random.default_rng(0)
    ours, theirs = [], []
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(64, 1200, 2))
        centre, size = rng.uniform(0, 1, 2) * (w, h), rng.uniform(0.05, 0.9) * min(w, h)
        landmarks = centre + rng.uniform(-0.5, 0.5, (68, 2)) * size * rng.uniform(0.5, 1.5, 2)
        ours.append(face_box(landmarks, (h, w), FACE_SCALE))
        normalised = np.vstack([rng.uniform(0, 1, (1, 2)), landmarks / (w, h)])
        theirs.append(get_face_bboxes(normalised, scale=FACE_SCALE, image_shape=(h, w)))
    parity.check("Animate conditioning: driving face box (get_face_bboxes)", np.array(ours), np.array(theirs),
                 case="200 faces, some past the image edge", **EXACT)


def test_letterbox(animate, parity) -> None:
    """padding_resize of the preprocessing (pose frames, reference) and of WanAnimate (the reference at the
    pose size): both official copies against ours."""
    preprocess_letterbox = official_preprocess("utils").padding_resize
    rng = np.random.default_rng(1)
    sizes = [(64, 48), (48, 64), (100, 100), (37, 91), (720, 1280), (1280, 720), (17, 400)]
    for (h, w), (out_h, out_w) in itertools.product(sizes, [(32, 48), (64, 64), (720, 1280), (48, 32)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = padding_resize(image, out_h, out_w)
        case = f"{w}x{h} into {out_w}x{out_h}"
        parity.check("Animate conditioning: letterbox (preprocess padding_resize)", ours,
                     preprocess_letterbox(image, out_h, out_w), case=case, **EXACT)
        parity.check("Animate conditioning: letterbox (WanAnimate.padding_resize)", ours,
                     animate.padding_resize(None, image, out_h, out_w), case=case, **EXACT)


@pytest.mark.parametrize("height, width", [(720, 1280), (480, 832), (64, 96)])
def test_pose_drawing(parity, height, width) -> None:
    """draw_aapose_new (threshold 0.5, stick width 'v2', no hands) against render_pose, random skeletons with
    random confidences around the threshold."""
    draw_aapose_new = official_preprocess("human_visualization").draw_aapose_new
    rng = np.random.default_rng(height)
    ours, theirs = [], []
    for _ in range(6):
        keypoints = np.column_stack([rng.uniform(-0.1, 1.1, len(AAPOSE_KEYPOINTS)) * width,
                                     rng.uniform(-0.1, 1.1, len(AAPOSE_KEYPOINTS)) * height,
                                     rng.uniform(0.2, 1.0, len(AAPOSE_KEYPOINTS))])
        ours.append(render_pose(height, width, keypoints))
        theirs.append(draw_aapose_new(np.zeros((height, width, 3), np.uint8), keypoints, threshold=0.5,
                                      draw_hand=False, stickwidth_type="v2"))
    parity.check("Animate conditioning: pose skeleton drawing (draw_aapose_new)", np.stack(ours), np.stack(theirs),
                 case=f"{width}x{height}, 6 skeletons", **EXACT)
    assert all(drawing.any() for drawing in theirs)


def test_clip_tiling_order_and_mask(animate, parity) -> None:
    lengths, clips = range(1, 90), [(77, 1), (77, 5), (9, 1), (13, 5), (81, 1)]
    cases = [(n, clip_len, refert) for n in lengths for clip_len, refert in clips]
    parity.check("Animate job: frames padded to whole clips (get_valid_len)",
                 [valid_length(*case) for case in cases],
                 [animate.get_valid_len(None, n, clip_len, overlap=refert) for n, clip_len, refert in cases],
                 case=f"{len(cases)} lengths x clip settings", **EXACT)
    orders = [(n, target) for n in range(2, 30) for target in (n, n + 1, 3 * n + 5)]
    parity.check("Animate job: bouncing frame order (inputs_padding)",
                 np.concatenate([ping_pong_indices(n, target) for n, target in orders]),
                 np.concatenate([animate.inputs_padding(None, list(range(n)), target) for n, target in orders]),
                 case=f"{len(orders)} lengths x targets", **EXACT)
    masks = [(lat_t, mask_len) for lat_t in (1, 2, 3, 20) for mask_len in (0, 1, 5) if mask_len <= 4 * lat_t - 3]
    for lat_t, mask_len in masks:
        parity.check("Animate job: temporal-guidance mask (get_i2v_mask)", i2v_mask(lat_t, 3, 5, mask_len),
                     animate.get_i2v_mask(None, lat_t, 3, 5, mask_len, device=torch.device("cpu")),
                     case=f"{lat_t} latent frames, {mask_len} marked", **EXACT)
