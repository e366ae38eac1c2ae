"""Keep-alives through a real tritonserver whose streaming models send one every 0.1 s (`keepalive_s`), and whose
video_generator takes at least 1.2 s per chunk (tests/keepalive_server.py): silences on any machine.

talking_head keeps its client's stream alive while it works, and takes video_generator's keep-alives on its BLS
stream in stride: with Wan on a GPU a chunk takes longer than the 5 s interval, so that path is the production one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from keepalive_server import FAST_KEEPALIVE_S as KEEPALIVE_S
from keepalive_server import SLOW_CHUNK_S

from client.triton_client import Endpoint, TalkingHeadClient

pytestmark = pytest.mark.integration

PARAMETERS = {"fps": 10, "seed": 5}


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
    # video_generator was silent for at least SLOW_CHUNK_S, many of its intervals, before each chunk on
    # talking_head's BLS stream, so it sent keep-alives there too, and talking_head read past them (the job ended).
    assert first_chunk_s >= SLOW_CHUNK_S > 10 * KEEPALIVE_S, first_chunk_s
    # Keep-alives change nothing in the video: the same job on the session server (5 s interval) makes the same frames.
    reference, _, _ = _run(triton_server.grpc_url, photo, speech, idle_timeout_s=60.0)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in video]),
                                  np.concatenate([c.frames for c in reference[:-1]]))
