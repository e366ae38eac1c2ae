"""What a quality gate is: an object with its name, whether a failure stops the job (hard), the typed settings it
reads and `judge()` over one segment. A gate's verdict is a `Gate` record: pass / fail / unavailable (never a pass
when it could not judge), a reason and details; `details["summary"]` is the line the contact sheet prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..preprocessing import ModelCaller
    from .joined_frames import JoinedFrames
    from .segment_qa import JobContext
    from .settings import QualitySettings
    from .tracking import FaceTrack

PASS, FAIL, UNAVAILABLE = "pass", "fail", "unavailable"


@dataclass
class Gate:
    name: str
    status: str
    reason: str
    details: dict = field(default_factory=dict)
    hard: bool = False  # set from the registry: a failure stops the job (not in the report's record)

    def as_dict(self) -> dict:
        return {"gate": self.name, "status": self.status, "reason": self.reason, **self.details}


@dataclass
class SegmentInput:
    """One segment as every gate sees it. `joined*` prepend the previous segment's last frame (its landmarks and
    box), so a seam between segments is judged as a pair like any other; `offset` is its clip index."""

    frames: np.ndarray  # [n, H, W, 3] the segment, clip frames start .. start + n - 1
    track: FaceTrack
    start: int
    ctx: JobContext
    call: ModelCaller
    opening: np.ndarray  # [n] mouth opening per frame
    joined: np.ndarray | JoinedFrames  # read frame by frame (or np.asarray it: a copy of the whole segment)
    joined_track: FaceTrack
    offset: int
    identity_samples: list[tuple[float, float]] = field(default_factory=list)  # the identity gate fills them


class QualityGate:
    """Subclass, set `name` (and `hard`, `temporal`), implement `check` (and `summary`); add the instance to
    gates.GATES."""

    name: str = ""
    hard: bool = False  # a failure stops the job instead of re-rolling the segment
    temporal: bool = False  # judges motion: needs at least 3 frames (with the seam), else unavailable

    def settings(self, quality: QualitySettings) -> Any:
        """The gate's own typed settings, read from the job's QualitySettings (config.pbtxt keys stay flat)."""
        return None

    async def judge(self, segment: SegmentInput) -> Gate:
        """The verdict on `segment`, with the contact sheet's line (`summary`) added to its details."""
        gate = await self.check(segment)
        line = self.summary(gate.details)
        if line:
            gate.details["summary"] = line
        return gate

    async def check(self, segment: SegmentInput) -> Gate:
        raise NotImplementedError

    def summary(self, details: dict) -> str:
        """The key number(s) of a verdict, one short line ("" when there is none)."""
        return ""

    def unavailable(self, reason: str) -> Gate:
        return Gate(self.name, UNAVAILABLE, reason)


def spread(frames: int, samples: float) -> np.ndarray:
    """About `samples` frame indices spread evenly over `frames` (at least one, first and last included)."""
    return np.unique(np.linspace(0, frames - 1, max(1, int(np.ceil(samples)))).astype(int))


def frames_where(flags: np.ndarray, offset: int) -> list[int]:
    return [int(i) + offset for i in flags]
