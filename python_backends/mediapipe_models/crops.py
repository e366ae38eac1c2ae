"""MediaPipe's rotated regions of interest: a square around a centre, turned so that the face (or body) stands
upright in the crop, cut out with one affine warp, and the inverse warp that maps the network's points back."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Roi:
    """A square region in image pixels: centre, side, and its rotation (radians, counter-clockwise in the image)."""

    cx: float
    cy: float
    side: float
    rotation: float = 0.0

    def affine(self, size: int) -> np.ndarray:
        """[2, 3] image -> crop pixels for a size x size crop."""
        scale = size / self.side
        cos, sin = math.cos(self.rotation) * scale, math.sin(self.rotation) * scale
        # Rotate by -rotation around the centre, scale, then put the centre in the middle of the crop.
        return np.array([[cos, sin, size / 2 - cos * self.cx - sin * self.cy],
                         [-sin, cos, size / 2 + sin * self.cx - cos * self.cy]], np.float64)

    def crop(self, image: np.ndarray, size: int) -> np.ndarray:
        return cv2.warpAffine(image, self.affine(size), (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))

    def to_image(self, points: np.ndarray, size: int) -> np.ndarray:
        """Crop pixels [..., 2] -> image pixels."""
        inverse = cv2.invertAffineTransform(self.affine(size))
        flat = np.asarray(points, np.float64).reshape(-1, 2)
        return (flat @ inverse[:, :2].T + inverse[:, 2]).reshape(np.shape(points))


def rotation_between(start: np.ndarray, end: np.ndarray, target_degrees: float) -> float:
    """DetectionsToRectsCalculator's rotation: the angle that brings start -> end to the target direction."""
    angle = math.radians(target_degrees) - math.atan2(-(end[1] - start[1]), end[0] - start[0])
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def box_roi(box: np.ndarray, scale: float, rotation: float = 0.0) -> Roi:
    """The square ROI around a box (x1, y1, x2, y2): its longer side times scale (RectTransformation square_long)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * scale, rotation)
