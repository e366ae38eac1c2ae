"""Wan-Animate's conditioning images, rewritten from wan/modules/animate/preprocess/ (Wan-Video/Wan2.2 42bf4cf).

The official preprocessing turns the driving video into two videos the generator reads:

* `src_pose.mp4`: per frame, the 20 "AAPose" body keypoints (Nose, Neck, RShoulder, ..., LEar, LToe, RToe, from
  ViTPose-H whole-body on a YOLOv10m person box) and both hands drawn on black by `draw_aapose_by_meta_new`
  (limbs as ellipses in OpenPose colours at 60 %, joints as dots, stick width min(H, W) / 200 - 1, threshold 0.5),
  letterboxed to the reference image's size (`padding_resize`);
* `src_face.mp4`: per frame, the face cropped around its 68 whole-body face landmarks (`get_face_bboxes`, area
  scaled by 1.3, more room above than below) and resized to 512x512.

This module rewrites the drawing and the geometry; the keypoints themselves must come from outside. The
official pose models (process_checkpoint/det/yolov10m.onnx and pose2d/vitpose_h_wholebody.onnx) are not
available here: `body_keypoints` maps MediaPipe's BlazePose (33 body landmarks, shipped in the mediapipe wheel)
onto the 20 AAPose keypoints (body, head and toes; no hands), and `head_keypoints` derives the five head keypoints
from 68 face landmarks for frames where BlazePose finds no body.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

POSE_THRESHOLD = 0.5  # draw_aapose_by_meta_new's default
FACE_SCALE = 1.3  # get_face_bboxes(scale=1.3) in process_pipepline.py
FACE_SIZE = 512
AAPOSE_KEYPOINTS = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee", "RAnkle",
    "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LToe", "RToe",
)  # fmt: skip
# 1-based keypoint pairs of draw_aapose_new, in drawing order (limb i takes colour i).
AAPOSE_LIMBS = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
    (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (14, 19), (11, 20),
)  # fmt: skip
AAPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0), (100, 100, 0),
)  # fmt: skip


def stick_width(height: int, width: int) -> int:
    """draw_aapose_new's 'v2' stick width (also the joint dot radius)."""
    return max(int(min(height, width) / 200) - 1, 1)


def render_pose(height: int, width: int, keypoints: np.ndarray, threshold: float = POSE_THRESHOLD) -> np.ndarray:
    """[20, 3] AAPose keypoints (x, y in pixels, confidence) -> [height, width, 3] uint8 RGB skeleton on black."""
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.shape != (len(AAPOSE_KEYPOINTS), 3):
        raise ValueError(f"keypoints must be [{len(AAPOSE_KEYPOINTS)}, 3] (x, y, confidence), got {keypoints.shape}")
    img = np.zeros((height, width, 3), np.uint8)
    stick = stick_width(height, width)
    for (a, b), color in zip(AAPOSE_LIMBS, AAPOSE_COLORS):
        p, q = keypoints[a - 1], keypoints[b - 1]
        if p[2] < threshold or q[2] < threshold:
            continue
        centre = (int(np.mean([p[0], q[0]])), int(np.mean([p[1], q[1]])))
        length = math.hypot(p[0] - q[0], p[1] - q[1])
        angle = math.degrees(math.atan2(p[1] - q[1], p[0] - q[0]))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), stick), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(img, polygon, [int(float(c) * 0.6) for c in color])
    for point, color in zip(keypoints, AAPOSE_COLORS):
        if point[2] < threshold:
            continue
        cv2.circle(img, (int(point[0]), int(point[1])), stick, color, thickness=-1)
    return img


def head_keypoints(landmarks: np.ndarray, confidence: float = 1.0) -> np.ndarray:
    """AAPose keypoints [20, 3] with only Nose, REye, LEye, REar, LEar set, from 68 iBUG / dlib landmarks.

    Nose = nose tip (30); eyes = the eye contour centres (36-41 is the subject's right eye, on the image's left);
    ears = the top of the jaw line on each side (0 and 16), which sits just in front of the ear (an estimate:
    ViTPose locates the ear itself). Every other keypoint has confidence 0 and is not drawn.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2], got {landmarks.shape}")
    points = np.zeros((len(AAPOSE_KEYPOINTS), 3))
    named = {
        "Nose": landmarks[30],
        "REye": landmarks[36:42].mean(axis=0),
        "LEye": landmarks[42:48].mean(axis=0),
        "REar": landmarks[0],
        "LEar": landmarks[16],
    }
    for name, xy in named.items():
        points[AAPOSE_KEYPOINTS.index(name)] = (*xy, confidence)
    return points


# AAPose keypoint -> BlazePose landmark(s) (pose.LANDMARKS); Neck is the shoulders' midpoint, as OpenPose's.
AAPOSE_FROM_BLAZEPOSE = {
    "Nose": (0,), "Neck": (11, 12), "RShoulder": (12,), "RElbow": (14,), "RWrist": (16,), "LShoulder": (11,),
    "LElbow": (13,), "LWrist": (15,), "RHip": (24,), "RKnee": (26,), "RAnkle": (28,), "LHip": (23,), "LKnee": (25,),
    "LAnkle": (27,), "REye": (5,), "LEye": (2,), "REar": (8,), "LEar": (7,), "LToe": (31,), "RToe": (32,),
}  # fmt: skip


def body_keypoints(points: np.ndarray, visibility: np.ndarray) -> np.ndarray:
    """AAPose keypoints [20, 3] from BlazePose's 33 landmarks [33, >=2] (pixels) and their visibility [33]; a
    keypoint made of several landmarks takes their mean position and their lowest visibility."""
    points, visibility = np.asarray(points, np.float64)[:, :2], np.asarray(visibility, np.float64)
    if points.shape != (33, 2) or visibility.shape != (33,):
        raise ValueError(f"BlazePose landmarks must be [33, 2] with [33] visibility, got {points.shape}, "
                         f"{visibility.shape}")
    out = np.zeros((len(AAPOSE_KEYPOINTS), 3))
    for k, name in enumerate(AAPOSE_KEYPOINTS):
        index = list(AAPOSE_FROM_BLAZEPOSE[name])
        out[k] = (*points[index].mean(axis=0), visibility[index].min())
    return out


def face_box(landmarks: np.ndarray, image_hw: tuple[int, int], scale: float = FACE_SCALE) -> tuple[int, ...]:
    """Official get_face_bboxes on 68 face landmarks in pixels: (x1, x2, y1, y2), clipped to the image.

    The landmarks' box is grown to `scale` times its area at the same aspect; the extra width is split evenly,
    the extra height goes 3/4 above and 1/4 below (room for the forehead).
    """
    h, w = image_hw
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    (min_x, min_y), (max_x, max_y) = pts.min(axis=0), pts.max(axis=0)
    width, height = max(max_x - min_x, 1e-6), max(max_y - min_y, 1e-6)
    area = width * height * scale
    new_width, new_height = math.sqrt(area * width / height), math.sqrt(area * height / width)
    dw, dh = (new_width - width) / 2, (new_height - height) / 4
    return (int(max(min_x - dw, 0)), int(min(max_x + dw, w)), int(max(min_y - 3 * dh, 0)), int(min(max_y + dh, h)))


def crop_face(frame: np.ndarray, landmarks: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """The official face crop of one frame: face_box, then cv2.resize to size x size (bilinear)."""
    x1, x2, y1, y2 = face_box(landmarks, frame.shape[:2])
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"the face box {(x1, y1, x2, y2)} is empty in a {frame.shape[1]}x{frame.shape[0]} frame")
    return cv2.resize(np.ascontiguousarray(frame[y1:y2, x1:x2]), (size, size))


def padding_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Official padding_resize: fit inside height x width keeping the aspect, centred on black (letterbox)."""
    h, w = image.shape[:2]
    out = np.zeros((height, width, image.shape[2]), np.uint8)
    if h / w > height / width:
        new_w = int(height / h * w)
        pad = int((width - new_w) / 2)
        out[:, pad:pad + new_w] = cv2.resize(image, (new_w, height), interpolation=cv2.INTER_LINEAR)
    else:
        new_h = int(width / w * h)
        pad = int((height - new_h) / 2)
        out[pad:pad + new_h] = cv2.resize(image, (width, new_h), interpolation=cv2.INTER_LINEAR)
    return out


def valid_length(real_len: int, clip_len: int, overlap: int) -> int:
    """Official get_valid_len: frames padded so that clips of clip_len overlapping by `overlap` tile them."""
    step = clip_len - overlap
    rest = (real_len - overlap) % step
    return real_len + (0 if rest == 0 else step - rest)


def ping_pong_indices(length: int, target_len: int) -> list[int]:
    """Official inputs_padding: indices 0, 1, ..., n-1, n-2, ..., 0, 1, ... up to target_len (a bouncing loop)."""
    if length == 1:
        return [0] * target_len
    out: list[int] = []
    idx, flip = 0, False
    while len(out) < target_len:
        out.append(idx)
        idx += -1 if flip else 1
        if idx == 0 or idx == length - 1:
            flip = not flip
    return out


def i2v_mask(lat_t: int, lat_h: int, lat_w: int, mask_len: int) -> np.ndarray:
    """Official get_i2v_mask (no pixel mask): [4, lat_t, lat_h, lat_w] with the first mask_len frames marked.

    The pixel-frame mask (1 + 4 (lat_t - 1) frames) has its first frame repeated 4 times and is folded into
    4 channels per latent frame.
    """
    frames = np.zeros((1 + 4 * (lat_t - 1), lat_h, lat_w), np.float32)
    frames[:mask_len] = 1.0
    frames = np.concatenate([np.repeat(frames[:1], 4, axis=0), frames[1:]], axis=0)
    return frames.reshape(lat_t, 4, lat_h, lat_w).transpose(1, 0, 2, 3).copy()


def stack_frames(frames: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(f, np.uint8) for f in frames])
