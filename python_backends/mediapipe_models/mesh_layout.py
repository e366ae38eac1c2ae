"""Indices into MediaPipe's 468-point Face Mesh: the iBUG 300-W / dlib 68-point subset, the dense lip contours,
and the points behind the detector's five keypoints."""

from __future__ import annotations

import numpy as np

MESH_POINTS = 468

# Mesh index of each iBUG 68 point (the subject's right side first, as dlib): jaw 0-16, brows 17-26, nose 27-35,
# eyes 36-47, outer lip 48-59, inner lip 60-67. The mesh has no point exactly at iBUG's jaw spacing; these are
# the nearest face-oval vertices (their agreement with dlib is measured in perf/bench_mediapipe.py).
MESH_TO_IBUG68 = np.array(
    [127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356]
    + [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]
    + [168, 197, 5, 4, 75, 97, 2, 326, 305]
    + [33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380]
    + [61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181]
    + [78, 82, 13, 312, 308, 317, 14, 87],
    dtype=np.int64,
)

# Closed lip contours, corner to corner over the upper lip and back under the lower lip (MediaPipe's FACEMESH_LIPS).
OUTER_LIP = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146])
INNER_LIP = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95])
# Inner-lip pairs facing each other across the mouth (upper, lower), corner to corner.
INNER_LIP_PAIRS = np.array([[191, 95], [80, 88], [81, 178], [82, 87], [13, 14], [312, 317], [311, 402],
                            [310, 318], [415, 324]])
MOUTH_CORNERS = (78, 308)  # inner corners

# The detector's five keypoints (image-left eye, image-right eye, nose tip, mouth left, mouth right).
EYE_CORNERS = ((33, 133), (362, 263))
NOSE_TIP = 1
OUTER_MOUTH_CORNERS = (61, 291)


def five_keypoints(mesh: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
    """[5, 2] detector-style keypoints from one face's mesh [468, >=2]: eye centres, nose tip, mouth corners.

    Given the image size, an eye cut by the frame (a corner outside it) reports that outside corner instead of
    its centre: the photo checks read a keypoint outside the photo as a face cut off by its edge, and the mesh,
    fitted to a crop padded with black, otherwise keeps a half-visible eye's centre just inside."""
    points = np.asarray(mesh)[:, :2]
    eyes = []
    for pair in EYE_CORNERS:
        corners = points[list(pair)]
        outside = _outside(corners, width, height) if width and height else np.zeros(2, bool)
        eyes.append(corners[int(np.argmax(outside))] if outside.any() else corners.mean(axis=0))
    return np.stack([*eyes, points[NOSE_TIP], points[OUTER_MOUTH_CORNERS[0]], points[OUTER_MOUTH_CORNERS[1]]])


def _outside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
