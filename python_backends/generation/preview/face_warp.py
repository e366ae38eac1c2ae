"""Dense image warping driven by landmark displacements (thin-plate spline, backward mapping)."""

from __future__ import annotations

import cv2
import numpy as np


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    return np.where(r2 > 0, r2 * np.log(r2 + 1e-12), 0.0)


def fit_tps(targets: np.ndarray, sources: np.ndarray, regularisation: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Thin-plate spline mapping output positions `targets` [N,2] to input positions `sources` [N,2]."""
    n = len(targets)
    r2 = ((targets[:, None, :] - targets[None, :, :]) ** 2).sum(-1)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _tps_kernel(r2) + regularisation * np.eye(n)
    system[:n, n] = 1.0
    system[:n, n + 1 :] = targets
    system[n, :n] = 1.0
    system[n + 1 :, :n] = targets.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = sources
    solution = np.linalg.solve(system, rhs)
    return targets, solution


def eval_tps(model: tuple[np.ndarray, np.ndarray], points: np.ndarray) -> np.ndarray:
    centres, solution = model
    n = len(centres)
    r2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return _tps_kernel(r2) @ solution[:n] + solution[n] + points @ solution[n + 1 :]


def anchor_ring(box: np.ndarray, shape: tuple[int, int], margin: float = 0.6, per_side: int = 5) -> np.ndarray:
    """Fixed points on a ring around the face so the warp stays local and the background stays still."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    left, right = x1 - margin * w, x2 + margin * w
    top, bottom = y1 - margin * h, y2 + margin * h
    t = np.linspace(0.0, 1.0, per_side, endpoint=False)
    ring = np.concatenate([
        np.stack([left + t * (right - left), np.full_like(t, top)], 1),
        np.stack([np.full_like(t, right), top + t * (bottom - top)], 1),
        np.stack([right - t * (right - left), np.full_like(t, bottom)], 1),
        np.stack([np.full_like(t, left), bottom - t * (bottom - top)], 1),
    ])
    ring[:, 0] = np.clip(ring[:, 0], 0, shape[1] - 1)
    ring[:, 1] = np.clip(ring[:, 1], 0, shape[0] - 1)
    return ring


def warp_region(
    image: np.ndarray, sources: np.ndarray, targets: np.ndarray, region: tuple[int, int, int, int], step: int = 4
) -> np.ndarray:
    """Warp `image` so that points at `sources` move to `targets`, only inside `region` (x1, y1, x2, y2).

    The spline is evaluated on a coarse grid and upsampled: displacements are smooth, so this costs
    little accuracy and keeps a 512x512 frame to a few milliseconds.
    """
    x1, y1, x2, y2 = region
    out = image.copy()
    if x2 - x1 < 2 or y2 - y1 < 2:
        return out
    model = fit_tps(targets.astype(np.float64), sources.astype(np.float64))
    gx = np.arange(x1, x2 + step, step, dtype=np.float64)
    gy = np.arange(y1, y2 + step, step, dtype=np.float64)
    grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    mapped = eval_tps(model, grid).reshape(len(gy), len(gx), 2).astype(np.float32)
    # Bilinear upsampling of the coarse map: dense pixel (x, y) sits at coarse coordinate ((x-x1)/step, ...).
    u, v = np.meshgrid(np.arange(x2 - x1, dtype=np.float32) / step, np.arange(y2 - y1, dtype=np.float32) / step)
    map_x = cv2.remap(np.ascontiguousarray(mapped[..., 0]), u, v, cv2.INTER_LINEAR)
    map_y = cv2.remap(np.ascontiguousarray(mapped[..., 1]), u, v, cv2.INTER_LINEAR)
    out[y1:y2, x1:x2] = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out
