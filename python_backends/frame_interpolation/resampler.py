"""Source frames in (16 fps from Wan), frames at the output rate out, as they become computable.

Output frame j of the clip is the picture at time j / fps. It sits at source position p = j x source_fps / fps:
between source frames k = floor(p) and k + 1, at t = p - k. With an interpolator the output is the frame
interpolated at t between those two (the source frame itself where t = 0, within 1e-6); without one it is the
source frame nearest in time (k = floor(p + 1/2): frames repeat above the source rate and are skipped below).
Positions past the last source frame take the last frame.

A request may cover a segment of the clip (output frames first .. first + total - 1): the caller then pushes
source frames from `base` (the first source frame that segment needs) to `source_stop` - 1, in pieces of any
size; all outputs of the source pairs a push completes are interpolated in one call where the interpolator takes
several pairs at once (FlowInterpolator.pairs), else one call per pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

EXACT = 1e-6  # a position this close to a source frame is that frame


class FrameInterpolator(Protocol):
    name: str

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        """Frames [H, W, 3] uint8 at `times` in (0, 1) between two frames [H, W, 3] uint8."""


def source_position(j: int, source_fps: float, fps: float, source_total: int,
                    interpolating: bool) -> tuple[int, float]:
    """(k, t): output frame j shows source frame k, or the frame at t in (0, 1) between k and k + 1."""
    position = j * source_fps / fps
    if not interpolating:
        return min(source_total - 1, math.floor(position + 0.5)), 0.0
    k = math.floor(position + EXACT)
    t = position - k
    if k >= source_total - 1:
        return source_total - 1, 0.0
    return k, (0.0 if t < EXACT else t)


class InterpolatingResampler:
    """Streams `total` output frames (from clip frame `first` on) at `fps` out of source frames at `source_fps`."""

    def __init__(self, source_fps: float, fps: float, source_total: int, total: int, first: int = 0,
                 interpolator: FrameInterpolator | None = None) -> None:
        if source_fps <= 0 or fps <= 0 or source_total < 1 or total < 0 or first < 0:
            raise ValueError(f"bad frame-rate conversion: {source_total} frames at {source_fps} fps -> {total} "
                             f"from {first} at {fps} fps")
        self.source_fps, self.fps, self.source_total = source_fps, fps, source_total
        self.total, self.first, self.interpolator = total, first, interpolator
        self.base = self._position(0)[0]
        last, t = self._position(max(total - 1, 0))
        self.source_stop = last + (2 if t else 1)  # one past the last source frame the segment needs
        self.next_out = 0
        self.pending: dict[int, np.ndarray] = {}  # source frames still needed, by clip index
        self.received = self.base  # clip index of the next source frame pushed

    def _position(self, j: int) -> tuple[int, float]:
        return source_position(self.first + j, self.source_fps, self.fps, self.source_total,
                               self.interpolator is not None)

    def push(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """The output frames that the source frames pushed so far complete, in order."""
        for frame in frames:
            self.pending[self.received] = frame
            self.received += 1
        ready: list[tuple[int, float]] = []
        while self.next_out < self.total:
            k, t = self._position(self.next_out)
            if k + (1 if t else 0) >= self.received:
                break
            ready.append((k, t))
            self.next_out += 1
        out = self._render(ready)
        keep_from = self._position(self.next_out)[0] if self.next_out < self.total else self.received
        for index in [i for i in self.pending if i < keep_from]:
            del self.pending[index]
        return out

    def _render(self, ready: list[tuple[int, float]]) -> list[np.ndarray]:
        # every output is a source frame (an int) or the next of its source pair's interpolated frames
        pairs: dict[int, list[float]] = {}
        for k, t in ready:
            if t:
                pairs.setdefault(k, []).append(t)
        made = dict(zip(pairs, interpolate_pairs(self.interpolator, [
            (self.pending[k], self.pending[k + 1], times) for k, times in pairs.items()])))
        return [made[k].pop(0) if t else self.pending[k] for k, t in ready]


def interpolate_pairs(interpolator: FrameInterpolator,
                      pairs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> list[list[np.ndarray]]:
    """The frames of each (frame0, frame1, times): in one call where the interpolator batches pairs (its `pairs`,
    when its `batch_pairs` says so), else one call per pair."""
    if not pairs:
        return []
    if getattr(interpolator, "batch_pairs", False):
        return interpolator.pairs(pairs)
    return [interpolator(frame0, frame1, times) for frame0, frame1, times in pairs]
