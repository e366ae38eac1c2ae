"""Box operations shared by both detectors: prior boxes, SSD-style decoding, non-maximum suppression.

All numpy, so that the torch and onnxruntime RetinaFace runtimes share one post-processing path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

# RetinaFace anchor layout; cfg_mnet and cfg_re50 of biubug6/Pytorch_Retinaface share these values.
MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
STEPS: tuple[int, ...] = (8, 16, 32)
VARIANCE: tuple[float, float] = (0.1, 0.2)


def prior_count(height: int, width: int) -> int:
    """Number of priors for an input of `height` x `width`: one per anchor size per feature-map cell."""
    return sum(math.ceil(height / step) * math.ceil(width / step) * len(sizes) for step, sizes in zip(STEPS, MIN_SIZES))


@functools.lru_cache(maxsize=32)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """Priors [P, 4] as (cx, cy, w, h) relative to the image, in the order of PriorBox.forward.

    The official loop runs rows, then columns, then anchor sizes; the reshape below keeps that order.
    Cached and read-only: batches of one image size reuse the same array.
    """
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cx = (np.arange(cols, dtype=np.float64) + 0.5) * step / width
        cy = (np.arange(rows, dtype=np.float64) + 0.5) * step / height
        level = np.empty((rows, cols, len(sizes), 4), dtype=np.float64)
        level[..., 0] = cx[None, :, None]
        level[..., 1] = cy[:, None, None]
        level[..., 2] = np.asarray(sizes, dtype=np.float64)[None, None, :] / width
        level[..., 3] = np.asarray(sizes, dtype=np.float64)[None, None, :] / height
        levels.append(level.reshape(-1, 4))
    priors = np.concatenate(levels).astype(np.float32)
    priors.setflags(write=False)
    return priors


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variance: Sequence[float] = VARIANCE) -> np.ndarray:
    """Offsets [P, 4] -> boxes [P, 4] as relative (x1, y1, x2, y2), as utils/box_utils.decode."""
    centre = priors[:, :2] + loc[:, :2] * variance[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * variance[1])
    top_left = centre - size / 2
    return np.concatenate([top_left, top_left + size], axis=1)


def decode_landmarks(pre: np.ndarray, priors: np.ndarray, variance: Sequence[float] = VARIANCE) -> np.ndarray:
    """Offsets [P, 10] -> five relative (x, y) points [P, 5, 2], as utils/box_utils.decode_landm."""
    offsets = pre.reshape(-1, 5, 2)
    return priors[:, None, :2] + offsets * variance[0] * priors[:, None, 2:]


def nms(
    boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union", plus_one: bool = True
) -> np.ndarray:
    """Greedy NMS; indices kept, highest score first.

    mode "union" divides the overlap by the union (IoU), "min" by the smaller area (MTCNN's last stage).
    plus_one counts pixels inclusively ((x2 - x1 + 1) wide) as py_cpu_nms and MTCNN's numpy NMS do;
    torchvision's nms, which facenet-pytorch uses in its first two stages, does not.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(np.float64, copy=False)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    extra = 1.0 if plus_one else 0.0
    areas = (x2 - x1 + extra) * (y2 - y1 + extra)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + extra)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + extra)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(areas[i], areas[rest])
        else:
            overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    mode: str = "union",
    plus_one: bool = True,
) -> np.ndarray:
    """NMS run independently per group (image of a batch), by shifting each group's boxes apart."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(np.float64, copy=False)
    # Shift by more than the full coordinate range so that boxes of different groups never overlap.
    span = boxes.max() - min(boxes.min(), 0.0) + 2.0
    shifted = boxes + (groups.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, threshold, mode=mode, plus_one=plus_one)
