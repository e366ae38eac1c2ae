"""Post-process and judge one generated segment: track the face, match colour, run the gates, mouth pass."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from .. import spec
from ..errors import InputError, WeightsUnavailable
from ..mouth_refiner.plosive import plosive_frames, refine_runs
from ..preprocessing import ModelCaller
from .colour import ColourCorrection, match_colour
from .envelope_sync import mouth_opening
from .gate import FAIL, SegmentInput
from .gates import GATES
from .joined_frames import JoinedFrames
from .segment_qa import Boundary, JobContext, SegmentQA, segment_audio
from .settings import QualitySettings
from .tracking import FaceBoxes, FaceTrack, detect_faces, photo_face_px, place_landmarks


def segment_size(settings: QualitySettings, fps: float) -> tuple[int, int]:
    """Frames per segment (`segment_s` at `fps`) and the shortest tail judged on its own (one lip-sync window):
    the `frames` and `min_tail` of segment_length."""
    return max(1, int(round(settings.segment_s * fps))), 2 * settings.sync_vshift + 1


def segment_length(start: int, total: int | None, frames: int, min_tail: int) -> int:
    """`frames`, or up to the end when fewer than `min_tail` frames would be left (too short to judge lip-sync)."""
    if total is not None and 0 < total - start - frames < min_tail:
        return total - start
    return frames


async def detect_segment(frames: np.ndarray, ctx: JobContext, call: ModelCaller,
                         boundary: Boundary | None) -> FaceBoxes:
    """The face's boxes through a segment, starting from the previous segment's last box; the detector is told the
    face size to expect (the photo's face in these frames, and that box), so frames that lost the face stay cheap."""
    expected = photo_face_px(ctx.source.image.shape, ctx.source.box, frames.shape[1:3], ctx.photo_covers_frame)
    return await detect_faces(frames, call, ctx.settings.detect_every, boundary.box if boundary else None,
                              ctx.settings.request_frames, expected)


async def track_segment(frames: np.ndarray, ctx: JobContext, call: ModelCaller,
                        boundary: Boundary | None) -> FaceTrack:
    """The face through a segment: detect_segment, then landmarks on every frame."""
    return await place_landmarks(frames, await detect_segment(frames, ctx, call, boundary), call,
                                 ctx.settings.request_frames)


async def check_segment(frames: np.ndarray, track: FaceTrack, index: int, start: int, ctx: JobContext,
                        call: ModelCaller, boundary: Boundary | None = None) -> SegmentQA:
    """Every gate of the registry on `frames` (the clip's frames start .. start + len - 1) with their face `track`,
    concurrently; a motion gate is unavailable below 3 frames (with the seam)."""
    if boundary is not None:  # the previous segment's last frame joins, so a seam is judged as a pair
        joined = JoinedFrames(boundary.frame, frames)
        joined_track = FaceTrack(np.concatenate([boundary.box[None], track.boxes]),
                                 np.concatenate([boundary.landmarks[None], track.landmarks]), track.detected,
                                 track.detected_boxes, track.detected_keypoints, track.found, track.landmarker)
        offset = start - 1
    else:
        joined, joined_track, offset = frames, track, start
    segment = SegmentInput(frames, track, start, ctx, call, mouth_opening(track.mouth_points), joined, joined_track,
                           offset)
    timings: dict[str, float] = {}

    async def run(gate) -> object:
        if gate.temporal and len(joined) < 3:  # motion needs frame pairs on both sides of a frame
            return gate.unavailable(f"{len(joined)} frame(s) are too few to judge motion")
        t0 = time.perf_counter()
        result = await gate.judge(segment)
        timings[gate.name] = round((time.perf_counter() - t0) * 1000.0, 1)
        result.hard = gate.hard
        return result

    started = time.perf_counter()
    gates = list(await asyncio.gather(*(run(gate) for gate in GATES)))
    timings["total"] = round((time.perf_counter() - started) * 1000.0, 1)
    return SegmentQA(index, start, len(frames), gates, track, segment.identity_samples, segment.opening, timings)


async def judge_video(frames: np.ndarray, ctx: JobContext, call: ModelCaller) -> list[SegmentQA]:
    """The gates over a finished video, segment by segment as talking_head judges what it generates."""
    size = segment_size(ctx.settings, ctx.fps)
    segments: list[SegmentQA] = []
    start, boundary = 0, None
    while start < len(frames):
        count = segment_length(start, len(frames), *size)
        part = frames[start: start + count]
        track = await track_segment(part, ctx, call, boundary)
        segments.append(await check_segment(part, track, len(segments), start, ctx, call, boundary))
        boundary = Boundary(part[-1], track.landmarks[-1], track.boxes[-1])
        start += count
    return segments


async def safety_of_photo(ctx: JobContext, call: ModelCaller) -> dict:
    """The photo's content-safety report (NSFW, minor face, public figure) before anything is generated."""
    source = ctx.source
    try:
        outputs = await call(spec.CONTENT_SAFETY, {
            spec.IMAGE: source.image[None], spec.FACE_BOX: source.box.astype(np.float32)[None],
            spec.FACE_KEYPOINTS: source.keypoints.astype(np.float32)[None],
            spec.EMBEDDING: source.embedding.astype(np.float32)[None]})
    except WeightsUnavailable as exc:
        ctx.safety = False
        return {"status": "unavailable", "reason": str(exc)}
    report = json.loads(outputs[spec.SAFETY_REPORT].reshape(-1)[0])
    failed = {name: check for name, check in report.items() if isinstance(check, dict) and check.get("status") == FAIL}
    if failed:
        reasons = "; ".join(f"{name}: {check.get('reason', 'failed')}" for name, check in failed.items())
        raise InputError(f"the photo cannot be animated under the content policy ({reasons}); use another photo",
                         "content_policy")
    return report


def plosive_runs(waveform: np.ndarray, start: int, count: int, fps: float) -> list[tuple[int, int]]:
    """The runs [a, b) of a segment's `count` frames from clip frame `start` that the plosive mouth pass redoes."""
    return refine_runs(plosive_frames(segment_audio(waveform, start, count, fps), fps), count)


async def refine_mouth(frames: np.ndarray, boxes: np.ndarray, runs: list[tuple[int, int]], start: int,
                       ctx: JobContext, call: ModelCaller, lips: np.ndarray | None = None,
                       in_place: bool = False) -> tuple[np.ndarray, dict]:
    """Wav2Lip over each run [a, b) of the segment's frames; the refiner's absence is recorded, not hidden.
    `lips` ([T, K, 2] outer lip contours, from Face Mesh) keep the blend to the mouth region. `in_place`: the
    caller owns `frames` and the new mouths are written into them (else into a copy)."""
    if ctx.refiner is False or ctx.mel is None:
        return frames, {"status": "unavailable", "reason": ctx.refiner_reason or "no speech"}
    # One request for all the (non-empty list of) runs, each frame with its clip index: the refiner smooths each
    # run on its own and sends all their crops through the network together (a request per run cost a network
    # call each). One run is a slice: no copy of the frames.
    index = np.concatenate([np.arange(a, b) for a, b in runs])
    picked = slice(*runs[0]) if len(runs) == 1 else index
    request = {spec.FRAMES: frames[picked][None], spec.FACE_BOXES: boxes[picked].astype(np.float32)[None],
               spec.MEL: ctx.mel[None], spec.START_FRAME: np.array([[start + index[0]]], np.int64),
               spec.FPS: np.array([[ctx.fps]], np.float32), spec.FRAME_INDEX: (start + index)[None]}
    if lips is not None:
        request[spec.MOUTH_CONTOUR] = lips[picked].astype(np.float32)[None]
    try:
        output = await call(spec.MOUTH_REFINER, request)
    except WeightsUnavailable as exc:
        ctx.refiner, ctx.refiner_reason = False, str(exc)
        return frames, {"status": "unavailable", "reason": str(exc)}
    ctx.refiner = True
    out = frames if in_place else frames.copy()  # a whole segment's copy costs as much as a gate
    out[picked] = output[spec.FRAMES][0]
    info = json.loads(output[spec.MODEL_INFO].reshape(-1)[0])
    return out, {"status": "applied", "frames": [[start + a, start + b] for a, b in runs], "model": info}


async def process_segment(raw: np.ndarray, index: int, start: int, ctx: JobContext, call: ModelCaller,
                          boundary: Boundary | None) -> tuple[np.ndarray, SegmentQA]:
    """The post-processed frames of a segment and their QA record. timings_ms: `tracking` (`detection`, then
    landmarks) and `colour` overlap, `refine` is the plosive mouth pass, the gates' own, and `wall`: all of it."""
    started = time.perf_counter()

    def since(t0: float) -> float:
        return round((time.perf_counter() - t0) * 1000.0, 1)

    faces = await detect_segment(raw, ctx, call, boundary)
    detection_ms = since(started)

    async def colour_matched() -> tuple[np.ndarray, ColourCorrection, float]:
        t0 = time.perf_counter()
        # Off the event loop, like the temporal gates: a whole segment's pixels would stall other jobs' coroutines.
        matched, correction = await asyncio.to_thread(match_colour, raw, faces.boxes, ctx.source.image,
                                                      ctx.source.box, ctx.settings.colour_match)
        return matched, correction, since(t0)

    # The colour match needs only the boxes: it runs while the landmarker places the points (on the raw frames,
    # as before), the two longest steps before the gates.
    track, (frames, colour, colour_ms) = await asyncio.gather(
        place_landmarks(raw, faces, call, ctx.settings.request_frames), colour_matched())
    timings = {"tracking": since(started), "detection": detection_ms, "colour": colour_ms}
    post: dict = {"colour": colour.as_dict()}
    # The colour match's output is this function's own array; without a correction it is the caller's `raw`.
    owned = frames is not raw
    if ctx.settings.refine_plosives and ctx.waveform is not None:
        # Plosive mouths (lips pressed shut before the burst) are what generators get wrong most often.
        runs = plosive_runs(ctx.waveform, start, len(frames), ctx.fps)
        if runs:
            t0 = time.perf_counter()
            frames, post["plosives"] = await refine_mouth(frames, track.boxes, runs, start, ctx, call,
                                                          track.outer_lips, in_place=owned)
            owned = owned or post["plosives"]["status"] == "applied"
            timings["refine"] = since(t0)
    qa = await check_segment(frames, track, index, start, ctx, call, boundary)
    sync = next(g for g in qa.gates if g.name == "lipsync")
    if ctx.settings.refine_low_sync and sync.status == FAIL:
        frames, post["low_sync"] = await refine_mouth(frames, track.boxes, [(0, len(frames))], start, ctx, call,
                                                      track.outer_lips, in_place=owned)
        if post["low_sync"]["status"] == "applied":
            track = await track_segment(frames, ctx, call, boundary)
            qa = await check_segment(frames, track, index, start, ctx, call, boundary)
    qa.post = post
    qa.timings_ms = {**timings, **qa.timings_ms, "wall": since(started)}
    return frames, qa
