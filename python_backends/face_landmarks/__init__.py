"""face_landmarks: dense facial landmarks in a given face box (HRNetV2-W18 or dlib) and the head pose."""

from .head_pose import head_pose_from_landmarks, yaw_from_keypoints
from .predictor import FaceLandmarksPredictor, build_face_landmarks, choose_weights
from .settings import FaceLandmarksSettings

__all__ = [
    "FaceLandmarksPredictor",
    "FaceLandmarksSettings",
    "build_face_landmarks",
    "choose_weights",
    "head_pose_from_landmarks",
    "yaw_from_keypoints",
]
