"""The talking_head job: validate + pre-process, then generate segment by segment, post-process and judge each
segment, and stream the accepted frames on with their QA record.

A segment (the whole number of the engine's native clips nearest `segment_s`, 5 s: one Wan S2V clip) is generated
by one bounded video_generator request (`start_frame`, `frame_count`, continuing from the accepted frames before
it). A segment that fails a quality
gate is generated again with a new seed, up to `max_rerolls` times; the best attempt is then kept and the job
is flagged for human review. A content-safety failure stops the job with its reason. The last response carries
no frames, only the job's QA report. Bounded requests are also why a re-roll needs no cancellation of a
running stream (the BLS response iterator of Triton 2.51 cannot cancel).

Transport-neutral: `call` runs a batched model (async), `stream` runs a decoupled one (yields dicts of
outputs). Inside Triton these are BLS calls (triton_io); tests can pass fakes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import spec
from .audio.decode import SAMPLE_RATE
from .audio.mel import melspectrogram
from .backlog import Backlog, BacklogJob, segments_in
from .contract import AUTO, SegmentRequest, derive_seed, parse_job_params
from .errors import InputError
from .generation.engines import segment_frames
from .preprocessing import ModelCaller, preprocess_job
from .quality.report import job_report
from .quality.segment_job import judge_video, process_segment, safety_of_photo, segment_length, segment_size
from .quality.segment_qa import Boundary, JobContext, SegmentQA, SourceFace
from .quality.settings import QualitySettings
from .quality.upscale import resize_frames, resize_note
from .validation import ValidationLimits, probe_video, read_frames

# The driving video is handed to the generator at most this large: Animate works at 480p-720p anyway, and
# the frames cross process boundaries (BLS) once per job.
DRIVING_MAX_SIDE = 640
DRIVING_MAX_FRAMES = 1800  # 60 s at 30 fps

ModelStreamer = Callable[[spec.ModelSpec, dict[str, np.ndarray], dict], Iterator[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class TalkingHeadSettings:
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    quality: QualitySettings = field(default_factory=QualitySettings)
    keepalive_s: float = spec.STREAM_KEEPALIVE_S  # keep-alive interval of the stream (triton_io.StreamingModel)


def _info(outputs: dict[str, np.ndarray]) -> dict:
    return json.loads(outputs[spec.CHUNK_INFO].reshape(-1)[0])


def _with_info(outputs: dict[str, np.ndarray], info: dict) -> dict[str, np.ndarray]:
    return {**outputs, spec.CHUNK_INFO: np.array([json.dumps(info).encode()], dtype=np.object_)}


@dataclass
class _Attempt:
    chunks: list[dict[str, np.ndarray]]  # the generator's responses
    raw: np.ndarray  # their frames, as generated (the next segment continues from these)
    frames: np.ndarray  # post-processed
    qa: SegmentQA


def _generate(stream: ModelStreamer, inputs: dict[str, np.ndarray], parameters: dict) -> list[dict[str, np.ndarray]]:
    chunks = [c for c in stream(spec.VIDEO_GENERATOR, inputs, parameters) if len(c[spec.FRAMES])]
    if not chunks:
        raise InputError("the generator returned no frames for this segment", "generation_empty")
    return chunks


async def run_video_qa(inputs: dict[str, np.ndarray], call: ModelCaller, settings: TalkingHeadSettings) -> dict:
    """The QA report of a given video (frames + fps) against its photo and speech."""
    photo, audio = (inputs[name].reshape(-1)[0] for name in (spec.PHOTO_BYTES, spec.AUDIO_BYTES))
    frames, fps = inputs[spec.FRAMES], float(inputs[spec.FPS].reshape(-1)[0])
    if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise InputError(f"frames must be [n, H, W, 3] uint8 with n >= 1; got {frames.shape}", "bad_frames")
    job = await preprocess_job(photo, audio, call, settings.limits)
    ctx = JobContext(SourceFace.from_preprocessed(job.image, job.arrays, job.report), job.arrays[spec.WAVEFORM], fps,
                     settings.quality)
    segments = await judge_video(frames, ctx, call)
    return job_report(segments, ctx, engine="uploaded video", rerolls=0)


def run_talking_head(
    inputs: dict[str, np.ndarray],
    parameters: dict,
    call: ModelCaller,
    stream: ModelStreamer,
    settings: TalkingHeadSettings,
    backlog: BacklogJob | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """`backlog` hears how many segments the job has and which one runs (the autoscaler's signal, backlog.py)."""
    backlog = backlog or Backlog().accept()
    photo, audio, video = (
        inputs[name].reshape(-1)[0] if name in inputs else None
        for name in (spec.PHOTO_BYTES, spec.AUDIO_BYTES, spec.DRIVING_VIDEO_BYTES)
    )
    params = parse_job_params(parameters)  # bad parameters fail before any work
    output_size = params.output_size
    started = time.perf_counter()
    job = asyncio.run(preprocess_job(photo, audio, call, settings.limits, driving_video=video))
    generator_inputs = {spec.IMAGE: job.image, **job.arrays}
    if video is not None:
        info = probe_video(video, settings.limits)
        generator_inputs[spec.DRIVING_FRAMES] = read_frames(video, 1, DRIVING_MAX_FRAMES, settings.limits,
                                                            DRIVING_MAX_SIDE)
        generator_inputs[spec.DRIVING_FPS] = np.array([info.fps], np.float32)
    waveform = job.arrays.get(spec.WAVEFORM)
    quality = settings.quality
    ctx = JobContext(SourceFace.from_preprocessed(job.image, job.arrays, job.report), waveform, params.fps, quality,
                     mel=melspectrogram(waveform) if waveform is not None else None)
    photo_safety = asyncio.run(safety_of_photo(ctx, call))

    # Segments of whole native clips of the engine (generation/engines.py); under `auto` the engine is known from
    # the first segment's answer on.
    engine = None if params.engine == AUTO else params.engine
    min_tail = segment_size(quality, params.fps)[1]
    size = (segment_frames(engine, quality.segment_s, params.fps), min_tail)
    # Until the generator reports the clip's length, expect the speech's (the preview and S2V engines make that).
    expected = None
    if waveform is not None:
        expected = int(np.ceil(min(len(waveform) / SAMPLE_RATE, params.max_duration_s) * params.fps - 1e-9))

    def plan(frames: int) -> None:
        backlog.plan(segments_in(frames, lambda at: segment_length(at, frames, *size)))

    if expected:
        plan(expected)
    context_frames = int(round(quality.motion_context_s * params.fps))
    accepted: list[SegmentQA] = []
    motion: np.ndarray | None = None
    boundary: Boundary | None = None
    start, total, rerolls, index = 0, None, 0, 0
    while total is None or start < total:
        best: _Attempt | None = None
        backlog.begin(index)  # (the job's end takes a segment left running out of the count, failures included)
        for attempt in range(quality.max_rerolls + 1):
            segment = SegmentRequest(start, segment_length(start, total or expected, *size),
                                     derive_seed(params.seed, index, attempt))
            seed, request = segment.seed, segment.parameters(params)
            segment_inputs = dict(generator_inputs)
            if motion is not None:
                segment_inputs[spec.MOTION_FRAMES] = motion
            chunks = _generate(stream, segment_inputs, request)
            reported = int(chunks[-1][spec.TOTAL_FRAMES].reshape(-1)[0])
            served = _info(chunks[0]).get("engine_id", engine)
            if reported != total or served != engine:  # the clip's real length and engine: re-plan the segments
                total, engine = reported, served
                size = (segment_frames(engine, quality.segment_s, params.fps), min_tail)
                plan(total)
            raw = np.concatenate([c[spec.FRAMES] for c in chunks])
            frames, qa = asyncio.run(process_segment(raw, index, start, ctx, call, boundary))
            qa.attempt, qa.seed = attempt, seed
            if qa.hard_failure:
                gate = qa.hard_failure
                raise InputError(f"stopped at {start / params.fps:.1f} s: the generated video failed the "
                                 f"{gate.name} gate ({gate.reason})", "content_policy")
            if best is None or len(qa.failed) < len(best.qa.failed):
                best = _Attempt(chunks, raw, frames, qa)
            if not qa.failed:
                break
            rerolls += attempt < quality.max_rerolls
        backlog.end()
        assert best is not None
        accepted.append(best.qa)
        first = True
        offset = 0
        for chunk in best.chunks:
            count = len(chunk[spec.FRAMES])
            info = _info(chunk)
            info.update({"segment": index, "attempt": best.qa.attempt, "seed": best.qa.seed})
            if first:
                info["qa"] = best.qa.as_dict()
                if index == 0:
                    # The first chunk carries the job's pre-processing report, so a client has it before any video.
                    info["job_report"] = job.report
                    info["photo_safety"] = photo_safety
            first = False
            frames = best.frames[offset: offset + count]
            yield _with_info({**chunk, spec.FRAMES: resize_frames(frames, output_size) if output_size else frames},
                             info)
            offset += count
        motion = best.raw if motion is None else np.concatenate([motion, best.raw])
        motion = motion[-context_frames:] if context_frames else None
        track = best.qa.track
        boundary = Boundary(best.frames[-1], track.landmarks[-1], track.boxes[-1])
        start += len(best.raw)
        index += 1

    engine = _info(best.chunks[0]).get("engine", "?")
    height, width = best.frames.shape[1:3]
    post = {"colour_match": quality.colour_match, "resize": resize_note((width, height), output_size),
            "mouth_refiner": "applied" if ctx.refiner else ctx.refiner_reason or "not needed",
            "photo_safety": photo_safety}
    report = job_report(accepted, ctx, engine=engine, rerolls=rerolls, post=post)
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    last = best.chunks[-1]
    if output_size:
        width, height = output_size
    yield {
        spec.FRAMES: np.zeros((0, height, width, 3), np.uint8),
        spec.START_FRAME: np.array([start], np.int64),
        spec.TOTAL_FRAMES: last[spec.TOTAL_FRAMES],
        spec.FPS: last[spec.FPS],
        spec.CHUNK_INFO: np.array([json.dumps({"qa_report": report}).encode()], dtype=np.object_),
    }
