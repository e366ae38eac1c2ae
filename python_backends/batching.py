"""Batch helpers shared by the Triton seam and anything that mimics it in-process (benchmarks, tests)."""

from __future__ import annotations

import numpy as np


def stack_padded(items: list[np.ndarray]) -> np.ndarray:
    """Stack arrays whose shapes may differ (e.g. a different number of faces per image), zero-padded."""
    if all(item.shape == items[0].shape for item in items):
        return np.stack(items)
    shape = tuple(max(sizes) for sizes in zip(*(item.shape for item in items)))
    out = np.zeros((len(items),) + shape, dtype=items[0].dtype)
    for i, item in enumerate(items):
        out[(i,) + tuple(slice(0, n) for n in item.shape)] = item
    return out
