"""MediaPipe Face Mesh (face_landmark.tflite): 468 3-D points of the face in a rotated square crop.

The crop is MediaPipe's: a square 1.5 times the face's extent, turned so that the eyes are level. Given only a
face box (from any detector), a first pass places the mesh in the box's square; `refine` more passes re-crop
around that mesh (its bounding box and eye line), as MediaPipe's tracking re-crops around the previous frame's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .crops import Roi, box_roi, rotation_between
from .mesh_layout import EYE_CORNERS, MESH_POINTS
from .pool import InterpreterPool
from .tflite import TFLiteNetwork

ROI_SCALE = 1.5  # face_landmark_landmarks_to_roi / face_detection_front_detection_to_roi: scale 1.5, square_long
INPUT_RANGE = (0.0, 1.0)  # face_landmark_cpu.pbtxt: ImageToTensorCalculator output_tensor_float_range


def mesh_roi(mesh: np.ndarray) -> Roi:
    """The next crop around a mesh (image pixels): its bounding box, eyes level, 1.5 times larger."""
    points = np.asarray(mesh)[:, :2]
    right, left = (points[list(pair)].mean(axis=0) for pair in EYE_CORNERS)
    box = np.r_[points.min(axis=0), points.max(axis=0)]
    return box_roi(box, ROI_SCALE, rotation_between(right, left, 0.0))


class FaceMesh:
    """Each box's crops (the first pass and its re-crops) on one interpreter of a pool (pool.py), a crop per
    invoke: the network is batch-invariant (the same outputs, bit for bit, as one invoke over every crop), and
    boxes run in parallel when the pool has more than one interpreter."""

    def __init__(self, path: Path, threads: int = 0, workers: int = 1) -> None:
        self.pool = InterpreterPool(lambda: TFLiteNetwork(path, threads), workers, "face-mesh")
        self.size = self.pool.workers[0].size[0]

    def _pass(self, network: TFLiteNetwork, image: np.ndarray, roi: Roi) -> tuple[np.ndarray, np.ndarray]:
        """One crop: its mesh [468, 3] in image pixels (z in the same scale as x) and the raw presence logit [1]."""
        low, high = INPUT_RANGE
        crop = roi.crop(image, self.size).astype(np.float32)
        raw, flag = network((crop * ((high - low) / 255.0) + low)[None])
        raw = raw.reshape(MESH_POINTS, 3)
        mesh = np.empty_like(raw)
        mesh[:, :2] = roi.to_image(raw[:, :2], self.size)
        mesh[:, 2] = raw[:, 2] * roi.side / self.size
        return mesh, flag.reshape(-1)

    def in_boxes(self, images: list[np.ndarray], boxes: np.ndarray, refine: int = 1,
                 rotations: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Meshes [N, 468, 3] of the face in each box (x1, y1, x2, y2) and face presence [N] in [0, 1], with
        `refine` re-crops around the previous mesh."""
        rois = [box_roi(box, ROI_SCALE, rotations[k] if rotations else 0.0) for k, box in enumerate(boxes)]

        def track(network: TFLiteNetwork, item: tuple[np.ndarray, Roi]) -> tuple[np.ndarray, np.ndarray]:
            image, roi = item
            mesh, flag = self._pass(network, image, roi)
            for _ in range(refine):
                mesh, flag = self._pass(network, image, mesh_roi(mesh))
            return mesh, flag

        found = self.pool.map(track, list(zip(images, rois)))
        if not found:
            return np.zeros((0, MESH_POINTS, 3), np.float32), np.zeros(0, np.float32)
        flags = np.concatenate([flag for _mesh, flag in found])
        presence = 1.0 / (1.0 + np.exp(-flags))
        return np.stack([mesh for mesh, _flag in found]).astype(np.float32), presence.astype(np.float32)
