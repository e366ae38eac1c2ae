"""Wan2.2-S2V-14B and Animate-14B through the real server, from release folders in the official layout.

The folders hold tiny random weights (no official weights can be downloaded here): what is tested is the
whole path from checkpoint files to streamed chunks through tritonserver, not image quality.
"""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from wan_fixtures.tiny_animate import make_tiny_animate_checkpoint
from wan_fixtures.tiny_release import make_tiny_liveavatar_lora, make_tiny_s2v_release

from client.server import ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient
from python_backends import spec

pytestmark = pytest.mark.integration

TINY = {"width": 64, "height": 64, "steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def wan_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-weights")
    make_tiny_s2v_release(root / "video_generator" / "Wan2.2-S2V-14B")
    make_tiny_animate_checkpoint(root / "video_generator" / "Wan2.2-Animate-14B", with_aux=True)
    make_tiny_liveavatar_lora(root / "video_generator" / "LiveAvatar")
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), weights=root)
    with TritonServer(options, log_path=tmp_path_factory.mktemp("wan-log") / "tritonserver.log"):
        with TalkingHeadClient(Endpoint(options.grpc_url)) as client:
            yield client


def test_s2v_streams_chunks_from_the_release_folder(wan_server, samples):
    photo, speech = (samples / "astronaut.png").read_bytes(), (samples / "speech.wav").read_bytes()
    *chunks, last = wan_server.generate(photo, speech, parameters={**TINY, "engine": "s2v-14B", "fps": 16,
                                                                   "max_duration_s": 2.0})
    # Random tiny weights draw no face: QA re-rolls, then keeps the best attempt and asks for review.
    report = last.qa_report
    assert report["verdict"] == "needs_review" and report["gates"]["face_presence"]["status"] == "fail"
    assert report["rerolls"] == 2 and report["segments"][0]["attempt"] == 0  # all failed alike: the first is kept
    assert len(chunks) > 1
    assert {c.info["engine_id"] for c in chunks} == {"s2v-14B"} and "generative" in chunks[0].info["label"]
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape == (32, 64, 64, 3) and frames.dtype == np.uint8
    assert [c.start_frame for c in chunks] == list(np.cumsum([0] + [len(c.frames) for c in chunks[:-1]]))
    again = np.concatenate([c.frames for c in wan_server.generate(
        photo, speech, parameters={**TINY, "engine": "s2v-14B", "fps": 16, "max_duration_s": 2.0})])
    assert np.array_equal(frames, again)  # same seed, same video


def test_animate_streams_chunks_from_a_driving_video(wan_server, samples, tmp_path):
    driving = tmp_path / "driving.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-loop", "1", "-i",
                    str(samples / "astronaut.png"), "-t", "1", "-r", "16", "-pix_fmt", "yuv420p", str(driving)],
                   check=True, timeout=60)
    *chunks, last = wan_server.generate((samples / "astronaut.png").read_bytes(), driving_video=driving.read_bytes(),
                                        parameters={**TINY, "engine": "animate-14B", "fps": 16, "chunk_frames": 8})
    assert last.qa_report is not None and last.qa_report["gates"]["lipsync"]["status"] == "unavailable"
    # The driving video went through the photo's content checks on sampled frames (its face: the astronaut).
    driving_safety = last.qa_report["post_processing"]["driving_video_safety"]
    assert driving_safety["frames"] == 4 and driving_safety["nsfw"]["status"] == "pass"
    assert driving_safety["minor"]["status"] == "unavailable"  # no age model ships: never a pass
    assert last.qa_report["post_processing"]["photo_safety"]["minor"]["status"] == "unavailable"
    assert len(chunks) > 1 and {c.info["engine_id"] for c in chunks} == {"animate-14B"}
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape[1:] == (64, 64, 3) and len(frames) == 16


def test_liveavatar_segments_continue_one_stream_across_requests(wan_server):
    """video_generator's live streams through the server: the second segment's request goes on with the stream the
    first one left held (resumed on another request's thread): together, bitwise the frames of one request for the
    whole video."""
    yy, xx = np.mgrid[0:96, 0:80]
    photo = (np.stack([yy * 2, xx * 3, yy + xx], axis=-1) % 256).astype(np.uint8)
    t = np.arange(16000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 3 * t) * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    inputs = {spec.IMAGE: photo, spec.WAVEFORM: speech}
    base = {"engine": "liveavatar-14B", "width": 64, "height": 64, "fps": 16, "seed": 5}

    def run(**params):
        chunks = list(wan_server.stream(spec.VIDEO_GENERATOR, inputs, {**base, **params}))
        return np.concatenate([c.frames for c in chunks]), [c.info for c in chunks]

    whole, _ = run()
    first, first_info = run(frame_count=10, stream="job:0")
    rest, rest_info = run(start_frame=10, stream="job:1", stream_after="job:0")
    assert len(whole) == 16 and np.array_equal(np.concatenate([first, rest]), whole)
    assert {i["stream"] for i in first_info} == {"started"} and {i["stream"] for i in rest_info} == {"continued"}
    _, again = run(start_frame=10, stream="job:2", stream_after="job:0")  # taken once: a second ask starts anew
    assert again[0]["stream"] == "started"
