"""Live streams: an engine that streams a whole video (LiveAvatar) goes on between a job's segment requests.

Why: the orchestrator asks for a video segment by segment, so that each segment is judged before it goes out. An
engine that starts every segment anew pays the request's start each time (LiveAvatar at 832x480 on the H200:
history encode, decoder priming and DiT prefill, 4.4 s of a 6.3 s first block in perf/results/
served_e2e_h200_gpu2.json) and starts a new causal stream, where the release runs one stream for the whole video.
Here a request may name the token of the attempt whose frames it continues (`stream_after`); when that attempt's
stream is still held and its next frame is this request's first, the request takes its frames from it: the same
frames one request for the whole video makes. Otherwise (a re-roll, a stream let go) the engine starts anew from
the caller's frames, as before. Each request names its own token (`stream`), under which its stream is held after
its last frame.

A held stream keeps its GPU state (KV caches, VAE states: most of a request's peak memory), so at most `capacity`
are held; a request that starts a new stream lets the held ones go first, so memory never exceeds what requests
alone take; one not continued within `idle_s` is let go. A stream is bound to its job's inputs (`fingerprint`):
a request with other inputs never gets another job's frames, even with its token.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from .job import FrameChunk, GenerationJob

# What says where a request is in its job, not what the job is: its parameters, and the caller's frames before it
# (a continued stream has its own).
PLACEMENT = ("seed", "start_frame", "frame_count", "stream", "stream_after", "whole_clips")
PLACEMENT_INPUTS = ("motion_frames",)


def fingerprint(job: GenerationJob, engine: str) -> str:
    """What makes two requests the same job: the engine, every other input and every other parameter."""
    digest = hashlib.blake2b(engine.encode(), digest_size=16)
    for name in sorted(job.__dataclass_fields__):
        value = getattr(job, name)
        if name in PLACEMENT_INPUTS:
            continue
        if name == "params":
            fields = {k: getattr(value, k) for k in sorted(value.__dataclass_fields__) if k not in PLACEMENT}
            digest.update(repr(fields).encode())
        elif isinstance(value, np.ndarray):
            digest.update(f"{name}{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).data)
        elif value is not None:
            digest.update(f"{name}={value!r}".encode())
    return digest.hexdigest()


@dataclass
class LiveStream:
    """One engine stream from `started_at` on, served in segments."""

    key: str  # the job's fingerprint
    chunks: Iterator[FrameChunk]
    next_frame: int  # the first frame not yet served
    seed: int  # of the request that started it: every frame of the stream comes from it
    started_at: int  # the frame it started at
    pending: FrameChunk | None = None  # frames made past the last segment's end
    total_frames: int = 1 << 62  # the video's length as the last chunk said (the last one says it exactly)
    ended: bool = False
    last_used: float = 0.0  # when it was last held (LiveStreams.keep, on its clock)

    def until(self, stop: int | None) -> Iterator[FrameChunk]:
        """The frames from `next_frame` up to `stop` (None: the end), cutting a chunk that runs past it."""
        while stop is None or self.next_frame < stop:
            chunk, self.pending = (self.pending if self.pending is not None else next(self.chunks, None)), None
            if chunk is None:
                self.ended = True
                return
            end, self.total_frames = chunk.start_frame + len(chunk.frames), chunk.total_frames
            if stop is not None and end > stop:  # the rest waits for the next segment; its timing went out already
                cut = stop - chunk.start_frame
                rest = {"timing": {}} if "timing" in chunk.__dataclass_fields__ else {}
                self.pending = replace(chunk, start_frame=stop, frames=chunk.frames[cut:], **rest)
                chunk = replace(chunk, frames=chunk.frames[:cut])
                end = stop
            self.next_frame = end
            yield chunk
        if self.pending is None and self.next_frame >= self.total_frames:  # at the end: let the engine finish
            self.pending = next(self.chunks, None)
            self.ended = self.pending is None

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()  # the engine's stages stop and its GPU state goes


class LiveStreams:
    """The streams held between requests, by the token of the attempt that made their last frames."""

    def __init__(self, capacity: int, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.idle_s, self.clock = capacity, idle_s, clock
        self._held: dict[str, LiveStream] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    def __len__(self) -> int:
        return len(self._held)

    def take(self, token: str, key: str, start_frame: int) -> LiveStream | None:
        """The stream held under `token`, if it is this job's and goes on at `start_frame`; taken out either way."""
        with self._lock:
            stream = self._held.pop(token, None)
        if stream is None:
            return None
        if stream.key == key and stream.next_frame == start_frame:
            return stream
        stream.close()  # another job's inputs, or not where this request starts: never served
        return None

    def make_room(self) -> None:
        """Let every held stream go before a new one starts (its memory is the new one's)."""
        with self._lock:
            dropped, self._held = list(self._held.values()), {}
        for stream in dropped:
            stream.close()

    def keep(self, token: str, stream: LiveStream) -> bool:
        """Hold `stream` under `token` until it is continued, let go or idle too long; False: not held (it ended,
        or holding is off), the caller closes it."""
        if stream.ended or self.capacity <= 0 or not token:
            return False
        stream.last_used = self.clock()
        with self._lock:
            self._held[token] = stream
            dropped = []
            while len(self._held) > self.capacity:  # the oldest first
                dropped.append(self._held.pop(min(self._held, key=lambda t: self._held[t].last_used)))
            self._start_sweeper()
        for old in dropped:
            old.close()
        return True

    def sweep(self) -> int:
        """Let go of the streams idle for more than `idle_s`; how many."""
        now = self.clock()
        with self._lock:
            idle = [t for t, s in self._held.items() if now - s.last_used > self.idle_s]
            dropped = [self._held.pop(t) for t in idle]
        for stream in dropped:
            stream.close()
        return len(dropped)

    def close(self) -> None:
        self._stop.set()
        self.make_room()

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="live-streams-sweeper", daemon=True)
            self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(max(self.idle_s / 4, 0.05)):
            self.sweep()
