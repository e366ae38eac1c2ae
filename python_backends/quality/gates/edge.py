"""Edge gate: gradient energy along the face boundary vs the photo's (smearing or a pasted-in seam)."""

from __future__ import annotations

import asyncio

from ..artifacts import EdgeSettings, edge_bleeding
from ..gate import FAIL, PASS, Gate, QualityGate, SegmentInput, spread


class EdgeGate(QualityGate):
    name = "edge"
    temporal = True

    def settings(self, quality) -> EdgeSettings:
        return EdgeSettings(max_log_ratio=quality.edge_max_log_ratio)

    async def check(self, segment: SegmentInput) -> Gate:
        return await asyncio.to_thread(self.judge_frames, segment.joined, segment.joined_track.landmarks,
                                       segment.offset, segment.ctx)

    def summary(self, details: dict) -> str:
        return f"log ratio {details['max_log_ratio']}"

    def judge_frames(self, frames, landmarks, start: int, ctx) -> Gate:
        quality, source = ctx.settings, ctx.source
        picks = spread(len(frames), len(frames) / ctx.fps * quality.edge_samples_per_s)
        edge = edge_bleeding(frames[picks], landmarks[picks], source.image, source.landmarks, self.settings(quality))
        details = {"max_log_ratio": round(float(edge.values.max()), 3), "threshold": quality.edge_max_log_ratio,
                   "frames": [int(picks[i]) + start for i in edge.frames]}
        if edge.flagged:
            gate = Gate(self.name, FAIL, f"face edge smeared or seamed on {len(edge.frames)} of {len(picks)} "
                        "checked frames", details)
        else:
            gate = Gate(self.name, PASS, "face edge consistent with the photo", details)
        gate.details["summary"] = self.summary(details)  # (called directly by artifact_gates, not via judge)
        return gate


EDGE = EdgeGate()
