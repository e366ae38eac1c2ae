"""MediaPipe's files, anchors, decoding, weighted NMS and rotated crops (the networks themselves are exercised
on real photos in test_face_detector.py, test_face_landmarks.py and test_body_pose.py)."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest

from python_backends.errors import WeightsUnavailable
from python_backends.mediapipe_models import files
from python_backends.mediapipe_models.blazeface import ANCHORS, FULL, SHORT
from python_backends.mediapipe_models.crops import Roi, box_roi, rotation_between
from python_backends.mediapipe_models.mesh_layout import INNER_LIP, MESH_TO_IBUG68, OUTER_LIP
from python_backends.mediapipe_models.pose import POSE_ANCHORS
from python_backends.mediapipe_models.ssd import DecoderOptions, Detections, anchors, decode, letterbox, weighted_nms


def test_anchor_counts_match_the_networks_heads():
    assert len(anchors(ANCHORS[SHORT])) == 896  # face_detection_short_range: regressors [1, 896, 16]
    assert len(anchors(ANCHORS[FULL])) == 2304  # full_range_sparse: [1, 2304, 16]
    assert len(anchors(POSE_ANCHORS)) == 2254  # pose_detection: [1, 2254, 12]
    short = anchors(ANCHORS[SHORT])
    assert np.allclose(short[0], [0.5 / 16, 0.5 / 16]) and np.allclose(short[1], short[0])  # 2 per cell
    assert np.allclose(short[512], [0.5 / 8, 0.5 / 8])  # the 8x8 layers start after 16 * 16 * 2


def test_decode_places_a_box_at_its_anchor_offset_and_merges_overlaps():
    centres = np.array([[0.5, 0.5], [0.52, 0.5], [0.1, 0.1]], np.float32)
    raw = np.zeros((3, 8), np.float32)
    raw[:, 2:4] = 32.0  # width, height: 32 px of a 128 input = 0.25
    raw[0, 4:6] = [12.8, -12.8]  # one keypoint 0.1 right of and above the anchor
    scores = np.array([[4.0], [2.0], [-4.0]], np.float32)
    found = decode(raw, scores, centres, 128, DecoderOptions(num_keypoints=2, min_score=0.5))
    assert len(found.scores) == 1  # the third is below min_score, the second is merged into the first
    weights = 1 / (1 + np.exp([-4.0, -2.0]))
    cx = (0.5 * weights[0] + 0.52 * weights[1]) / weights.sum()
    assert np.allclose(found.boxes[0], [cx - 0.125, 0.375, cx + 0.125, 0.625], atol=1e-6)
    assert math.isclose(found.scores[0], weights[0], rel_tol=1e-6)


def test_weighted_nms_keeps_separate_faces():
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3]], np.float32)
    kept = weighted_nms(Detections(boxes, np.array([0.6, 0.9], np.float32), np.zeros((2, 1, 2), np.float32)), 0.3)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.6]) and np.allclose(kept.boxes, boxes[::-1])


def test_letterbox_maps_points_back_to_the_image():
    image = np.zeros((100, 200, 3), np.uint8)
    tensor, box = letterbox(image, 128, (-1.0, 1.0))
    assert tensor.shape == (128, 128, 3) and tensor.min() == -1.0
    # The image spans x 0..128 and y 32..96 of the input: its corners map back to the image's.
    assert np.allclose(box.to_image(np.array([[0.0, 32 / 128], [1.0, 96 / 128]])), [[0, 0], [200, 100]])


def test_roi_crop_and_back_are_inverse_and_level_the_eyes():
    right_eye, left_eye = np.array([40.0, 50.0]), np.array([80.0, 70.0])  # the head tilts clockwise
    roi = box_roi(np.array([20, 20, 100, 110]), 1.5, rotation_between(right_eye, left_eye, 0.0))
    crop = roi.affine(192)
    eyes = np.stack([right_eye, left_eye]) @ crop[:, :2].T + crop[:, 2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6 and eyes[0, 0] < eyes[1, 0]  # level, in order
    assert np.allclose(roi.to_image(eyes, 192), [right_eye, left_eye])
    upright = Roi(10.0, 10.0, 20.0)
    assert np.allclose(upright.to_image(np.array([[96.0, 96.0]]), 192), [[10.0, 10.0]])


def test_mesh_layout_indices_are_distinct_mesh_points():
    assert len(MESH_TO_IBUG68) == 68 and len(set(MESH_TO_IBUG68.tolist())) == 68
    assert max(MESH_TO_IBUG68) < 468 and len(set(OUTER_LIP) | set(INNER_LIP)) == 40


def test_files_are_taken_out_of_a_wheel(tmp_path):
    wheel = tmp_path / "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for inside in files.FILES.values():
            archive.writestr(inside, b"tflite " + inside.encode())
        archive.writestr("mediapipe-0.10.14.dist-info/LICENSE", "Apache License 2.0")
    written = files.fetch(tmp_path / "data", wheel)
    assert {p.name for p in written} == {*(n.rsplit("/", 1)[1] for n in files.FILES.values()), files.LICENSE_FILE}
    assert files.model_path("face_landmark", tmp_path / "data").read_bytes().endswith(b"face_landmark.tflite")
    with pytest.raises(WeightsUnavailable, match="make install"):
        files.require("face_landmark", tmp_path / "empty")
    broken = tmp_path / "other.whl"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("mediapipe/__init__.py", "")
    with pytest.raises(WeightsUnavailable, match="mediapipe==0.10.14"):
        files.extract(broken, tmp_path / "x")
