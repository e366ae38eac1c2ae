"""The pre-processing job: validate the photo and audio, then detect, align, embed and featurise.

Pure orchestration over a `ModelCaller`, so the same code runs inside Triton (BLS calls, see
triton_io.TritonModelCaller) and in unit tests with a fake caller. The face chain and the audio run
concurrently; the first validation failure stops the job with the InputError that explains it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spec
from .errors import InputError
from .face_landmarks.head_pose import to_ibug68, yaw_from_keypoints
from .validation import (
    ValidationLimits,
    check_audio,
    check_audio_upload,
    check_pose,
    decode_image,
    probe_video,
    read_frames,
    select_face,
)

ModelCaller = Callable[[spec.ModelSpec, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]

REPORT_VERSION = "1"
DRIVING_VIDEO_SAMPLES = 8  # frames checked for a face, spread over the clip
MIN_DRIVING_FACE_FRACTION = 0.5


def _info(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return json.loads(outputs[spec.MODEL_INFO].reshape(-1)[0])


def _rounded(array: np.ndarray, digits: int = 2) -> list:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, name: str, started: float) -> None:
        self.ms[name] = round((time.perf_counter() - started) * 1000.0, 1)


async def _face_chain(image: np.ndarray, call: ModelCaller, limits: ValidationLimits, timer: _Timer) -> dict:
    batch = image[None]
    started = timer.start()
    detected = await call(spec.FACE_DETECTOR, {spec.IMAGE: batch})
    timer.stop("face_detector", started)
    count = int(detected[spec.FACE_COUNT].reshape(-1)[0])
    boxes = detected[spec.FACE_BOXES][0][:count]
    scores = detected[spec.FACE_SCORES][0][:count]
    keypoints = detected[spec.FACE_KEYPOINTS][0][:count]
    chosen = select_face(boxes, scores, keypoints, image.shape, limits)
    box, kps = boxes[chosen].astype(np.float32), keypoints[chosen].astype(np.float32)

    started = timer.start()
    marks, embedded = await asyncio.gather(
        call(spec.FACE_LANDMARKS, {spec.IMAGE: batch, spec.FACE_BOX: box[None]}),
        call(spec.FACE_EMBEDDER, {spec.IMAGE: batch, spec.FACE_BOX: box[None], spec.FACE_KEYPOINTS: kps[None]}),
    )
    timer.stop("face_landmarks+face_embedder", started)
    yaw, pitch, roll = (float(v) for v in marks[spec.HEAD_POSE][0])
    # Landmark fits collapse on side views and under-read the yaw; the detector's keypoints cross-check it.
    keypoint_yaw = float(yaw_from_keypoints(kps))
    check_pose(yaw, pitch, limits, keypoint_yaw=keypoint_yaw)
    embedding = embedded[spec.EMBEDDING][0]
    # The generators take the 68-point iBUG layout, whatever the landmarker's own (98 WFLW, 468 Face Mesh).
    landmarks = to_ibug68(marks[spec.LANDMARKS][0]).astype(np.float32)
    arrays = {spec.FACE_BOX: box, spec.LANDMARKS: landmarks,
              spec.EMBEDDING: embedding.astype(np.float32)}
    return {
        "arrays": arrays,
        "faces": [
            {"box": _rounded(b), "score": round(float(s), 4), "keypoints": _rounded(k)}
            for b, s, k in zip(boxes, scores, keypoints)
        ],
        "selected_face": int(chosen),
        "landmarks": _rounded(landmarks),
        "head_pose": {
            "yaw": round(yaw, 2), "pitch": round(pitch, 2), "roll": round(roll, 2),
            "keypoint_yaw": round(keypoint_yaw, 2),
        },
        "embedding": {
            "dim": int(embedding.shape[0]),
            "norm": round(float(np.linalg.norm(embedding)), 4),
            "vector": _rounded(embedding, 6),
        },
        "models": {
            spec.FACE_DETECTOR.name: _info(detected),
            spec.FACE_LANDMARKS.name: _info(marks),
            spec.FACE_EMBEDDER.name: _info(embedded),
        },
    }


async def _audio_chain(audio: bytes, call: ModelCaller, limits: ValidationLimits, timer: _Timer) -> dict:
    started = timer.start()
    outputs = await call(spec.AUDIO_FEATURES, {spec.AUDIO_BYTES: np.array([[audio]], dtype=np.object_)})
    timer.stop("audio_features", started)
    report = json.loads(outputs[spec.AUDIO_REPORT].reshape(-1)[0])
    check_audio(report, limits)
    features = outputs[spec.WAV2VEC2_FEATURES][0]
    frames = int(report.get("wav2vec2_frames", features.shape[1] if features.ndim == 3 else 0))
    arrays = {spec.WAVEFORM: outputs[spec.WAVEFORM][0].astype(np.float32)}
    if features.size:
        arrays[spec.WAV2VEC2_FEATURES] = features[:, :frames].astype(np.float32)
    return {
        "arrays": arrays,
        "audio": {
            **report,
            "mel_shape": list(outputs[spec.MEL].shape[1:]),
            "wav2vec2_shape": list(outputs[spec.WAV2VEC2_FEATURES].shape[1:]),
            "waveform_samples": int(outputs[spec.WAVEFORM].shape[-1]),
        },
        "models": {spec.AUDIO_FEATURES.name: _info(outputs)},
    }


async def _video_chain(video: bytes, call: ModelCaller, limits: ValidationLimits, timer: _Timer) -> dict:
    started = timer.start()
    info = await asyncio.to_thread(probe_video, video, limits)
    every = max(1, info.frame_count // DRIVING_VIDEO_SAMPLES)
    frames = await asyncio.to_thread(read_frames, video, every, DRIVING_VIDEO_SAMPLES, limits, 640)
    timer.stop("decode_driving_video", started)
    started = timer.start()
    # All sampled frames share a shape: one batched request.
    detected = await call(spec.FACE_DETECTOR, {spec.IMAGE: frames})
    timer.stop("face_detector_driving_video", started)
    with_face = int(np.count_nonzero(detected[spec.FACE_COUNT].reshape(-1) > 0))
    if with_face < MIN_DRIVING_FACE_FRACTION * len(frames):
        raise InputError(
            f"a face is visible in only {with_face} of {len(frames)} sampled frames of the driving video: "
            "use a video where one face is visible throughout",
            "driving_video_no_face",
        )
    return {
        "arrays": {},
        "driving_video": {
            "width": info.width, "height": info.height, "fps": info.fps, "frame_count": info.frame_count,
            "duration_s": info.duration_s, "codec": info.codec, "rotation_deg": info.rotation_deg,
            "sampled_frames": int(len(frames)), "frames_with_face": with_face,
        },
        "models": {},
    }


@dataclass(frozen=True)
class Preprocessed:
    report: dict
    image: np.ndarray  # the photo as the models saw it: upright RGB, at most working_max_side
    arrays: dict[str, np.ndarray]  # tensors for the generator, keyed by spec tensor names


async def run_preprocess(
    photo: bytes,
    audio: bytes | None,
    call: ModelCaller,
    limits: ValidationLimits,
    driving_video: bytes | None = None,
) -> dict:
    """Validate and pre-process one job; returns the report (raises InputError with guidance on bad input).

    A job animates the photo from speech (`audio`), from a driving video, or from both.
    """
    return (await preprocess_job(photo, audio, call, limits, driving_video)).report


async def preprocess_job(
    photo: bytes,
    audio: bytes | None,
    call: ModelCaller,
    limits: ValidationLimits,
    driving_video: bytes | None = None,
) -> Preprocessed:
    """`run_preprocess`, also keeping the arrays (landmarks, embedding, waveform, ...) a generator needs."""
    if audio is None and driving_video is None:
        raise InputError("send speech audio or a driving video to animate the photo with", "driver_missing")
    timer = _Timer()
    if audio is not None:
        check_audio_upload(audio, limits)
    started = timer.start()
    image = await asyncio.to_thread(decode_image, photo, limits)
    timer.stop("decode_photo", started)
    chains = [_face_chain(image, call, limits, timer)]
    if audio is not None:
        chains.append(_audio_chain(audio, call, limits, timer))
    if driving_video is not None:
        chains.append(_video_chain(driving_video, call, limits, timer))
    parts = await asyncio.gather(*chains)
    report = {
        "report_version": REPORT_VERSION,
        "verdict": "accepted",
        "photo": {"width": int(image.shape[1]), "height": int(image.shape[0])},
        "models": {},
    }
    arrays = {}
    for part in parts:
        report["models"].update(part.pop("models"))
        arrays.update(part.pop("arrays"))
        report.update(part)
    report["timings_ms"] = timer.ms
    return Preprocessed(report, image, arrays)
