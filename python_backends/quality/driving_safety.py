"""The driving video's content-safety checks: the photo's checks (NSFW, minor face, public figure) on sampled frames.

A driving video carries a real person's face and body as much as the photo does, so it is judged by the same
`content_safety` model before anything is generated: `SAMPLES` frames spread over the clip, each with its largest
face (box, keypoints and identity embedding, as the photo's). A check that fails on any frame stops the job with
`content_policy`; otherwise each check reports its worst status over the frames (`unavailable` above `pass`,
never hidden), and the job's content policy (client/content_policy.py) decides what an `unavailable` means.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np

from .. import spec
from ..errors import InputError, WeightsUnavailable
from ..preprocessing import ModelCaller
from ..validation import ValidationLimits, probe_video, read_frames

SAMPLES = 4
CHECKS = ("nsfw", "minor", "public_figure")
# Worse first: what one frame reports for a check can only make the clip's status worse.
_ORDER = ("fail", "unavailable", "pass", "not_applicable")


def worst(statuses: list[str]) -> str:
    return min(statuses, key=lambda status: _ORDER.index(status) if status in _ORDER else 1) if statuses \
        else "not_applicable"


async def _frame_report(frame: np.ndarray, face: tuple[np.ndarray, np.ndarray] | None, call: ModelCaller) -> dict:
    inputs = {spec.IMAGE: frame[None]}
    note = None
    if face is not None:
        box, kps = face
        inputs.update({spec.FACE_BOX: box[None], spec.FACE_KEYPOINTS: kps[None]})
        try:
            embedded = await call(spec.FACE_EMBEDDER, {spec.IMAGE: frame[None], spec.FACE_BOX: box[None],
                                                       spec.FACE_KEYPOINTS: kps[None]})
            inputs[spec.EMBEDDING] = embedded[spec.EMBEDDING][:1].astype(np.float32)
        except (InputError, WeightsUnavailable) as exc:
            note = f"no identity embedding of this frame's face: {exc}"
    outputs = await call(spec.CONTENT_SAFETY, inputs)
    report = json.loads(outputs[spec.SAFETY_REPORT].reshape(-1)[0])
    if note is not None and face is not None:  # a face whose identity could not be checked is not "not applicable"
        report["public_figure"] = {"status": "unavailable", "reason": note}
    return report


async def safety_of_driving_video(video: bytes, call: ModelCaller, limits: ValidationLimits,
                                  samples: int = SAMPLES) -> dict:
    """{"status", "frames", and per check {"status", "reasons"}}; InputError("content_policy") on a failure."""
    info = await asyncio.to_thread(probe_video, video, limits)
    every = max(1, info.frame_count // samples)
    frames = await asyncio.to_thread(read_frames, video, every, samples, limits, 640)
    try:
        detected = await call(spec.FACE_DETECTOR, {spec.IMAGE: frames})
        faces: list[tuple[np.ndarray, np.ndarray] | None] = []
        for i in range(len(frames)):
            count = int(detected[spec.FACE_COUNT].reshape(-1)[i])
            if count == 0:
                faces.append(None)
                continue
            boxes = detected[spec.FACE_BOXES][i][:count]
            largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            faces.append((boxes[largest].astype(np.float32),
                          detected[spec.FACE_KEYPOINTS][i][largest].astype(np.float32)))
        reports = await asyncio.gather(*(_frame_report(frame, face, call) for frame, face in zip(frames, faces)))
    except WeightsUnavailable as exc:
        reason = f"content_safety unavailable for the driving video: {exc}"
        return {"status": "unavailable", "reason": reason, "frames": int(len(frames)),
                **{name: {"status": "unavailable", "reasons": [reason]} for name in CHECKS}}
    checks = {}
    for name in CHECKS:
        per_frame = [r.get(name) or {"status": "unavailable", "reason": f"no {name} check in the report"}
                     for r in reports]
        status = worst([check["status"] for check in per_frame])
        checks[name] = {"status": status,
                        "reasons": sorted({check.get("reason", "") for check in per_frame
                                           if check["status"] == status and status != "pass"})}
    failed = {name: check for name, check in checks.items() if check["status"] == "fail"}
    if failed:
        reasons = "; ".join(f"{name}: {', '.join(check['reasons'])}" for name, check in failed.items())
        raise InputError(f"the driving video cannot be used under the content policy ({reasons}); use another "
                         "video", "content_policy")
    return {"status": worst([check["status"] for check in checks.values()]), "frames": int(len(frames)), **checks}
