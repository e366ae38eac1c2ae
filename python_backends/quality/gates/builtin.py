"""The gates that came with the pipeline, as registry objects over their checks in quality/segment_qa.py."""

from __future__ import annotations

import asyncio

from ..artifacts import EyeSettings, JawSettings
from ..flicker import FlickerSettings
from ..gate import Gate, QualityGate, SegmentInput
from ..segment_qa import (
    eyes_gate,
    flicker_gate,
    identity_gate,
    jaw_gate,
    lipsync_gate,
    presence_gate,
    safety_gate,
)


class PresenceGate(QualityGate):
    name = "face_presence"

    async def check(self, segment: SegmentInput) -> Gate:
        return presence_gate(segment.track, segment.start)

    def summary(self, details: dict) -> str:
        return f"{len(details['frames'])} frame(s) without a face" if details.get("frames") else ""


class IdentityGate(QualityGate):
    name = "identity"

    def settings(self, quality) -> dict:
        return {"window_s": quality.identity_window_s, "threshold_arcface": quality.identity_threshold_arcface,
                "threshold_dlib": quality.identity_threshold_dlib}

    async def check(self, segment: SegmentInput) -> Gate:
        gate, segment.identity_samples = await identity_gate(segment.frames, segment.track, segment.start,
                                                             segment.ctx, segment.call)
        return gate

    def summary(self, details: dict) -> str:
        windows = details.get("windows")
        return f"min window cos {min(w['mean_cosine'] for w in windows):.3f}" if windows else ""


class LipSyncGate(QualityGate):
    name = "lipsync"

    def settings(self, quality) -> dict:
        return {"min_envelope_r": quality.min_envelope_r, "max_abs_offset_frames": quality.max_abs_offset_frames,
                "vshift": quality.sync_vshift}  # SyncNet's own LSE thresholds: lipsync_scorer's settings

    async def check(self, segment: SegmentInput) -> Gate:
        return await lipsync_gate(segment.frames, segment.track, segment.opening, segment.start, segment.ctx,
                                  segment.call)

    def summary(self, d: dict) -> str:
        if "correlation" in d:
            return f"offset {d['offset_frames']:+d} fr, r {d['correlation']:.2f}"
        return f"LSE-D {d['score']['lse_d']:.2f} LSE-C {d['score']['lse_c']:.2f}" if d.get("score") else ""


class FlickerGate(QualityGate):
    name, temporal = "flicker", True

    def settings(self, quality) -> FlickerSettings:
        return FlickerSettings(spike_k=quality.flicker_spike_k, luma_floor=quality.flicker_luma_floor,
                               warp_floor=quality.flicker_warp_floor)

    async def check(self, s: SegmentInput) -> Gate:
        return await asyncio.to_thread(flicker_gate, s.joined, s.joined_track, s.offset, s.ctx.settings)

    def summary(self, d: dict) -> str:
        return f"luma jump {d['max_luminance_jump']}, warp err {d['max_warping_error']}"


class LandmarkMotionGate(QualityGate):
    """A check over the joined landmark track (jaw, eyes): run off the event loop, summarised by one number."""

    temporal = True

    def __init__(self, name: str, check, settings, summary) -> None:
        self.name, self._check, self._settings, self._summary = name, check, settings, summary

    def settings(self, quality):
        return self._settings(quality)

    async def check(self, s: SegmentInput) -> Gate:
        return await asyncio.to_thread(self._check, s.joined_track.landmarks, s.offset, s.ctx)

    def summary(self, d: dict) -> str:
        return self._summary(d)


class ContentSafetyGate(QualityGate):
    name = "content_safety"
    hard = True  # a failure stops the job with its reason (never re-rolled into a pass)

    def settings(self, quality) -> dict:
        return {"samples_per_s": quality.safety_samples_per_s}

    async def check(self, segment: SegmentInput) -> Gate:
        return await safety_gate(segment.frames, segment.start, segment.ctx, segment.call)

    def summary(self, d: dict) -> str:
        return f"NSFW {d['max_nsfw_score']}" if "max_nsfw_score" in d else ""


PRESENCE, IDENTITY, LIPSYNC, FLICKER = PresenceGate(), IdentityGate(), LipSyncGate(), FlickerGate()
JAW = LandmarkMotionGate("jaw", jaw_gate, lambda q: JawSettings(floor=q.jaw_floor, spike_k=q.jaw_spike_k),
                         lambda d: f"max jump {d['max_jump_iod']} IOD")
EYES = LandmarkMotionGate("eyes", eyes_gate, lambda q: EyeSettings(eye_line_deg=q.eye_line_deg,
                                                                   eye_axis_deg=q.eye_axis_deg, spacing=q.eye_spacing),
                          lambda d: f"score {d['max_score']}")
CONTENT_SAFETY = ContentSafetyGate()
