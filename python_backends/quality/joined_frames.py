"""The previous segment's last frame followed by a segment's frames, read in place.

The temporal gates judge the seam between segments as one more frame pair, so they see the segment with the frame
before it. Concatenating them copied the whole segment (~180 MB at 832x480 for 5 s at 30 fps), a fresh allocation
paid in page faults on the path of every segment but the first. With it and the mouth pass's eager copy gone, QA
of a 10 s clip took 5.5 s instead of 6.9 s on 2 cores (perf/results/qa_ab_*_cpu_*.json).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class JoinedFrames:
    """[1 + n, H, W, C] frames as `before` followed by `frames`, without a copy. An integer index gives a frame (a
    view), a slice or an index array the stacked frames (a copy of those only); np.asarray gives the whole copy."""

    def __init__(self, before: np.ndarray, frames: np.ndarray) -> None:
        if before.shape != frames.shape[1:] or before.dtype != frames.dtype:
            raise ValueError(f"the frame before {before.shape} {before.dtype} must match the segment's frames "
                             f"{frames.shape[1:]} {frames.dtype}")
        self.before, self.frames = before, frames
        self.shape = (len(frames) + 1, *frames.shape[1:])
        self.dtype = frames.dtype
        self.ndim = frames.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def _frame(self, index: int) -> np.ndarray:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} of {len(self)}")
        index %= len(self)
        return self.before if index == 0 else self.frames[index - 1]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._frame(index)
        picks = np.arange(len(self))[index]
        return np.stack([self._frame(i) for i in picks]) if len(picks) else np.empty((0, *self.shape[1:]), self.dtype)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.before
        yield from self.frames

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:  # numpy 2's protocol: the joined array never exists without a copy
            raise ValueError("JoinedFrames cannot be viewed as one array without a copy")
        joined = np.concatenate([self.before[None], self.frames])
        return joined if dtype is None else joined.astype(dtype, copy=False)


def frames_of(frames: np.ndarray | JoinedFrames) -> np.ndarray | JoinedFrames:
    """`frames` as an array, or as it is when it is already a JoinedFrames (which the frame-wise checks read in
    place)."""
    return frames if isinstance(frames, JoinedFrames) else np.asarray(frames)
