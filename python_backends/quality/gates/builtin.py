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

    async def judge(self, segment: SegmentInput) -> Gate:
        gate = presence_gate(segment.track, segment.start)
        gate.details["summary"] = f"{len(segment.track.detected)} frames checked"
        return gate


class IdentityGate(QualityGate):
    name = "identity"

    def settings(self, quality) -> dict:
        return {"window_s": quality.identity_window_s, "threshold_arcface": quality.identity_threshold_arcface,
                "threshold_dlib": quality.identity_threshold_dlib}

    async def judge(self, segment: SegmentInput) -> Gate:
        gate, segment.identity_samples = await identity_gate(segment.frames, segment.track, segment.start,
                                                             segment.ctx, segment.call)
        windows = gate.details.get("windows")
        if windows:
            gate.details["summary"] = f"min window cos {min(w['mean_cosine'] for w in windows):.3f}"
        return gate


class LipSyncGate(QualityGate):
    name = "lipsync"

    def settings(self, quality) -> dict:
        return {"min_envelope_r": quality.min_envelope_r, "max_abs_offset_frames": quality.max_abs_offset_frames,
                "vshift": quality.sync_vshift}  # SyncNet's own LSE thresholds: lipsync_scorer's settings

    async def judge(self, segment: SegmentInput) -> Gate:
        gate = await lipsync_gate(segment.frames, segment.track, segment.opening, segment.start, segment.ctx,
                                  segment.call)
        d = gate.details
        if "correlation" in d:
            d["summary"] = f"offset {d['offset_frames']:+d} fr, r {d['correlation']:.2f}"
        elif d.get("score"):
            d["summary"] = f"LSE-D {d['score']['lse_d']:.2f} LSE-C {d['score']['lse_c']:.2f}"
        return gate


class FlickerGate(QualityGate):
    name = "flicker"
    temporal = True

    def settings(self, quality) -> FlickerSettings:
        return FlickerSettings(spike_k=quality.flicker_spike_k, luma_floor=quality.flicker_luma_floor,
                               warp_floor=quality.flicker_warp_floor)

    async def judge(self, segment: SegmentInput) -> Gate:
        gate = await asyncio.to_thread(flicker_gate, segment.joined, segment.joined_track, segment.offset,
                                       segment.ctx.settings)
        d = gate.details
        d["summary"] = f"luma jump {d['max_luminance_jump']}, warp err {d['max_warping_error']}"
        return gate


class JawGate(QualityGate):
    name = "jaw"
    temporal = True

    def settings(self, quality) -> JawSettings:
        return JawSettings(floor=quality.jaw_floor, spike_k=quality.jaw_spike_k)

    async def judge(self, segment: SegmentInput) -> Gate:
        gate = await asyncio.to_thread(jaw_gate, segment.joined_track.landmarks, segment.offset, segment.ctx)
        gate.details["summary"] = f"max jump {gate.details['max_jump_iod']} IOD"
        return gate


class EyesGate(QualityGate):
    name = "eyes"
    temporal = True

    def settings(self, quality) -> EyeSettings:
        return EyeSettings(eye_line_deg=quality.eye_line_deg, eye_axis_deg=quality.eye_axis_deg,
                           spacing=quality.eye_spacing)

    async def judge(self, segment: SegmentInput) -> Gate:
        gate = await asyncio.to_thread(eyes_gate, segment.joined_track.landmarks, segment.offset, segment.ctx)
        gate.details["summary"] = f"score {gate.details['max_score']}"
        return gate


class ContentSafetyGate(QualityGate):
    name = "content_safety"
    hard = True  # a failure stops the job with its reason (never re-rolled into a pass)

    def settings(self, quality) -> dict:
        return {"samples_per_s": quality.safety_samples_per_s}

    async def judge(self, segment: SegmentInput) -> Gate:
        gate = await safety_gate(segment.frames, segment.start, segment.ctx, segment.call)
        if "max_nsfw_score" in gate.details:
            gate.details["summary"] = f"NSFW {gate.details['max_nsfw_score']}"
        return gate


PRESENCE, IDENTITY, LIPSYNC, FLICKER = PresenceGate(), IdentityGate(), LipSyncGate(), FlickerGate()
JAW, EYES, CONTENT_SAFETY = JawGate(), EyesGate(), ContentSafetyGate()
