"""The short form of a job's QA report: what the signed manifest, the audit log and the gateway's status carry.

The full report (per-segment gates, identity windows, timings) stays beside the video; the summary says how the
job came out and which gate decided it, without the bulk.
"""

from __future__ import annotations

from typing import Any

from .provenance import QA_NOT_RUN


def qa_verdict(report: dict[str, Any] | None) -> dict[str, Any]:
    """The summary of a QA report, or `{"status": "not_run"}` when the server sent none."""
    if not report:
        return dict(QA_NOT_RUN)
    gates = report.get("gates") or {}
    return {
        "status": "run",
        "schema_version": report.get("schema_version"),
        "verdict": report.get("verdict"),
        "segments_for_review": list(report.get("segments_for_review") or []),
        "gates": {name: gate.get("status") for name, gate in sorted(gates.items()) if isinstance(gate, dict)},
        "rerolls": report.get("rerolls"),
        "frames": report.get("frames"),
        "fps": report.get("fps"),
        "engine": report.get("engine"),
    }
