"""Live streams (python_backends/generation/live_streams.py) over a fake engine stream: segments cut from one
stream, held, continued, let go. The tiny LiveAvatar engine's served frames are in test_wan_liveavatar_engine.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from python_backends.contract import parse_generation_params
from python_backends.errors import InputError
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.live_streams import LiveStream, LiveStreams, fingerprint
from python_backends.generation.wan.common.streaming import WanFrameChunk

TOTAL, CHUNK = 40, 12


class FakeEngineStream:
    """Chunks of CHUNK frames whose values are their frame numbers; records what it made and whether it closed."""

    def __init__(self, start: int = 0, total: int = TOTAL) -> None:
        self.start, self.total, self.made, self.closed = start, total, 0, False
        self.chunks = self._chunks()

    def _chunks(self):
        try:
            for first in range(self.start, self.total, CHUNK):
                frames = np.arange(first, min(first + CHUNK, self.total), dtype=np.uint8)[:, None, None, None]
                self.made += len(frames)
                yield WanFrameChunk(first, np.broadcast_to(frames, (len(frames), 2, 2, 3)), 16.0, self.total,
                                    timing={"denoise_s": 1.0})
        finally:
            self.closed = True


def stream(start: int = 0, key: str = "job") -> tuple[LiveStream, FakeEngineStream]:
    engine = FakeEngineStream(start)
    return LiveStream(key, engine.chunks, start, seed=5, started_at=start), engine


def frames_of(chunks) -> list[int]:
    return [int(v) for c in chunks for v in c.frames[:, 0, 0, 0]]


def test_segments_cut_from_one_stream_are_its_frames_in_order_timing_counted_once() -> None:
    live, engine = stream()
    first = list(live.until(16))
    assert frames_of(first) == list(range(16)) and [c.start_frame for c in first] == [0, 12]
    assert live.next_frame == 16 and live.pending.start_frame == 16 and not live.ended
    assert engine.made == 24  # nothing is made past the chunk that holds the segment's end
    rest = list(live.until(None))
    assert frames_of(rest) == list(range(16, TOTAL)) and live.ended
    # the cut chunk's timing went out with its first part: a benchmark summing timings counts the block once
    assert [c.timing for c in rest[:2]] == [{}, {"denoise_s": 1.0}]


def test_a_segment_that_reaches_the_end_ends_the_stream() -> None:
    live, engine = stream()
    assert frames_of(live.until(TOTAL)) == list(range(TOTAL)) and live.ended and engine.closed
    streams = LiveStreams(capacity=1, idle_s=60)
    assert not streams.keep("a", live) and len(streams) == 0  # nothing to continue


def test_held_streams_are_continued_only_by_their_job_at_their_next_frame() -> None:
    streams = LiveStreams(capacity=2, idle_s=60)
    live, engine = stream()
    list(live.until(16))
    assert streams.keep("job:0", live)
    assert streams.take("job:0", "job", 16) is live and len(streams) == 0  # taken out
    assert streams.keep("job:0", live)
    assert streams.take("job:1", "job", 16) is None and len(streams) == 1  # no such token
    assert streams.take("job:0", "other job", 16) is None and engine.closed  # another job's inputs: let go
    live, engine = stream()
    list(live.until(16))
    streams.keep("job:0", live)
    assert streams.take("job:0", "job", 12) is None and engine.closed  # not where the request starts


def test_capacity_idle_time_and_a_new_stream_let_held_streams_go() -> None:
    now = [0.0]
    streams = LiveStreams(capacity=2, idle_s=10, clock=lambda: now[0])
    engines = []
    for n in range(3):
        live, engine = stream()
        list(live.until(4))
        engines.append(engine)
        now[0] += 1
        streams.keep(f"t{n}", live)
    assert [e.closed for e in engines] == [True, False, False] and len(streams) == 2  # the oldest went
    now[0] += 9.5
    assert streams.sweep() == 1 and [e.closed for e in engines] == [True, True, False]
    streams.make_room()
    assert all(e.closed for e in engines) and len(streams) == 0
    assert not LiveStreams(capacity=0, idle_s=10).keep("t", stream()[0])  # holding off


def test_the_sweeper_lets_an_idle_stream_go_on_its_own() -> None:
    streams = LiveStreams(capacity=1, idle_s=0.2)
    live, engine = stream()
    list(live.until(4))
    streams.keep("t", live)
    import time

    deadline = time.monotonic() + 5
    while not engine.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    streams.close()
    assert engine.closed and len(streams) == 0


def test_the_fingerprint_is_the_job_not_where_the_request_is_in_it() -> None:
    photo = np.zeros((8, 8, 3), np.uint8)
    job = GenerationJob(photo, GenerationParams(seed=1, start_frame=0, frame_count=90, stream="a"),
                        waveform=np.ones(160, np.float32))
    moved = replace(job, params=replace(job.params, seed=9, start_frame=90, frame_count=0, stream="b",
                                        stream_after="a"), motion_frames=np.ones((4, 8, 8, 3), np.uint8))
    assert fingerprint(job, "liveavatar-14B") == fingerprint(moved, "liveavatar-14B")
    assert fingerprint(job, "liveavatar-14B") != fingerprint(job, "s2v-14B")
    other_audio = replace(job, waveform=np.zeros(160, np.float32))
    other_prompt = replace(job, params=replace(job.params, prompt="smile"))
    assert len({fingerprint(j, "liveavatar-14B") for j in (job, other_audio, other_prompt)}) == 3


@pytest.mark.parametrize("token", ["x" * 97, "job/0", "a b", "ü"])
def test_bad_stream_tokens_are_refused_by_name(token: str) -> None:
    with pytest.raises(InputError, match="stream tokens"):
        parse_generation_params({"stream": token})
    with pytest.raises(InputError, match="stream tokens"):
        parse_generation_params({"stream_after": token})
