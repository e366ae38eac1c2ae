"""Follow the face through a segment: detection on every n-th frame, landmarks on every frame.

Runs over the served models (face_detector, face_landmarks) through a ModelCaller, so the numbers QA judges
come from the same models and weights that pre-processed the photo.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import numpy as np

from .. import spec
from ..face_landmarks.head_pose import to_ibug68
from ..mediapipe_models.mesh_layout import MESH_POINTS, OUTER_LIP
from ..preprocessing import ModelCaller

MAX_REQUEST = 16  # frames per request by default: the detector's and landmarker's max_batch_size (CPU configs)


@dataclass(frozen=True)
class FaceTrack:
    boxes: np.ndarray  # [T, 4] x1, y1, x2, y2: detected, or interpolated between detections
    landmarks: np.ndarray  # [T, 68, 2] iBUG / dlib order (a denser landmarker's iBUG subset)
    detected: np.ndarray  # [K] frame indices the detector ran on
    detected_boxes: np.ndarray  # [K, 4]
    detected_keypoints: np.ndarray  # [K, 5, 2]
    found: np.ndarray  # [K] bool: the detector found a face there
    landmarker: str  # engine that placed the landmarks
    dense: np.ndarray | None = None  # [T, P, 2] the landmarker's own points when denser than 68 (Face Mesh: 468)

    @property
    def mouth_points(self) -> np.ndarray:
        """The densest landmarks there are, for the mouth: the mesh's lip contours, else the 68 points'."""
        return self.landmarks if self.dense is None else self.dense

    @property
    def outer_lips(self) -> np.ndarray | None:
        """[T, 20, 2] the mesh's outer lip contour (the mouth refiner's blend region), None without a mesh."""
        return None if self.dense is None else self.dense[:, OUTER_LIP]

    @property
    def lost_frames(self) -> list[int]:
        return [int(i) for i in self.detected[~self.found]]


async def batched_call(call: ModelCaller, model: spec.ModelSpec, inputs: dict[str, np.ndarray],
                       limit: int = MAX_REQUEST) -> dict[str, np.ndarray]:
    """One logical request split into requests of at most `limit` items (the served model's max_batch_size) that
    run concurrently (Triton batches them again)."""
    count = len(next(iter(inputs.values())))
    parts = await asyncio.gather(*(
        call(model, {name: value[i: i + limit] for name, value in inputs.items()})
        for i in range(0, count, limit)
    ))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pick(boxes: np.ndarray, previous: np.ndarray | None) -> int:
    """The face that continues the track (highest overlap with the last box), else the largest."""
    if previous is not None:
        overlaps = [_iou(b, previous) for b in boxes]
        if max(overlaps) > 0.1:
            return int(np.argmax(overlaps))
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


def box_side(box: np.ndarray) -> float:
    """The longer side of an x1, y1, x2, y2 box: the face size face_detector's expected_face_px speaks of."""
    return float(max(box[2] - box[0], box[3] - box[1]))


def photo_face_px(photo_shape: tuple[int, ...], photo_box: np.ndarray, frame_shape: tuple[int, ...],
                  covers: bool) -> float:
    """The photo's face side as it appears in generated frames: scaled with the photo to cover the frame (`covers`:
    wan.s2v.engine.fit_photo, the preview's crop to the aspect) or to fit inside it (Animate's letterbox, and the
    safe guess where the fit is unknown: never the larger)."""
    scales = (frame_shape[0] / photo_shape[0], frame_shape[1] / photo_shape[1])
    return box_side(photo_box) * (max(scales) if covers else min(scales))


def _expected_face(expected_face_px: float | None, start_box: np.ndarray | None) -> float:
    """The smaller of what is known (0 = nothing): a smaller expectation searches more, never less."""
    known = [v for v in (expected_face_px, None if start_box is None else box_side(start_box)) if v]
    return min(known, default=0.0)


def interpolate_boxes(indices: np.ndarray, boxes: np.ndarray, frames: int) -> np.ndarray:
    """[frames, 4] boxes, linear between the known ones and held at the ends."""
    return np.stack([np.interp(np.arange(frames), indices, boxes[:, j]) for j in range(4)], axis=1)


@dataclass(frozen=True)
class FaceBoxes:
    """The detector's part of a track: enough for what needs only where the face is (colour match, crops)."""

    boxes: np.ndarray  # [T, 4] detected, or interpolated between detections
    detected: np.ndarray  # [K] frame indices the detector ran on
    detected_boxes: np.ndarray  # [K, 4]
    detected_keypoints: np.ndarray  # [K, 5, 2]
    found: np.ndarray  # [K] bool


async def detect_faces(frames: np.ndarray, call: ModelCaller, detect_every: int,
                       start_box: np.ndarray | None = None, request_frames: int = MAX_REQUEST,
                       expected_face_px: float | None = None) -> FaceBoxes:
    """Detector on frames 0, n, 2n, ... and the last, boxes interpolated in between. `start_box` (the photo's or
    the previous segment's) keeps the track on the same person; `request_frames` frames go in one request. The
    face size expected in these frames (`expected_face_px`, e.g. photo_face_px, and the start box's) goes to the
    detector, which then need not search frames that lost the face for tiny ones."""
    count = len(frames)
    detected = np.unique(np.r_[np.arange(0, count, detect_every), count - 1])
    request = {spec.IMAGE: frames[detected]}
    expected = _expected_face(expected_face_px, start_box)
    if expected > 0:
        request[spec.EXPECTED_FACE_PX] = np.full((len(detected), 1), expected, np.float32)
    outputs = await batched_call(call, spec.FACE_DETECTOR, request, request_frames)
    found = np.zeros(len(detected), bool)
    det_boxes = np.zeros((len(detected), 4), np.float32)
    det_points = np.zeros((len(detected), 5, 2), np.float32)
    previous = start_box
    for k in range(len(detected)):
        n = int(outputs[spec.FACE_COUNT][k].reshape(-1)[0])
        if n == 0:
            continue
        chosen = _pick(outputs[spec.FACE_BOXES][k][:n], previous)
        det_boxes[k], det_points[k] = outputs[spec.FACE_BOXES][k][chosen], outputs[spec.FACE_KEYPOINTS][k][chosen]
        found[k], previous = True, det_boxes[k]
    if found.any():
        boxes = interpolate_boxes(detected[found], det_boxes[found], count).astype(np.float32)
    elif start_box is not None:
        boxes = np.repeat(np.asarray(start_box, np.float32)[None], count, axis=0)
    else:
        boxes = np.repeat(np.array([[0, 0, frames.shape[2], frames.shape[1]]], np.float32), count, axis=0)
    return FaceBoxes(boxes, detected, det_boxes, det_points, found)


async def place_landmarks(frames: np.ndarray, faces: FaceBoxes, call: ModelCaller,
                          request_frames: int = MAX_REQUEST) -> FaceTrack:
    """Landmarks on every frame inside its box: the whole track."""
    marks = await batched_call(call, spec.FACE_LANDMARKS, {spec.IMAGE: frames, spec.FACE_BOX: faces.boxes},
                               request_frames)
    landmarker = json.loads(marks[spec.MODEL_INFO].reshape(-1)[0]).get("engine", "?")
    # The QA metrics work on the 68-point iBUG layout; HRNet's WFLW 98 points map onto it.
    landmarks = np.stack([to_ibug68(points) for points in marks[spec.LANDMARKS]])
    dense = marks[spec.LANDMARKS] if marks[spec.LANDMARKS].shape[1] == MESH_POINTS else None
    return FaceTrack(faces.boxes, landmarks, faces.detected, faces.detected_boxes, faces.detected_keypoints,
                     faces.found, landmarker, dense)


async def track_faces(frames: np.ndarray, call: ModelCaller, detect_every: int,
                      start_box: np.ndarray | None = None, request_frames: int = MAX_REQUEST,
                      expected_face_px: float | None = None) -> FaceTrack:
    """detect_faces, then place_landmarks with its boxes."""
    faces = await detect_faces(frames, call, detect_every, start_box, request_frames, expected_face_px)
    return await place_landmarks(frames, faces, call, request_frames)
