"""Which detected face to animate, and whether its size and pose are usable."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .limits import ValidationLimits

NO_FACE_MESSAGE = (
    "no face found in the photo: use a well-lit photo with one clearly visible, front-facing face"
)


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"face boxes must have shape (N, 4) as x1, y1, x2, y2; got {array.shape}")
    return array


def _visible_fraction(box: np.ndarray, width: int, height: int) -> float:
    x1, y1, x2, y2 = box
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 0.0
    inside_w = max(min(x2, width) - max(x1, 0.0), 0.0)
    inside_h = max(min(y2, height) - max(y1, 0.0), 0.0)
    return inside_w * inside_h / area


def select_face(
    boxes: np.ndarray,
    scores: np.ndarray,
    keypoints: np.ndarray | None,
    image_shape: Sequence[int],
    limits: ValidationLimits,
) -> int:
    """Index of the face to animate among the detector's faces (boxes x1, y1, x2, y2 in image pixels).

    The largest face wins (ties: the higher score). Raises InputError with codes no_face,
    multiple_faces (policy "reject"), face_too_small or face_cut_off.
    """
    boxes = _as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    count = boxes.shape[0]
    if scores.shape[0] != count:
        raise ValueError(f"{count} face boxes but {scores.shape[0]} scores")
    if keypoints is not None:
        keypoints = np.asarray(keypoints, dtype=np.float64)
        if keypoints.size and (keypoints.shape[0] != count or keypoints.shape[-1] != 2):
            raise ValueError(f"face keypoints must have shape ({count}, K, 2), got {keypoints.shape}")
    # Rows that are not finite or have no area are detector padding, not faces.
    valid = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not valid.any():
        raise InputError(NO_FACE_MESSAGE, "no_face")

    height, width = int(image_shape[0]), int(image_shape[1])
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    sides = np.where(valid, sides, -1.0)
    areas = np.where(valid, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), -1.0)

    if limits.multi_face_policy == "reject":
        # Faces too small to animate never count: a poster or a crowd far behind is not a second sitter.
        significant = int(np.count_nonzero(sides >= limits.min_face_px))
        if significant > 1:
            raise InputError(
                f"found {significant} faces in the photo: use a photo of one person, or crop it to the face "
                "that should speak",
                "multiple_faces",
            )

    # lexsort sorts by the last key first: area, then score breaks ties.
    chosen = int(np.lexsort((np.nan_to_num(scores, nan=-np.inf), areas))[-1])
    box = boxes[chosen]
    face_w, face_h = box[2] - box[0], box[3] - box[1]
    if sides[chosen] < limits.min_face_px:
        raise InputError(
            f"the face is only {face_w:.0f}x{face_h:.0f} pixels (minimum {limits.min_face_px} pixels on its "
            "short side): move closer or use a higher-resolution photo",
            "face_too_small",
        )
    fraction = sides[chosen] / max(min(height, width), 1)
    if limits.min_face_fraction > 0 and fraction < limits.min_face_fraction:
        raise InputError(
            f"the face fills only {fraction:.0%} of the photo's short side (minimum "
            f"{limits.min_face_fraction:.0%}): move closer or crop the photo around the face",
            "face_too_small",
        )
    outside = 1.0 - _visible_fraction(box, width, height)
    if outside > limits.max_face_outside_fraction:
        raise InputError(
            f"{outside:.0%} of the face is outside the photo (limit {limits.max_face_outside_fraction:.0%}): "
            "use a photo that shows the whole head with some space around it",
            "face_cut_off",
        )
    if keypoints is not None and keypoints.size and limits.max_face_outside_fraction < 1.0:
        # Detectors clip their boxes to the image, so a face cut by the frame still gets a box fully inside it;
        # its keypoints are not clipped. An eye, the nose or a mouth corner outside the photo is a cut-off face.
        points = keypoints[chosen]
        off = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
        if off.any():
            raise InputError(
                f"the face is cut off by the edge of the photo ({int(off.sum())} of its {len(points)} landmarks - "
                "eyes, nose, mouth corners - are outside it): use a photo that shows the whole head with some "
                "space around it",
                "face_cut_off",
            )
    return chosen


def _degrees(angle: float, limit: float) -> str:
    # One decimal only where whole degrees would read as "35° (limit 35°)".
    text = f"{abs(angle):.0f}"
    return (f"{abs(angle):.1f}" if float(text) <= limit else text) + "°"


def check_pose(yaw: float, pitch: float, limits: ValidationLimits, keypoint_yaw: float | None = None) -> None:
    """Reject a head turned (yaw) or tilted (pitch) too far from the camera; angles in degrees.

    `keypoint_yaw` is an optional second yaw estimate (e.g. from the detector's 5 keypoints); the larger
    turn of the two is judged. A 68-point landmark fit assumes a near-frontal face and collapses on a
    side view, so its PnP yaw reads far too small there (client/samples/profile.png, a side view of
    roughly 60-75°, reads about 30° that way and about 39° from the keypoints).
    Raises InputError with codes face_pose_unknown, face_in_profile or face_tilted.
    """
    if not (math.isfinite(yaw) and math.isfinite(pitch)):
        raise InputError(
            "the head pose could not be measured from the photo: use a sharp, front-facing photo",
            "face_pose_unknown",
        )
    if keypoint_yaw is not None and math.isfinite(keypoint_yaw) and abs(keypoint_yaw) > abs(yaw):
        yaw = keypoint_yaw
    if abs(yaw) > limits.max_yaw_deg:
        raise InputError(
            f"the face is turned {_degrees(yaw, limits.max_yaw_deg)} to the side "
            f"(limit {limits.max_yaw_deg:g}°): use a front-facing photo",
            "face_in_profile",
        )
    if abs(pitch) > limits.max_pitch_deg:
        # Pitch sign conventions differ between pose estimators, so the message does not guess a direction.
        raise InputError(
            f"the face is tilted {_degrees(pitch, limits.max_pitch_deg)} up or down "
            f"(limit {limits.max_pitch_deg:g}°): "
            "use a photo taken at eye level, looking into the camera",
            "face_tilted",
        )
