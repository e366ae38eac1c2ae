"""The talking_head job: validate + pre-process, then generate, streaming each chunk on as it arrives.

Transport-neutral: `call` runs a batched model (async), `stream` runs a decoupled one (yields dicts of
outputs). Inside Triton these are BLS calls (triton_io); tests can pass fakes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import numpy as np

from . import spec
from .preprocessing import ModelCaller, preprocess_job
from .validation import ValidationLimits, probe_video, read_frames

# The driving video is handed to the generator at most this large: Animate works at 480p-720p anyway, and
# the frames cross process boundaries (BLS) once per job.
DRIVING_MAX_SIDE = 640
DRIVING_MAX_FRAMES = 1800  # 60 s at 30 fps

ModelStreamer = Callable[[spec.ModelSpec, dict[str, np.ndarray], dict], Iterator[dict[str, np.ndarray]]]


def run_talking_head(
    inputs: dict[str, np.ndarray],
    parameters: dict,
    call: ModelCaller,
    stream: ModelStreamer,
    limits: ValidationLimits,
) -> Iterator[dict[str, np.ndarray]]:
    photo, audio, video = (
        inputs[name].reshape(-1)[0] if name in inputs else None
        for name in (spec.PHOTO_BYTES, spec.AUDIO_BYTES, spec.DRIVING_VIDEO_BYTES)
    )
    job = asyncio.run(preprocess_job(photo, audio, call, limits, driving_video=video))
    generator_inputs = {spec.IMAGE: job.image, **job.arrays}
    if video is not None:
        info = probe_video(video, limits)
        generator_inputs[spec.DRIVING_FRAMES] = read_frames(video, 1, DRIVING_MAX_FRAMES, limits, DRIVING_MAX_SIDE)
        generator_inputs[spec.DRIVING_FPS] = np.array([info.fps], np.float32)
    for index, outputs in enumerate(stream(spec.VIDEO_GENERATOR, generator_inputs, parameters)):
        if index == 0:
            # The first chunk carries the job's pre-processing report, so a client has it before any video.
            info = json.loads(outputs[spec.CHUNK_INFO].reshape(-1)[0])
            info["job_report"] = job.report
            outputs = {**outputs, spec.CHUNK_INFO: np.array([json.dumps(info).encode()], dtype=np.object_)}
        yield outputs
