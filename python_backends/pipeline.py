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
from .generation.engines import ENGINES, segment_frames
from .preprocessing import ModelCaller, preprocess_job
from .quality.driving_safety import safety_of_driving_video
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


class TalkingHeadJob:
    """One talking_head request: pre-process, then segment after segment (`segments`) the attempts at it
    (`attempt`, re-rolled with derived seeds until the gates pass or `max_rerolls` are used), then the accepted
    attempt's chunks (`emit`) and, last, the job's QA report. Its model calls share one event loop.

    `backlog` hears how many segments the job has and which one runs (the autoscaler's signal, backlog.py).
    """

    def __init__(self, inputs: dict[str, np.ndarray], parameters: dict, call: ModelCaller, stream: ModelStreamer,
                 settings: TalkingHeadSettings, backlog: BacklogJob | None = None) -> None:
        self.inputs, self.call, self.stream, self.settings = inputs, call, stream, settings
        self.backlog = backlog or Backlog().accept()
        self.params = parse_job_params(parameters)  # bad parameters fail before any work
        self.quality = settings.quality
        # Segments of whole native clips of the engine (generation/engines.py); under `auto` the engine is known
        # from the first segment's answer on.
        self.engine = None if self.params.engine == AUTO else self.params.engine
        self.min_tail = segment_size(self.quality, self.params.fps)[1]
        self.size = (segment_frames(self.engine, self.quality.segment_s, self.params.fps), self.min_tail)
        self.total: int | None = None  # the clip's length, once the generator reports it
        self.expected: int | None = None  # until then, the speech's
        self.rerolls = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self, awaitable):
        assert self._loop is not None, "TalkingHeadJob.run() drives the job"
        return self._loop.run_until_complete(awaitable)

    def run(self) -> Iterator[dict[str, np.ndarray]]:
        self._loop = asyncio.new_event_loop()  # one loop for the job's model calls (not one per attempt)
        try:
            yield from self._job()
        finally:
            self._loop.close()

    def _prepare(self) -> None:
        photo, audio, video = (
            self.inputs[name].reshape(-1)[0] if name in self.inputs else None
            for name in (spec.PHOTO_BYTES, spec.AUDIO_BYTES, spec.DRIVING_VIDEO_BYTES)
        )
        limits, params = self.settings.limits, self.params
        self.job = self._run(preprocess_job(photo, audio, self.call, limits, driving_video=video))
        self.generator_inputs = {spec.IMAGE: self.job.image, **self.job.arrays}
        if video is not None:
            info = probe_video(video, limits)
            self.generator_inputs[spec.DRIVING_FRAMES] = read_frames(video, 1, DRIVING_MAX_FRAMES, limits,
                                                                     DRIVING_MAX_SIDE)
            self.generator_inputs[spec.DRIVING_FPS] = np.array([info.fps], np.float32)
        waveform = self.job.arrays.get(spec.WAVEFORM)
        self.ctx = JobContext(SourceFace.from_preprocessed(self.job.image, self.job.arrays, self.job.report),
                              waveform, params.fps, self.quality,
                              mel=melspectrogram(waveform) if waveform is not None else None)
        self.photo_safety = self._run(safety_of_photo(self.ctx, self.call))
        # The driving video is judged like the photo (sampled frames) before anything is generated.
        self.driving_safety = (self._run(safety_of_driving_video(video, self.call, limits)) if video is not None
                               else None)
        if waveform is not None:  # the preview and S2V engines make the speech's length
            self.expected = int(np.ceil(min(len(waveform) / SAMPLE_RATE, params.max_duration_s) * params.fps - 1e-9))
            self._plan(self.expected)

    def _plan(self, frames: int) -> None:
        self.backlog.plan(segments_in(frames, lambda at: segment_length(at, frames, *self.size)))

    def attempt(self, index: int, start: int, attempt: int, motion: np.ndarray | None,
                boundary: Boundary | None) -> _Attempt:
        """Generate segment `index` (from clip frame `start`, continuing from `motion`) with the attempt's derived
        seed, post-process and judge it. A hard gate's failure stops the job."""
        segment = SegmentRequest(start, segment_length(start, self.total or self.expected, *self.size),
                                 derive_seed(self.params.seed, index, attempt))
        inputs = dict(self.generator_inputs)
        if motion is not None:
            inputs[spec.MOTION_FRAMES] = motion
        chunks = _generate(self.stream, inputs, segment.parameters(self.params))
        reported = int(chunks[-1][spec.TOTAL_FRAMES].reshape(-1)[0])
        served = _info(chunks[0]).get("engine_id", self.engine)
        if reported != self.total or served != self.engine:  # the clip's real length and engine: re-plan
            self.total, self.engine = reported, served
            self.size = (segment_frames(self.engine, self.quality.segment_s, self.params.fps), self.min_tail)
            self._plan(self.total)
        self.ctx.photo_covers_frame = self.engine in ENGINES and ENGINES[self.engine].photo_covers_frame
        raw = np.concatenate([c[spec.FRAMES] for c in chunks])
        frames, qa = self._run(process_segment(raw, index, start, self.ctx, self.call, boundary))
        qa.attempt, qa.seed = attempt, segment.seed
        if qa.hard_failure:
            gate = qa.hard_failure
            raise InputError(f"stopped at {start / self.params.fps:.1f} s: the generated video failed the "
                             f"{gate.name} gate ({gate.reason})", "content_policy")
        return _Attempt(chunks, raw, frames, qa)

    def best_attempt(self, index: int, start: int, motion: np.ndarray | None, boundary: Boundary | None) -> _Attempt:
        """The first attempt that passes every gate, else the one with the fewest failures (flagged for review)."""
        best: _Attempt | None = None
        self.backlog.begin(index)  # (the job's end takes a segment left running out of the count, failures too)
        for number in range(self.quality.max_rerolls + 1):
            attempt = self.attempt(index, start, number, motion, boundary)
            if best is None or len(attempt.qa.failed) < len(best.qa.failed):
                best = attempt
            if not attempt.qa.failed:
                break
            self.rerolls += number < self.quality.max_rerolls
        self.backlog.end()
        assert best is not None
        return best

    def emit(self, index: int, best: _Attempt) -> Iterator[dict[str, np.ndarray]]:
        """The accepted attempt's chunks, post-processed frames in place of the generated ones; its first chunk
        carries the segment's QA record (the job's first also the pre-processing report)."""
        offset, output_size = 0, self.params.output_size
        for number, chunk in enumerate(best.chunks):
            count = len(chunk[spec.FRAMES])
            info = _info(chunk)
            info.update({"segment": index, "attempt": best.qa.attempt, "seed": best.qa.seed})
            if number == 0:
                info["qa"] = best.qa.as_dict()
                if index == 0:  # so a client has the pre-processing report before any video
                    info["job_report"] = self.job.report
                    info["photo_safety"] = self.photo_safety
            frames = best.frames[offset: offset + count]
            yield _with_info({**chunk, spec.FRAMES: resize_frames(frames, output_size) if output_size else frames},
                             info)
            offset += count

    def _job(self) -> Iterator[dict[str, np.ndarray]]:
        started = time.perf_counter()
        self._prepare()
        context_frames = int(round(self.quality.motion_context_s * self.params.fps))
        accepted: list[SegmentQA] = []
        motion: np.ndarray | None = None
        boundary: Boundary | None = None
        start, index = 0, 0
        best: _Attempt | None = None
        while self.total is None or start < self.total:
            best = self.best_attempt(index, start, motion, boundary)
            accepted.append(best.qa)
            yield from self.emit(index, best)
            motion = best.raw if motion is None else np.concatenate([motion, best.raw])
            motion = motion[-context_frames:] if context_frames else None
            track = best.qa.track
            boundary = Boundary(best.frames[-1], track.landmarks[-1], track.boxes[-1])
            start += len(best.raw)
            index += 1
        assert best is not None
        yield self._last(best, accepted, start, started)

    def _last(self, best: _Attempt, accepted: list[SegmentQA], start: int, started: float) -> dict[str, np.ndarray]:
        """The last response: no frames, the job's QA report."""
        output_size, ctx = self.params.output_size, self.ctx
        engine = _info(best.chunks[0]).get("engine", "?")
        height, width = best.frames.shape[1:3]
        post = {"colour_match": self.quality.colour_match, "resize": resize_note((width, height), output_size),
                "mouth_refiner": "applied" if ctx.refiner else ctx.refiner_reason or "not needed",
                "photo_safety": self.photo_safety, "driving_video_safety": self.driving_safety}
        report = job_report(accepted, ctx, engine=engine, rerolls=self.rerolls, post=post)
        report["elapsed_s"] = round(time.perf_counter() - started, 3)
        last = best.chunks[-1]
        if output_size:
            width, height = output_size
        return {
            spec.FRAMES: np.zeros((0, height, width, 3), np.uint8),
            spec.START_FRAME: np.array([start], np.int64),
            spec.TOTAL_FRAMES: last[spec.TOTAL_FRAMES],
            spec.FPS: last[spec.FPS],
            spec.CHUNK_INFO: np.array([json.dumps({"qa_report": report}).encode()], dtype=np.object_),
        }


def run_talking_head(
    inputs: dict[str, np.ndarray],
    parameters: dict,
    call: ModelCaller,
    stream: ModelStreamer,
    settings: TalkingHeadSettings,
    backlog: BacklogJob | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The talking_head stream (TalkingHeadJob); bad parameters fail here, before the first response."""
    return TalkingHeadJob(inputs, parameters, call, stream, settings, backlog).run()
