"""The public JSON shape of a job, shared by the API responses and the webhook payloads."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .caches import public_photo_summary
from .store import SUCCEEDED, Job


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


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
        "qa": job.qa,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "output": None,
        "links": {"self": base, "content": f"{base}/content", "report": f"{base}/report"},
    }
    if job.state == SUCCEEDED and result:
        view["output"] = {key: result.get(key) for key in ("sha256", "bytes", "content_type", "frames", "fps",
                                                           "codec", "signed", "cache", "cached_from")}
    if job.last_error and job.state != SUCCEEDED:
        view["last_error"] = job.last_error
    return view
