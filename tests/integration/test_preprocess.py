"""The pre-processing job through a real tritonserver, over gRPC and HTTP."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from audio_files import wav_bytes
from PIL import Image

from client.triton_client import RequestRejected

pytestmark = pytest.mark.integration


def test_sample_photo_has_exactly_one_frontal_face(client, samples):
    report = client.preprocess((samples / "astronaut.png").read_bytes(), (samples / "speech.wav").read_bytes())
    assert report["verdict"] == "accepted"
    assert len(report["faces"]) == 1
    x1, y1, x2, y2 = report["faces"][0]["box"]
    # The astronaut's face sits in the upper middle of the 512x512 photo.
    assert 150 < (x1 + x2) / 2 < 300 and 50 < (y1 + y2) / 2 < 200
    assert abs(report["head_pose"]["yaw"]) < 25
    assert len(report["landmarks"]) >= 68
    assert report["embedding"]["norm"] == pytest.approx(1.0, abs=1e-3)
    assert report["audio"]["duration_s"] > 1.0
    assert report["audio"]["mel_shape"][0] == 80
    for model in ("face_detector", "face_landmarks", "face_embedder"):
        assert report["models"][model]["source"] in ("shipped", "official")
        assert report["models"][model]["sha256"]
    # No wav2vec2 weights ship in any package: the audio model says so instead of pretending.
    assert report["models"]["audio_features"]["source"] == "unavailable"
    assert report["audio"]["wav2vec2"].startswith("unavailable") and report["audio"]["wav2vec2_shape"] == [0, 0, 0]


@pytest.mark.parametrize(
    "photo, code, guidance",
    [
        ("profile.png", "face_in_profile", "front-facing"),
        ("no_face.png", "no_face", "face"),
    ],
)
def test_unusable_photos_are_rejected_with_guidance(client, samples, photo, code, guidance):
    with pytest.raises(RequestRejected) as caught:
        client.preprocess((samples / photo).read_bytes(), (samples / "speech.wav").read_bytes())
    assert caught.value.code == code
    assert guidance in str(caught.value)
    assert "Traceback" not in str(caught.value)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()



def test_corrupt_photo_and_silent_audio_are_explained(grpc_client, samples):
    speech = (samples / "speech.wav").read_bytes()
    with pytest.raises(RequestRejected) as caught:
        grpc_client.preprocess(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, speech)
    assert "photo" in str(caught.value) and caught.value.code
    photo = (samples / "astronaut.png").read_bytes()
    with pytest.raises(RequestRejected) as caught:
        grpc_client.preprocess(photo, wav_bytes(np.zeros(16000 * 3, np.float32)))
    assert "silent" in str(caught.value).lower()
    with pytest.raises(RequestRejected) as caught:
        grpc_client.preprocess(photo, b"this is not audio at all")
    assert "audio" in str(caught.value).lower()
    # The server is still healthy after the bad requests.
    assert grpc_client.preprocess(photo, speech)["verdict"] == "accepted"


def _still_video(photo: Path, tmp_path: Path) -> bytes:
    """A 2 s MP4 of a still photo (enough for a face check on sampled frames)."""
    import subprocess

    import imageio_ffmpeg

    out = tmp_path / f"{photo.stem}.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-loop", "1", "-i", str(photo), "-t", "2", "-r", "10",
         "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(out)],
        check=True, timeout=60,
    )
    return out.read_bytes()


def test_driving_video_is_checked_for_a_face(grpc_client, samples, tmp_path):
    photo = (samples / "astronaut.png").read_bytes()
    report = grpc_client.preprocess(photo, driving_video=_still_video(samples / "astronaut.png", tmp_path))
    video = report["driving_video"]
    assert video["frame_count"] == 20 and video["frames_with_face"] == video["sampled_frames"] > 1
    assert "audio" not in report
    with pytest.raises(RequestRejected) as caught:
        grpc_client.preprocess(photo, driving_video=_still_video(samples / "no_face.png", tmp_path))
    assert caught.value.code == "driving_video_no_face" and "face is visible" in str(caught.value)
    with pytest.raises(RequestRejected) as caught:
        grpc_client.preprocess(photo, driving_video=b"definitely not a video")
    assert "driving video" in str(caught.value)
    with pytest.raises(RequestRejected) as caught:
        grpc_client.preprocess(photo)
    assert caught.value.code == "driver_missing"
