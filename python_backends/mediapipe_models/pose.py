"""BlazePose body pose (pose_detection.tflite + pose_landmark_full.tflite): 33 body landmarks of the most
prominent person, with MediaPipe's detector anchors, its alignment ROI (hips -> body-circle point upright) and
the landmark network's visibility (sigmoid) as each point's confidence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crops import Roi, rotation_between
from .ssd import AnchorOptions, DecoderOptions, anchors, decode, letterbox
from .tflite import TFLiteNetwork

# pose_detection_cpu.pbtxt (MediaPipe 0.10.14)
POSE_ANCHORS = AnchorOptions(224, (8, 16, 32, 32, 32))
POSE_DECODER = DecoderOptions(num_keypoints=4, min_score=0.5)
DETECTOR_RANGE = (-1.0, 1.0)
LANDMARK_RANGE = (0.0, 1.0)
ROI_SCALE = 1.25  # pose_detection_to_roi.pbtxt: RectTransformation scale 1.25, square_long
BODY_POINTS = 33  # the landmark head also returns 6 auxiliary ROI points, dropped here
PRESENCE = 0.5  # pose_landmark_by_roi: the pose flag's threshold

# BlazePose's 33 landmark names (subject's left / right).
LANDMARKS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip


@dataclass(frozen=True)
class BodyPose:
    points: np.ndarray  # [33, 3] x, y in image pixels, z (same scale, hips at 0)
    visibility: np.ndarray  # [33] in [0, 1]
    presence: float  # the landmark network's pose flag


def detection_roi(keypoints: np.ndarray) -> Roi:
    """AlignmentPointsRectsCalculator: centred on the hips' midpoint, twice its distance to the body-circle point,
    turned so that hips -> that point points up; then 1.25 times larger."""
    centre, circle = keypoints[0], keypoints[1]
    side = 2.0 * float(np.linalg.norm(circle - centre)) * ROI_SCALE
    return Roi(float(centre[0]), float(centre[1]), side, rotation_between(centre, circle, 90.0))


class BlazePose:
    def __init__(self, detector: Path, landmarks: Path, threads: int = 0) -> None:
        self.detector = TFLiteNetwork(detector, threads)
        self.landmarker = TFLiteNetwork(landmarks, threads)
        self.anchors = anchors(POSE_ANCHORS)

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """The best person's four alignment keypoints [4, 2] in image pixels, or None."""
        size = self.detector.size[0]
        tensor, box = letterbox(image, size, DETECTOR_RANGE)
        raw_boxes, raw_scores = self.detector(tensor[None])
        found = decode(raw_boxes[0], raw_scores[0], self.anchors, size, POSE_DECODER)
        if not len(found.scores):
            return None
        return box.to_image(found.keypoints[int(np.argmax(found.scores))])

    def __call__(self, image: np.ndarray) -> BodyPose | None:
        """The body pose of one RGB uint8 image, or None where no person is found."""
        keypoints = self.detect(image)
        if keypoints is None:
            return None
        roi = detection_roi(keypoints)
        size = self.landmarker.size[0]
        low, high = LANDMARK_RANGE
        crop = roi.crop(image, size).astype(np.float32) * ((high - low) / 255.0) + low
        raw, flag = self.landmarker(crop[None])[:2]
        values = raw.reshape(-1, 5)[:BODY_POINTS]
        presence = float(np.asarray(flag).reshape(-1)[0])
        if presence < PRESENCE:
            return None
        points = np.empty((BODY_POINTS, 3), np.float32)
        points[:, :2] = roi.to_image(values[:, :2], size)
        points[:, 2] = values[:, 2] * roi.side / size
        visibility = 1.0 / (1.0 + np.exp(-values[:, 3].astype(np.float64)))
        return BodyPose(points, visibility.astype(np.float32), presence)
