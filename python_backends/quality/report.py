"""The job's QA report: versioned JSON (schema in qa_report.schema.json) built from the accepted segments."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .envelope_sync import envelope_sync, speech_envelope
from .gate import FAIL, PASS, UNAVAILABLE, Gate
from .gates import GATE_NAMES
from .segment_qa import JobContext, SegmentQA, identity_windows

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("qa_report.schema.json")
GATES = GATE_NAMES  # the registry's gates, in report order


def worst_status(statuses: list[str]) -> str:
    """fail beats unavailable beats pass: a gate passes for the job only if it passed on every segment."""
    if FAIL in statuses:
        return FAIL
    if UNAVAILABLE in statuses or not statuses:
        return UNAVAILABLE
    return PASS


def clip_lipsync(segments: list[SegmentQA], ctx: JobContext) -> Gate | None:
    """The envelope judge over the whole clip (segments may be too short for the offset search alone)."""
    if ctx.waveform is None or not segments:
        return None
    opening = np.concatenate([s.opening for s in segments])
    try:
        score = envelope_sync(opening, speech_envelope(ctx.waveform, ctx.fps, len(opening)), ctx.settings.sync_vshift)
    except InputError as exc:
        return Gate("lipsync_clip", UNAVAILABLE, str(exc))
    ok = score.correlation >= ctx.settings.min_envelope_r and \
        abs(score.offset_frames) <= ctx.settings.max_abs_offset_frames
    return Gate("lipsync_clip", PASS if ok else FAIL,
                f"whole clip: r {score.correlation:.2f} at AV offset {score.offset_frames:+d} frames",
                {"judged_by": "envelope", "offset_frames": score.offset_frames,
                 "offset_ms": round(1000 * score.offset_frames / ctx.fps, 1),
                 "correlation": round(score.correlation, 4), "confidence": round(score.confidence, 4)})


def job_report(segments: list[SegmentQA], ctx: JobContext, *, engine: str, rerolls: int,
               post: dict | None = None) -> dict:
    gates = {}
    for name in GATES:
        results = [g for s in segments for g in s.gates if g.name == name]
        gates[name] = {"status": worst_status([g.status for g in results]),
                       "reasons": sorted({g.reason for g in results if g.status != PASS})}
    samples = [sample for s in segments for sample in s.identity_samples]
    identity = next((g for s in segments for g in s.gates if g.name == "identity" and "embedder" in g.details), None)
    embedder = identity.details["embedder"] if identity else ctx.source.embedder
    threshold = ctx.settings.identity_threshold(embedder)
    whole_sync = clip_lipsync(segments, ctx)
    review = [s.index for s in segments if s.failed]
    verdict = "needs_review" if review else ("pass" if all(v["status"] == PASS for v in gates.values())
                                             else "pass_with_unavailable")
    return {
        "schema_version": SCHEMA_VERSION,
        "verdict": verdict,
        "segments_for_review": review,
        "gates": gates,
        "identity": {"embedder": embedder, "threshold": threshold, "window_s": ctx.settings.identity_window_s,
                     "windows": identity_windows(samples, ctx.settings.identity_window_s, threshold)},
        "lipsync_clip": whole_sync.as_dict() if whole_sync else None,
        "segments": [s.as_dict() for s in segments],
        "rerolls": rerolls,
        "engine": engine,
        "post_processing": post or {},
        "settings": dataclasses.asdict(ctx.settings),
        "frames": int(sum(s.frame_count for s in segments)),
        "fps": ctx.fps,
    }


def validate_report(report: dict) -> None:
    """Raise jsonschema.ValidationError when `report` does not follow the versioned schema."""
    import jsonschema

    jsonschema.validate(report, report_schema())


def report_schema() -> dict:
    """The versioned JSON schema, with the registry's gates as the `gates` object's required keys."""
    schema = json.loads(SCHEMA_PATH.read_text())
    schema["properties"]["gates"]["required"] = list(GATE_NAMES)
    return schema
