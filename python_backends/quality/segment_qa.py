"""The records of judging one segment (SourceFace, JobContext, SegmentQA) and the built-in gates' checks; the
registry that runs them is quality/gates/, the loop over a segment quality/segment_job.py.

Gates and what they catch:
- face_presence: the detector finds the face on every sampled frame.
- identity: cosine of the face embedding of sampled frames vs the photo's, per identity window.
- lipsync: SyncNet LSE-D / LSE-C / AV offset when its weights are supplied, else mouth opening vs the speech
  envelope (python_backends/qa/envelope_sync.py); the record says which judged.
- flicker: luminance jumps and flow-warping error on the face (quality/flicker.py).
- jaw, eyes, edge: jaw discontinuity, eye misalignment (quality/artifacts.py); edge bleeding (gates/edge.py).
- content_safety: NSFW score of sampled frames (a hard gate: it stops the job instead of re-rolling).

Each gate is pass / fail / unavailable; unavailable is never counted as a pass.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import spec
from ..errors import InputError, WeightsUnavailable
from ..face_embedding.predictor import MIN_FACE_PX, embeddable
from ..preprocessing import ModelCaller
from . import (
    EyeSettings,
    FlickerSettings,
    JawSettings,
    eye_misalignment,
    flicker_report,
    jaw_discontinuity,
)
from .envelope_sync import envelope_sync, speech_envelope
from .gate import FAIL, PASS, UNAVAILABLE, Gate, frames_where, spread
from .settings import QualitySettings
from .tracking import FaceTrack, batched_call

SYNCNET_FPS = 25.0
SYNCNET_CROP = 224
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class SourceFace:
    """The photo as pre-processing saw it: what every generated frame is compared with."""

    image: np.ndarray  # [H, W, 3] RGB
    box: np.ndarray  # [4]
    keypoints: np.ndarray  # [5, 2]
    landmarks: np.ndarray  # [68, 2] iBUG order
    embedding: np.ndarray  # [D], unit length
    embedder: str  # engine of face_embedder, e.g. "dlib-resnet-v1" or "arcface-iresnet50"

    @classmethod
    def from_preprocessed(cls, image: np.ndarray, arrays: dict[str, np.ndarray], report: dict) -> SourceFace:
        from ..face_landmarks.head_pose import to_ibug68

        face = report["faces"][report["selected_face"]]
        embedder = report["models"][spec.FACE_EMBEDDER.name].get("engine", "?")
        return cls(image, arrays[spec.FACE_BOX].astype(np.float64), np.asarray(face["keypoints"], np.float32),
                   to_ibug68(arrays[spec.LANDMARKS]), arrays[spec.EMBEDDING].astype(np.float64), embedder)


@dataclass
class Boundary:
    """The last accepted frame before a segment, so a seam between segments is judged like any other pair."""

    frame: np.ndarray
    landmarks: np.ndarray  # [68, 2]
    box: np.ndarray  # [4]


@dataclass
class JobContext:
    """What a job's segments share: the photo, the speech, the gate settings and which models answered."""

    source: SourceFace
    waveform: np.ndarray | None  # 16 kHz mono speech, None for a driving-video job
    fps: float
    settings: QualitySettings
    mel: np.ndarray | None = None  # [80, M] Wav2Lip mel of the whole speech, for the mouth pass
    # The generator scaled the photo to cover the frame (generation.engines.EngineSpec.photo_covers_frame); False
    # (letterboxed, or not known: an uploaded video) gives the smaller estimate of the face QA tracking expects.
    photo_covers_frame: bool = False
    # Which optional models answered: None until first asked (they answer UNAVAILABLE without weights).
    syncnet: bool | None = None
    safety: bool | None = None
    refiner: bool | None = None
    refiner_reason: str = ""


@dataclass
class SegmentQA:
    index: int
    start_frame: int
    frame_count: int
    gates: list[Gate]
    track: FaceTrack
    identity_samples: list[tuple[float, float]]  # (time s, cosine) per embedded frame
    opening: np.ndarray  # [T] mouth opening, for the job-level sync
    timings_ms: dict[str, float]
    attempt: int = 0
    seed: int | None = None
    post: dict = field(default_factory=dict)  # what post-processing did (colour, mouth pass)

    @property
    def failed(self) -> list[str]:
        return [g.name for g in self.gates if g.status == FAIL]

    @property
    def hard_failure(self) -> Gate | None:
        return next((g for g in self.gates if g.status == FAIL and g.hard), None)

    @property
    def verdict(self) -> str:
        return "blocked" if self.hard_failure else (FAIL if self.failed else PASS)

    def as_dict(self) -> dict:
        return {"segment": self.index, "start_frame": self.start_frame, "frames": self.frame_count,
                "attempt": self.attempt, "seed": self.seed, "verdict": self.verdict, "failed": self.failed,
                "gates": [g.as_dict() for g in self.gates], "post": self.post, "timings_ms": self.timings_ms}


# ---------------------------------------------------------------- single gates


def presence_gate(track: FaceTrack, start: int) -> Gate:
    lost = [i + start for i in track.lost_frames]
    if lost:
        return Gate("face_presence", FAIL, f"no face found on {len(lost)} of {len(track.detected)} checked frames",
                    {"frames": lost})
    return Gate("face_presence", PASS, f"face found on all {len(track.detected)} checked frames")


async def identity_gate(frames: np.ndarray, track: FaceTrack, start: int, ctx: JobContext, call: ModelCaller
                        ) -> tuple[Gate, list[tuple[float, float]]]:
    # A face the detector finds that the embedder would refuse as bad input (under its smallest size, keypoints
    # that look mirrored on a garbled face) cannot be compared: a verdict on the generated video, not an error
    # (such a refusal once ended a job).
    usable = track.found.copy()
    taken, refused = embeddable(frames.shape[1:], track.detected_boxes[usable], track.detected_keypoints[usable])
    usable[usable] = taken
    found = track.detected[usable]
    if not len(found):
        if not track.found.any():
            return Gate("identity", FAIL, "no face to compare with the photo"), []
        why = sorted({f"under {MIN_FACE_PX} px across" if code == "face_too_small"
                      else "with a malformed box or keypoints" for code in refused})
        return Gate("identity", FAIL, f"the faces found are {' or '.join(why)}: none can be compared with the "
                    "photo"), []
    outputs = await batched_call(call, spec.FACE_EMBEDDER, {
        spec.IMAGE: frames[found], spec.FACE_BOX: track.detected_boxes[usable],
        spec.FACE_KEYPOINTS: track.detected_keypoints[usable]}, ctx.settings.request_frames)
    embedder = json.loads(outputs[spec.MODEL_INFO].reshape(-1)[0]).get("engine", "?")
    if outputs[spec.EMBEDDING].shape[-1] != len(ctx.source.embedding):
        return Gate("identity", UNAVAILABLE, f"embedder {embedder} gives {outputs[spec.EMBEDDING].shape[-1]}-d "
                    f"vectors but the photo's has {len(ctx.source.embedding)}"), []
    vectors = outputs[spec.EMBEDDING].astype(np.float64)
    cosines = vectors @ ctx.source.embedding / np.maximum(
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(ctx.source.embedding), 1e-12)
    samples = [((start + int(i)) / ctx.fps, float(c)) for i, c in zip(found, cosines)]
    threshold = ctx.settings.identity_threshold(embedder)
    windows = identity_windows(samples, ctx.settings.identity_window_s, threshold)
    failing = [w for w in windows if w["status"] == FAIL]
    details = {"embedder": embedder, "threshold": threshold, "windows": windows}
    if failing:
        worst = min(failing, key=lambda w: w["mean_cosine"])
        return Gate("identity", FAIL, f"identity drifts in {len(failing)} window(s): mean cosine "
                    f"{worst['mean_cosine']:.3f} < {threshold:g} at {worst['start_s']:g}-{worst['end_s']:g} s "
                    f"(judged by {embedder})", details), samples
    return Gate("identity", PASS, f"lowest window mean cosine {min(w['mean_cosine'] for w in windows):.3f} >= "
                f"{threshold:g} (judged by {embedder})", details), samples


def identity_windows(samples: list[tuple[float, float]], window_s: float, threshold: float) -> list[dict]:
    """Per window of `window_s` seconds (from the clip's start): mean and lowest cosine and a verdict."""
    by_window: dict[int, list[float]] = {}
    for seconds, cosine in samples:
        by_window.setdefault(int(seconds // window_s), []).append(cosine)
    return [{"window": w, "start_s": round(w * window_s, 3), "end_s": round((w + 1) * window_s, 3),
             "samples": len(values), "mean_cosine": round(float(np.mean(values)), 4),
             "min_cosine": round(float(np.min(values)), 4),
             "status": PASS if np.mean(values) >= threshold else FAIL}
            for w, values in sorted(by_window.items())]


def _resample_indices(count: int, fps: float, target: float) -> np.ndarray:
    """Frame indices nearest in time to each frame at `target` fps."""
    times = np.arange(int(np.floor(count / fps * target + 1e-9))) / target
    return np.minimum(np.floor(times * fps + 0.5).astype(int), count - 1)


def face_crops(frames: np.ndarray, boxes: np.ndarray, picks: np.ndarray | None = None,
               size: int = SYNCNET_CROP) -> np.ndarray:
    """Square crops around each face box (1.2x its larger side, as syncnet_python's crop_scale 0.4 pads), of the
    frames `picks` (all where None) read in place: `frames[picks]` would copy whole frames to keep 224 px of each."""
    picks = np.arange(len(frames)) if picks is None else np.asarray(picks)
    crops = np.empty((len(picks), size, size, 3), np.uint8)
    for t, index in enumerate(picks):
        frame, box = frames[index], boxes[index]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = 0.6 * max(box[2] - box[0], box[3] - box[1])
        matrix = np.array([[size / (2 * half), 0, size / 2 - cx * size / (2 * half)],
                           [0, size / (2 * half), size / 2 - cy * size / (2 * half)]], np.float32)
        crops[t] = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    return crops


def segment_audio(waveform: np.ndarray, start: int, count: int, fps: float) -> np.ndarray:
    first = int(round(start / fps * SAMPLE_RATE))
    return np.asarray(waveform[first: first + int(round(count / fps * SAMPLE_RATE))], np.float32)


def envelope_gate(opening: np.ndarray, waveform: np.ndarray, start: int, fps: float, settings: QualitySettings,
                  why_not_syncnet: str) -> Gate:
    audio = segment_audio(waveform, start, len(opening), fps)
    try:
        score = envelope_sync(opening, speech_envelope(audio, fps, len(opening)), settings.sync_vshift)
    except InputError as exc:
        return Gate("lipsync", UNAVAILABLE, str(exc), {"judged_by": "envelope"})
    details = {"judged_by": "envelope (mouth opening vs speech envelope)", "syncnet": why_not_syncnet,
               "offset_frames": score.offset_frames, "offset_ms": round(1000 * score.offset_frames / fps, 1),
               "correlation": round(score.correlation, 4), "confidence": round(score.confidence, 4),
               "thresholds": {"min_r": settings.min_envelope_r,
                              "max_abs_offset_frames": settings.max_abs_offset_frames}}
    failures = []
    if score.correlation < settings.min_envelope_r:
        failures.append(f"mouth follows the speech at r {score.correlation:.2f} < {settings.min_envelope_r:g}")
    if abs(score.offset_frames) > settings.max_abs_offset_frames:
        failures.append(f"AV offset {score.offset_frames:+d} frames exceeds +-{settings.max_abs_offset_frames}")
    if failures:
        return Gate("lipsync", FAIL, "; ".join(failures), details)
    return Gate("lipsync", PASS, f"r {score.correlation:.2f} at offset {score.offset_frames:+d} frames", details)


async def lipsync_gate(frames: np.ndarray, track: FaceTrack, opening: np.ndarray, start: int, ctx: JobContext,
                       call: ModelCaller) -> Gate:
    if ctx.waveform is None:
        return Gate("lipsync", UNAVAILABLE, "no speech in this job (driving video)")
    why_not = "no SyncNet weights (supply lipsync_scorer/syncnet_v2.model)"
    if ctx.syncnet is not False:
        picks = _resample_indices(len(frames), ctx.fps, SYNCNET_FPS)
        audio = segment_audio(ctx.waveform, start, len(frames), ctx.fps)
        try:
            # off the event loop: ~125 crops, which would hold up the gates that run meanwhile
            crops = await asyncio.to_thread(face_crops, frames, track.boxes, picks)
            outputs = await call(spec.LIPSYNC_SCORER, {
                spec.FACE_CROPS: crops[None],
                spec.WAVEFORM: audio[None], spec.FPS: np.array([[SYNCNET_FPS]], np.float32)})
            ctx.syncnet = True
            report = json.loads(outputs[spec.SYNC_REPORT].reshape(-1)[0])
            return Gate("lipsync", report["status"], report["reason"], {"judged_by": "syncnet_v2", **report})
        except WeightsUnavailable as exc:
            ctx.syncnet, why_not = False, str(exc)
        except InputError as exc:
            return Gate("lipsync", UNAVAILABLE, str(exc), {"judged_by": "syncnet_v2"})
    return envelope_gate(opening, ctx.waveform, start, ctx.fps, ctx.settings, why_not)


def flicker_gate(frames: np.ndarray, track: FaceTrack, start: int, settings: QualitySettings) -> Gate:
    report = flicker_report(frames, track.boxes.min(0)[:2].tolist() + track.boxes.max(0)[2:].tolist(),
                            FlickerSettings(spike_k=settings.flicker_spike_k, luma_floor=settings.flicker_luma_floor,
                                            warp_floor=settings.flicker_warp_floor))
    details = {"max_luminance_jump": round(float(report.luminance.max()), 2),
               "max_warping_error": round(float(report.warping_error.max()), 2),
               "spike_pairs": frames_where(report.spikes, start),
               "frames": frames_where(report.suspect_frames, start)}
    if report.flagged:
        return Gate("flicker", FAIL, f"{len(report.spikes)} flicker spike(s) on the face", details)
    return Gate("flicker", PASS, "no flicker spike on the face", details)


def jaw_gate(landmarks: np.ndarray, start: int, ctx: JobContext) -> Gate:
    s = ctx.settings
    jaw = jaw_discontinuity(landmarks, ctx.source.landmarks, JawSettings(floor=s.jaw_floor, spike_k=s.jaw_spike_k))
    return Gate("jaw", FAIL if jaw.flagged else PASS,
                f"jaw jumps on {len(jaw.frames)} frame(s)" if jaw.flagged else "jaw moves smoothly",
                {"max_jump_iod": round(float(jaw.values.max()), 4), "threshold": s.jaw_floor,
                 "frames": frames_where(jaw.frames, start)})


def eyes_gate(landmarks: np.ndarray, start: int, ctx: JobContext) -> Gate:
    s = ctx.settings
    eye_settings = EyeSettings(eye_line_deg=s.eye_line_deg, eye_axis_deg=s.eye_axis_deg, spacing=s.eye_spacing)
    eyes = eye_misalignment(landmarks, ctx.source.landmarks, eye_settings)
    return Gate("eyes", FAIL if eyes.flags.flagged else PASS,
                f"eyes misplaced on {len(eyes.flags.frames)} frame(s)" if eyes.flags.flagged else "eyes in place",
                {"max_score": round(float(eyes.flags.values.max()), 3),
                 "frames": frames_where(eyes.flags.frames, start)})


def artifact_gates(frames: np.ndarray, landmarks: np.ndarray, start: int, ctx: JobContext) -> list[Gate]:
    """jaw, eyes and edge over the same frames (perf/bench_quality.py times them together)."""
    from .gates.edge import EDGE

    return [jaw_gate(landmarks, start, ctx), eyes_gate(landmarks, start, ctx),
            EDGE.judge_frames(frames, landmarks, start, ctx)]


async def safety_gate(frames: np.ndarray, start: int, ctx: JobContext, call: ModelCaller) -> Gate:
    if ctx.safety is False:
        return Gate("content_safety", UNAVAILABLE, "content_safety model unavailable")
    picks = spread(len(frames), len(frames) / ctx.fps * ctx.settings.safety_samples_per_s)
    try:
        # the sampled frames in as few requests as content_safety batches (its default max_batch_size)
        outputs = await batched_call(call, spec.CONTENT_SAFETY, {spec.IMAGE: frames[picks]},
                                     min(ctx.settings.request_frames, spec.CONTENT_SAFETY.max_batch_size))
    except WeightsUnavailable as exc:
        ctx.safety = False
        return Gate("content_safety", UNAVAILABLE, str(exc))
    ctx.safety = True
    reports = [json.loads(report) for report in outputs[spec.SAFETY_REPORT].reshape(-1)]
    # a check the model could not make (NudeNet not installed) has no score: the gate is then unavailable
    scores = [score for r in reports if (score := r["nsfw"].get("score")) is not None]
    failing = [int(picks[i]) + start for i, r in enumerate(reports) if r["nsfw"]["status"] == FAIL]
    statuses = {r["nsfw"]["status"] for r in reports}
    details = {"checked_frames": [int(i) + start for i in picks],
               "max_nsfw_score": round(max(scores), 4) if scores else None, "frames": failing}
    if failing:
        return Gate("content_safety", FAIL, f"NSFW content on {len(failing)} of {len(picks)} checked frames", details)
    if statuses != {PASS}:
        return Gate("content_safety", UNAVAILABLE, reports[0]["nsfw"].get("reason", "NSFW check unavailable"), details)
    return Gate("content_safety", PASS, f"max NSFW score {max(scores):.3f}", details)
