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
    """Batched: every crop of a call goes through one interpreter invoke."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.network = TFLiteNetwork(path, threads)
        self.size = self.network.size[0]

    def run(self, images: list[np.ndarray], rois: list[Roi]) -> tuple[np.ndarray, np.ndarray]:
        """Meshes [N, 468, 3] in image pixels (z in the same scale as x) and face presence [N] in [0, 1]."""
        if not rois:
            return np.zeros((0, MESH_POINTS, 3), np.float32), np.zeros(0, np.float32)
        low, high = INPUT_RANGE
        crops = np.stack([roi.crop(image, self.size) for image, roi in zip(images, rois)]).astype(np.float32)
        raw, flag = self.network(crops * ((high - low) / 255.0) + low)
        raw = raw.reshape(len(rois), MESH_POINTS, 3)
        meshes = np.empty_like(raw)
        for k, roi in enumerate(rois):
            meshes[k, :, :2] = roi.to_image(raw[k, :, :2], self.size)
            meshes[k, :, 2] = raw[k, :, 2] * roi.side / self.size
        presence = 1.0 / (1.0 + np.exp(-flag.reshape(-1)))
        return meshes.astype(np.float32), presence.astype(np.float32)

    def in_boxes(self, images: list[np.ndarray], boxes: np.ndarray, refine: int = 1,
                 rotations: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Meshes of the face in each box (x1, y1, x2, y2), with `refine` re-crops around the previous mesh."""
        rois = [box_roi(box, ROI_SCALE, rotations[k] if rotations else 0.0) for k, box in enumerate(boxes)]
        meshes, presence = self.run(images, rois)
        for _ in range(refine):
            meshes, presence = self.run(images, [mesh_roi(mesh) for mesh in meshes])
        return meshes, presence
