"""The detections of one image, in the pixel coordinates of the image the detector was given."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Faces:
    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2
    scores: np.ndarray  # float32 [N]
    keypoints: np.ndarray  # float32 [N, 5, 2] left eye, right eye, nose, mouth left, mouth right (in image)

    @staticmethod
    def empty() -> Faces:
        return Faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Faces:
        return Faces(self.boxes[index], self.scores[index], self.keypoints[index])
