"""The driving video gets the photo's content checks on sampled frames: worst status per check, a failure stops."""

from __future__ import annotations

import asyncio
import json
import subprocess

import numpy as np
import pytest

from python_backends import spec
from python_backends.errors import InputError, WeightsUnavailable
from python_backends.quality.driving_safety import safety_of_driving_video
from python_backends.validation import ValidationLimits
from python_backends.validation.video_checks import ffmpeg_exe


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    frames = np.stack([np.full((48, 64, 3), 20 * i, np.uint8) for i in range(12)])
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                    "-s", "64x48", "-r", "10", "-i", "pipe:0", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(path)], input=frames.tobytes(), check=True)
    return path.read_bytes()


def caller(minor_status, faces=True, unavailable=False):
    calls = []

    async def call(model, inputs):
        calls.append((model.name, sorted(inputs)))
        if model is spec.FACE_DETECTOR:
            n = len(inputs[spec.IMAGE])
            return {spec.FACE_COUNT: np.full((n, 1), 1 if faces else 0, np.int32),
                    spec.FACE_BOXES: np.tile(np.array([[[10, 10, 40, 40]]], np.float32), (n, 1, 1)),
                    spec.FACE_KEYPOINTS: np.zeros((n, 1, 5, 2), np.float32)}
        if model is spec.FACE_EMBEDDER:
            return {spec.EMBEDDING: np.ones((1, 128), np.float32)}
        if unavailable:
            raise WeightsUnavailable("content_safety has no weights")
        brightness = int(inputs[spec.IMAGE].mean())
        face = spec.FACE_BOX in inputs
        report = {"nsfw": {"status": "pass", "reason": "ok"},
                  "minor": {"status": minor_status(brightness) if face else "not_applicable", "reason": "age"},
                  "public_figure": {"status": "pass" if spec.EMBEDDING in inputs else "not_applicable",
                                    "reason": "no match"}}
        return {spec.SAFETY_REPORT: np.array([json.dumps(report).encode()], dtype=np.object_)}

    return call, calls


def run(video, call):
    return asyncio.run(safety_of_driving_video(video, call, ValidationLimits()))


def test_every_sampled_frame_is_checked_with_its_face(video):
    call, calls = caller(lambda brightness: "unavailable")
    report = run(video, call)
    assert report["frames"] == 4 and report["status"] == "unavailable"
    assert report["minor"]["status"] == "unavailable" and report["nsfw"]["status"] == "pass"
    assert report["public_figure"]["status"] == "pass"
    safety_calls = [inputs for name, inputs in calls if name == "content_safety"]
    assert len(safety_calls) == 4 and all(spec.EMBEDDING in inputs for inputs in safety_calls)


def test_one_failing_frame_stops_the_job(video):
    call, _ = caller(lambda brightness: "fail" if brightness > 100 else "pass")
    with pytest.raises(InputError) as error:
        run(video, call)
    assert error.value.code == "content_policy" and "driving video" in str(error.value)


def test_without_faces_the_face_checks_do_not_apply_and_without_weights_all_are_unavailable(video):
    call, _ = caller(lambda brightness: "pass", faces=False)
    report = run(video, call)
    assert report["minor"]["status"] == "not_applicable" and report["status"] == "pass"
    call, _ = caller(lambda brightness: "pass", unavailable=True)
    report = run(video, call)
    assert report["status"] == "unavailable" and report["nsfw"]["status"] == "unavailable"
