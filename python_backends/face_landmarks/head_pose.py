"""Head pose (yaw, pitch, roll in degrees) from 2D facial landmarks, and a quick yaw from 5 keypoints.

Sign convention (camera view, image x to the right, y down):
  * yaw   > 0: the subject turns toward the image's right (their own left); the nose moves right.
  * pitch > 0: the subject looks up; the nose moves up in the image.
  * roll  > 0: the head tilts clockwise in the image (the eye on the image's right sits lower).
A horizontally mirrored image therefore has the same pitch and the opposite yaw and roll.

The angles decompose the head rotation R (model -> camera) as R = Ry(-yaw) @ Rx(-pitch) @ Rz(roll) in the
camera frame (x right, y down, z forward): turn, then nod, then tilt. The head's rotation is found by
solvePnP of a generic 3D face against the 68-point (iBUG 300-W / dlib) landmarks; WFLW's 98 points are
first reduced to that layout.

Reference direction: by default the angles are measured from the line of sight (camera -> head), so a
face looking straight into the camera reads (0, 0, 0) wherever it sits in the frame; this is what "is the
face frontal" means and it depends little on the guessed focal length. With line_of_sight=False they
are measured from the optical axis instead (a face high in the frame that looks into the lens then reads
as looking down by the angle between the axis and its line of sight).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import InputError
from ..mediapipe_models.mesh_layout import MESH_POINTS, MESH_TO_IBUG68

# A generic adult face in millimetres, written for this project from average anthropometric proportions
# (biocular width ~90 mm, intercanthal ~32 mm, mouth ~50 mm, nasion-gnathion ~120 mm, nose tip ~36 mm in
# front of the inner eye corners). Frame: x toward the image's right for a frontal face, y down, z away
# from the camera; origin between the inner eye corners. Only points that sit on rigid, well-localised
# features are used (no jaw contour except the chin, no eyelids, no inner lips).
MODEL_POINTS_68: dict[int, tuple[float, float, float]] = {
    8: (0.0, 113.0, -2.0),  # chin (menton)
    17: (-60.0, -13.0, 13.0),  # brow, outer end (image left)
    21: (-12.0, -20.0, -11.0),  # brow, inner end
    22: (12.0, -20.0, -11.0),
    26: (60.0, -13.0, 13.0),
    27: (0.0, -6.0, -13.0),  # top of the nose bridge
    30: (0.0, 30.0, -36.0),  # nose tip
    31: (-15.0, 40.0, -18.0),  # nostril, outer end
    33: (0.0, 43.0, -24.0),  # below the nose (subnasale)
    35: (15.0, 40.0, -18.0),
    36: (-45.0, -1.0, 8.0),  # eye, outer corner (image left)
    39: (-16.0, 0.0, 0.0),  # eye, inner corner
    42: (16.0, 0.0, 0.0),
    45: (45.0, -1.0, 8.0),
    48: (-25.0, 65.0, -3.0),  # mouth corner (image left)
    51: (0.0, 57.0, -24.0),  # upper lip, centre
    54: (25.0, 65.0, -3.0),
    57: (0.0, 77.0, -22.0),  # lower lip, centre
}
POSE_INDICES = np.array(sorted(MODEL_POINTS_68), dtype=np.int64)
MODEL_POINTS = np.array([MODEL_POINTS_68[i] for i in POSE_INDICES], dtype=np.float64)

# The eye centres the face detector reports, and the nose tip, in the same model (for yaw_from_keypoints).
EYE_CENTRE_HALF_DISTANCE = 30.5  # midway between each eye's corners
NOSE_DEPTH_BEFORE_EYES = 40.0  # nose tip z (-36) relative to the eye centres' z (~4)

# WFLW (98 points) -> iBUG 68: every other contour point, the upper brow contours, nose, the six eye
# points that match iBUG's and the 20 mouth points; the pupils (96, 97) and lower brows are dropped.
WFLW98_TO_IBUG68 = np.array(
    list(range(0, 33, 2))
    + [33, 34, 35, 36, 37, 42, 43, 44, 45, 46]
    + list(range(51, 60))
    + [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75]
    + list(range(76, 96)),
    dtype=np.int64,
)


def to_ibug68(landmarks: np.ndarray) -> np.ndarray:
    """[68, 2] iBUG-layout points from 68 (returned as is), WFLW 98 or MediaPipe Face Mesh 468 landmarks."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape == (68, 2):
        return points
    if points.shape == (98, 2):
        return points[WFLW98_TO_IBUG68]
    if points.shape == (MESH_POINTS, 2):
        return points[MESH_TO_IBUG68]
    raise ValueError(f"expected 68, 98 or {MESH_POINTS} (x, y) landmarks, got shape {points.shape}")


def camera_matrix(width: int, height: int, focal_scale: float = 1.0) -> np.ndarray:
    """A pinhole camera with focal length focal_scale * image width and the principal point at the centre."""
    focal = focal_scale * float(width)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The head rotation (model -> camera) for angles in degrees, in this module's sign convention."""
    return _ry(-math.radians(yaw)) @ _rx(-math.radians(pitch)) @ _rz(math.radians(roll))


def angles_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of a head rotation; inverse of rotation_from_angles for |pitch| < 90."""
    r = np.asarray(rotation, dtype=np.float64)
    turn = math.atan2(r[0, 2], r[2, 2])
    nod = math.asin(max(-1.0, min(1.0, -r[1, 2])))
    tilt = math.atan2(r[1, 0], r[1, 1])
    return np.degrees(np.array([-turn, -nod, tilt]))


def solve_head_rotation(
    landmarks: np.ndarray, width: int, height: int, focal_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(rotation matrix, translation in mm) of the generic face that best explains the landmarks."""
    image_points = to_ibug68(landmarks)[POSE_INDICES]
    if not np.all(np.isfinite(image_points)):
        raise InputError("landmarks contain NaN or infinite values; send a face box around a visible face")
    if np.ptp(image_points[:, 0]) < 2.0 or np.ptp(image_points[:, 1]) < 2.0:
        raise InputError(
            "the face is too small for a head pose (landmarks span under 2 pixels); send a larger face"
        )
    k = camera_matrix(width, height, focal_scale)
    dist = np.zeros(4)
    # SQPnP finds the global optimum without an initial guess; Levenberg-Marquardt then polishes it.
    ok, rvec, tvec = cv2.solvePnP(MODEL_POINTS, image_points, k, dist, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise InputError("the landmarks do not fit a face; send a box around a single, visible face")
    rvec, tvec = cv2.solvePnPRefineLM(MODEL_POINTS, image_points, k, dist, rvec, tvec)
    rotation, _ = cv2.Rodrigues(rvec)
    return rotation, tvec.reshape(3)


def line_of_sight_rotation(translation: np.ndarray) -> np.ndarray:
    """The pose of a head at `translation` that faces the camera: turned, then nodded, toward it (no tilt)."""
    d = np.asarray(translation, dtype=np.float64).reshape(3)
    d = d / np.linalg.norm(d)
    return _ry(math.atan2(d[0], d[2])) @ _rx(math.asin(max(-1.0, min(1.0, -d[1]))))


def head_pose_from_landmarks(
    landmarks: np.ndarray, width: int, height: int, focal_scale: float = 1.0, line_of_sight: bool = True
) -> np.ndarray:
    """float32 [3] = yaw, pitch, roll in degrees (convention in the module docstring).

    landmarks: [68, 2] (iBUG / dlib) or [98, 2] (WFLW) pixel coordinates in an image of width x height.
    """
    rotation, translation = solve_head_rotation(landmarks, width, height, focal_scale)
    if line_of_sight:
        rotation = line_of_sight_rotation(translation).T @ rotation
    return angles_from_rotation(rotation).astype(np.float32)


def yaw_from_keypoints(keypoints5: np.ndarray) -> float:
    """Quick yaw in degrees from the detector's 5 keypoints (eyes, nose, mouth corners): no solver.

    The nose tip sits NOSE_DEPTH_BEFORE_EYES in front of the eye centres, so under a turn by `yaw` it
    shifts along the eye line by depth * sin(yaw) while the eyes' distance shrinks to 2 * half * cos(yaw):
    offset / eye distance = depth / (2 * half) * tan(yaw). The eye line is oriented left to right in the
    image, so the eye order does not matter and roll is factored out.
    """
    points = np.asarray(keypoints5, dtype=np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise InputError(f"face_keypoints must be 5 finite (x, y) points, got shape {points.shape}")
    axis = points[1] - points[0]
    if axis[0] < 0:
        axis = -axis
    distance = float(np.hypot(*axis))
    if distance < 1e-6:
        raise InputError("the two eye keypoints coincide; send the keypoints the face detector returned")
    offset = float(np.dot(points[2] - (points[0] + points[1]) / 2.0, axis / distance)) / distance
    ratio = NOSE_DEPTH_BEFORE_EYES / (2.0 * EYE_CENTRE_HALF_DISTANCE)
    return math.degrees(math.atan(offset / ratio))
