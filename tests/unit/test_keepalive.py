"""Keep-alives of streamed requests (python_backends/keepalive.py), on a fake clock."""

from __future__ import annotations

import threading
import time

import pytest

from python_backends.keepalive import KeepAlive

EMPTY = "empty"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _recorder() -> tuple[list, object]:
    sent: list = []
    return sent, lambda response, final: sent.append((response, final))


def test_only_a_silent_stream_gets_a_keepalive():
    clock = Clock()
    keepalive = KeepAlive(5.0, lambda: EMPTY, clock)
    sent, send = _recorder()
    stream = keepalive.open(send)
    clock.now = 4.9
    assert keepalive.tick() == 0
    clock.now = 5.0
    assert keepalive.tick() == 1 and sent == [(EMPTY, False)]
    clock.now = 7.0
    stream.send("chunk")  # a real response resets the silence
    clock.now = 11.9
    assert keepalive.tick() == 0
    clock.now = 12.0
    assert keepalive.tick() == 1
    assert sent == [(EMPTY, False), ("chunk", False), (EMPTY, False)]


def test_nothing_follows_the_final_response():
    clock = Clock()
    keepalive = KeepAlive(5.0, lambda: EMPTY, clock)
    sent, send = _recorder()
    stream = keepalive.open(send)
    stream.send(final=True)
    clock.now = 60.0
    assert keepalive.tick() == 0
    assert sent == [(None, True)]
    with pytest.raises(RuntimeError, match="final response was already sent"):
        stream.send("late")


def test_a_stream_whose_client_left_is_dropped_and_others_go_on():
    clock = Clock()
    keepalive = KeepAlive(5.0, lambda: EMPTY, clock)

    def broken(response, final):
        raise ConnectionError("the client went away")

    keepalive.open(broken)
    sent, send = _recorder()
    keepalive.open(send)
    clock.now = 5.0
    assert keepalive.tick() == 1
    clock.now = 10.0
    assert keepalive.tick() == 1  # the broken stream is not tried again
    assert sent == [(EMPTY, False), (EMPTY, False)]


def test_responses_never_interleave_with_keepalives():
    """Worker and keep-alive thread send on one stream at once: each send completes before the next starts."""
    inside, overlaps = threading.Event(), []

    def send(response, final):
        if inside.is_set():
            overlaps.append(response)
        inside.set()
        time.sleep(0.001)
        inside.clear()

    keepalive = KeepAlive(0.004, lambda: EMPTY).start()
    stream = keepalive.open(send)
    try:
        for index in range(200):
            stream.send(index)
            time.sleep(0.0005)
    finally:
        keepalive.stop()
    assert overlaps == []


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError):
        KeepAlive(0.0, lambda: EMPTY)
