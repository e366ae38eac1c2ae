"""Keep-alives through a real tritonserver whose streaming models send one every 0.1 s (`keepalive_s`).

talking_head keeps its client's stream alive while it works, and takes video_generator's keep-alives on its BLS
stream in stride: with Wan on a GPU a chunk takes longer than the 5 s interval, so that path is the production one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from client.server import PROJECT_ROOT, ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient

pytestmark = pytest.mark.integration

KEEPALIVE_S = 0.1
DEFAULT = '{ key: "keepalive_s" value: { string_value: "5.0" } }'
PARAMETERS = {"fps": 10, "seed": 5}


def _copy_with_keepalive(source: Path, target: Path, model: str) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / model / "config.pbtxt"
    text = config.read_text()
    assert DEFAULT in text, f"{model}'s config no longer sets keepalive_s as this test expects"
    config.write_text(text.replace(DEFAULT, DEFAULT.replace("5.0", str(KEEPALIVE_S))))


@pytest.fixture(scope="module")
def fast_keepalive_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("keepalive-repositories")
    repositories = (root / "model_repository", root / "ensembles")
    _copy_with_keepalive(PROJECT_ROOT / "model_repository", repositories[0], "video_generator")
    _copy_with_keepalive(PROJECT_ROOT / "ensembles", repositories[1], "talking_head")
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            repositories=repositories, weights=tmp_path_factory.mktemp("no-weights"))
    server = TritonServer(options, log_path=root / "tritonserver.log")
    server.start()
    try:
        yield options
    finally:
        server.stop()


def _run(url: str, photo: bytes, speech: bytes, idle_timeout_s: float) -> tuple[list, list[float], float]:
    keepalives: list[float] = []
    chunks, first_chunk_s = [], 0.0
    started = time.monotonic()
    with TalkingHeadClient(Endpoint(url, "grpc")) as client:
        for chunk in client.generate(photo, speech, parameters=PARAMETERS, idle_timeout_s=idle_timeout_s,
                                     on_keepalive=lambda: keepalives.append(time.monotonic())):
            first_chunk_s = first_chunk_s or time.monotonic() - started
            chunks.append(chunk)
    return chunks, keepalives, first_chunk_s


def test_keepalives_reach_the_client_and_pass_through_bls_unchanged(fast_keepalive_server, triton_server, samples):
    photo, speech = (samples / "astronaut.png").read_bytes(), (samples / "speech.wav").read_bytes()
    idle = 10 * KEEPALIVE_S
    chunks, keepalives, first_chunk_s = _run(fast_keepalive_server.grpc_url, photo, speech, idle)
    *video, last = chunks
    assert last.qa_report is not None and video, "the job did not finish"
    # The job was silent for longer than the client's idle timeout, and the keep-alives carried it through.
    assert first_chunk_s > idle, f"the first chunk came after {first_chunk_s:.1f} s: nothing to keep alive"
    assert len(keepalives) >= first_chunk_s / (1.25 * KEEPALIVE_S) / 2, (len(keepalives), first_chunk_s)
    # video_generator was silent for several of its intervals on talking_head's BLS stream, so it sent keep-alives
    # there too, and talking_head read past them.
    longest_render_s = max(chunk.info["render_ms"] for chunk in video) / 1000
    assert longest_render_s > 3 * KEEPALIVE_S, longest_render_s
    # Keep-alives change nothing in the video: the same job on the session server (5 s interval) makes the same frames.
    reference, _, _ = _run(triton_server.grpc_url, photo, speech, idle_timeout_s=60.0)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in video]),
                                  np.concatenate([c.frames for c in reference[:-1]]))
