"""The public JSON shape of a job, shared by the API responses and the webhook payloads."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from .caches import public_photo_summary
from .store import SUCCEEDED, Job


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


# An absolute path inside a text: "/" not preceded by a name character, ":" (a URL's "//"), "/", "." or ">" (the
# "<weights root>/..." of a hint), then at least two name segments.
_PATH = re.compile(r"(?<![\w:/.>])/(?:[^\s/\"'<>]+/)+([^\s/\"'<>]*)")
_CLIENT_TEXT = ("parameters", "prompt")  # what the tenant sent, returned as sent


def without_paths(value: Any) -> Any:
    """`value` (a report, an error) with every server path shortened to its last part (a file or folder name):
    what a tenant reads names files, never where the gateway or tritonserver keep them."""
    if isinstance(value, str):
        return _PATH.sub(lambda match: match.group(1) or match.group(0).rstrip("/").rsplit("/", 1)[-1], value)
    if isinstance(value, dict):
        return {key: item if key in _CLIENT_TEXT else without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    return value


def job_view(job: Job) -> dict[str, Any]:
    base = f"/v1/videos/{job.id}"
    result = job.result or {}
    view: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "status": job.state,
        "progress": round(float(job.progress), 4),
        "frames_done": job.frames_done,
        "total_frames": job.total_frames,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "parameters": job.parameters,
        "inputs": {name: {"sha256": item["sha256"], "bytes": item["bytes"]} for name, item in job.inputs.items()},
        "webhook_url": job.webhook_url,
        "idempotency_key": job.idempotency_key,
        "photo": public_photo_summary(job.photo),
        "qa": without_paths(job.qa),
        "error": {"code": job.error_code, "message": without_paths(job.error_message)} if job.error_code else None,
        "output": None,
        "links": {"self": base, "content": f"{base}/content", "report": f"{base}/report"},
    }
    if job.state == SUCCEEDED and result:
        view["output"] = {key: result.get(key) for key in ("sha256", "bytes", "content_type", "frames", "fps",
                                                           "codec", "signed", "cache", "cached_from")}
    if job.state == "held":  # review.py: the video waits for an operator; the message says why
        view["review"] = {"status": "held", "message": without_paths(job.error_message)}
    if job.last_error and job.state != SUCCEEDED:
        view["last_error"] = without_paths(job.last_error)
    return view
