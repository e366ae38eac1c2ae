"""Keep-alives for streamed (decoupled) requests.

A decoupled model sends an empty response (no outputs) on any request that has been silent for `interval_s`, from
the moment the model accepts the request (still queued behind others, or running) until its final response.

Why: a talking_head job is silent for as long as one segment takes to generate and judge (minutes on a slow
device), and Triton 2.51 never answers a streamed request whose python-backend stub died (client/stub_watchdog.py).
Without keep-alives a client can only tell the two apart with a job-length timeout; with them, a few missed
intervals mean the process serving the job is gone (TalkingHeadClient's `idle_timeout_s`). Empty responses carry
no outputs, so callers that read only chunks skip them (triton_io.stream_model does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# send(response, final): one response of a request, the last one when `final` (python backend's response sender).
Send = Callable[[Any, bool], None]


class ResponseStream:
    """One request's responses, sent from its worker thread and the keep-alive thread without interleaving, and
    never anything after the final one."""

    def __init__(self, send: Send, clock: Callable[[], float] = time.monotonic) -> None:
        self._send, self._clock = send, clock
        self._lock = threading.Lock()
        self.last_sent = clock()
        self.closed = False

    def send(self, response: Any = None, final: bool = False) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError("the request's final response was already sent")
            self.closed = final
            self._send(response, final)
            self.last_sent = self._clock()

    def keep_alive(self, interval_s: float, empty: Callable[[], Any]) -> bool:
        """Send an empty response if nothing was sent for `interval_s`; whether one was sent."""
        with self._lock:
            if self.closed or self._clock() - self.last_sent < interval_s:
                return False
            self._send(empty(), False)
            self.last_sent = self._clock()
            return True


class KeepAlive:
    """Sends keep-alives on every open ResponseStream of one model, from one thread."""

    def __init__(self, interval_s: float, empty: Callable[[], Any], clock: Callable[[], float] = time.monotonic):
        if interval_s <= 0:
            raise ValueError("the keep-alive interval must be positive")
        self.interval_s, self._empty, self._clock = interval_s, empty, clock
        self._streams: set[ResponseStream] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self, send: Send) -> ResponseStream:
        stream = ResponseStream(send, self._clock)
        with self._lock:
            self._streams.add(stream)
        return stream

    def tick(self) -> int:
        """Keep the silent streams alive and forget the closed ones; how many keep-alives were sent."""
        with self._lock:
            self._streams = {s for s in self._streams if not s.closed}
            streams = list(self._streams)
        sent = 0
        for stream in streams:
            try:
                sent += stream.keep_alive(self.interval_s, self._empty)
            except Exception as exc:  # the client went away: its worker finds out on its own next send
                logger.info("keep-alive not sent, the stream is dropped from keep-alives: %s", exc)
                with self._lock:
                    self._streams.discard(stream)
        return sent

    def start(self, name: str = "keep-alive") -> KeepAlive:
        # Checking at a quarter of the interval keeps every silence under 1.25 intervals.
        def run() -> None:
            while not self._stop.wait(self.interval_s / 4):
                self.tick()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s)
