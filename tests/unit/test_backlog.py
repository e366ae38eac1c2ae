"""The backlog counts of the decoupled models (python_backends/backlog.py) and their Triton gauges, through
triton_io.StreamingModel on the fake pb_utils: they rise with the work held and fall back to zero however a job
ends (done, failed, cancelled while queued or running, its client gone)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from python_backends.backlog import (
    OLDEST_QUEUED_AGE,
    QUEUED_JOBS,
    QUEUED_SEGMENTS,
    RUNNING_SEGMENTS,
    Backlog,
    BacklogSnapshot,
    segments_in,
)
from python_backends.quality.segment_job import segment_length
from python_backends.spec import ModelSpec, TensorSpec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_queued_jobs_count_one_segment_until_they_plan():
    clock = Clock()
    backlog = Backlog(clock)
    first, second = backlog.accept(), backlog.accept()
    clock.now += 4.0
    third = backlog.accept()
    clock.now += 1.0
    assert backlog.snapshot() == BacklogSnapshot(queued_jobs=3, queued_segments=3, running_segments=0,
                                                 oldest_queued_age_s=5.0)
    first.start()
    first.plan(4)
    first.begin(0)
    assert backlog.snapshot() == BacklogSnapshot(2, 3 + 2, 1, 5.0)  # first: 3 segments left, 1 running
    first.end()
    first.begin(1)
    assert backlog.snapshot() == BacklogSnapshot(2, 2 + 2, 1, 5.0)
    first.plan(2)  # the generator reported a shorter clip: nothing is left after segment 1
    assert backlog.snapshot() == BacklogSnapshot(2, 0 + 2, 1, 5.0)
    second.start()
    assert backlog.snapshot().oldest_queued_age_s == 1.0  # only the third waits now
    for job in (first, second, third):
        job.close()
    assert backlog.snapshot() == BacklogSnapshot()


def test_close_takes_out_everything_a_failed_job_held_and_is_final():
    changes = []
    backlog = Backlog(on_change=lambda: changes.append(backlog.snapshot()))
    job = backlog.accept()
    job.start()
    job.plan(5)
    job.begin(2)  # failed mid-segment: no end()
    assert backlog.snapshot().running_segments == 1
    job.close()
    job.close()
    job.begin(3)  # a late report from a worker that has not noticed yet changes nothing
    assert backlog.snapshot() == BacklogSnapshot()
    assert changes[-1] == BacklogSnapshot() and len(changes) >= 5  # every change was announced


def test_a_cancelled_queued_job_is_not_backlog_but_a_running_one_is():
    cancelled = {"queued": False, "running": False}
    backlog = Backlog()
    queued = backlog.accept(lambda: cancelled["queued"])
    running = backlog.accept(lambda: cancelled["running"])
    running.start()
    running.begin(0)

    def gone() -> bool:
        raise RuntimeError("request released")

    backlog.accept(gone)  # a request Triton no longer knows
    cancelled.update(queued=True, running=True)
    assert backlog.snapshot() == BacklogSnapshot(queued_jobs=0, queued_segments=0, running_segments=1)
    queued.close()
    running.close()


def test_segments_in_matches_the_pipeline_segmentation():
    frames, min_tail = 125, 31  # 5 s at 25 fps; a tail under one lip-sync window joins the segment before
    def count(total):
        return segments_in(total, lambda at: segment_length(at, total, frames, min_tail))
    assert [count(n) for n in (1, 125, 126, 155, 156, 157, 250, 1000)] == [1, 1, 1, 1, 2, 2, 2, 8]
    assert count(0) == 0


# ---------------------------------------------------------------- through StreamingModel on the fake pb_utils


@dataclass
class Settings:
    keepalive_s: float = 5.0


class FakeRequest:
    def __init__(self, parameters: dict, requested: tuple[str, ...] = ("x",)) -> None:
        self._parameters, self.cancelled, self.responses = json.dumps(parameters), False, []
        self.requested = requested  # Triton fills in every output when a client names none
        self.gone = False  # the client disconnected: sending fails
        self.done = threading.Event()

    def get_response_sender(self):
        request = self

        class Sender:
            def send(self, response=None, flags=0):
                if request.gone:
                    raise RuntimeError("the client went away")
                request.responses.append(response)
                if flags:
                    request.done.set()

        return Sender()

    def parameters(self) -> str:
        return self._parameters

    def requested_output_names(self) -> set[str]:
        return set(self.requested)

    def is_cancelled(self) -> bool:
        return self.cancelled


@pytest.fixture
def model_type(fake_pb_utils):
    """A decoupled model whose requests wait on an event per request, then yield `chunks` chunks or raise."""
    gates: dict[str, threading.Event] = {}

    class Model(fake_pb_utils.StreamingModel):
        spec = ModelSpec("fake_stream", (), (TensorSpec("x", "FP32", (1,)),), 0, decoupled=True)
        settings_type = Settings
        max_workers = 1

        def stream(self, inputs, parameters, is_cancelled, backlog):
            gates.setdefault(parameters["id"], threading.Event()).wait(10)
            if parameters.get("fail"):
                raise RuntimeError("the engine crashed")
            for _ in range(parameters.get("chunks", 1)):
                yield {"x": np.zeros(1, np.float32)}

    return Model, gates


def _gauges(pb_utils) -> dict[str, float]:
    return {name: value for (name, labels), value in pb_utils.metrics.items()
            if dict(labels) == {"model": "fake_stream", "instance": "fake_stream_0"}}


def _wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_gauges_rise_and_fall_back_to_zero_however_jobs_end(fake_pb_utils, model_type):
    import triton_python_backend_utils as pb_utils

    Model, gates = model_type
    model = Model()
    model.initialize({"model_config": json.dumps({"model_transaction_policy": {"decoupled": True}}),
                      "model_instance_name": "fake_stream_0"})
    try:
        assert _gauges(pb_utils) == {QUEUED_JOBS: 0, QUEUED_SEGMENTS: 0, RUNNING_SEGMENTS: 0, OLDEST_QUEUED_AGE: 0}
        ids = ["ok", "fails", "cancelled_queued", "client_gone"]
        requests = {name: FakeRequest({"id": name, "fail": name == "fails", "chunks": 3}) for name in ids}
        for name in ids:
            gates[name] = threading.Event()
        model.execute(list(requests.values()))
        # One worker: "ok" runs (one running segment), three wait.
        _wait_for(lambda: _gauges(pb_utils)[RUNNING_SEGMENTS] == 1)
        time.sleep(1.2)  # the periodic refresh moves the age on while nothing else changes
        gauges = _gauges(pb_utils)
        assert (gauges[QUEUED_JOBS], gauges[QUEUED_SEGMENTS]) == (3, 3)
        assert gauges[OLDEST_QUEUED_AGE] > 0.5
        requests["cancelled_queued"].cancelled = True  # the client cancels while the job waits
        _wait_for(lambda: _gauges(pb_utils)[QUEUED_JOBS] == 2)
        requests["client_gone"].gone = True
        for name in ids:
            gates[name].set()
        _wait_for(lambda: not model._in_flight)
        assert _gauges(pb_utils) == {QUEUED_JOBS: 0, QUEUED_SEGMENTS: 0, RUNNING_SEGMENTS: 0, OLDEST_QUEUED_AGE: 0}
        # How each ended, as the client saw it.
        assert [r.output_tensors[0].name() for r in requests["ok"].responses[:3]] == ["x"] * 3
        assert "internal error" in requests["fails"].responses[-1].error.message()
        assert requests["cancelled_queued"].responses[-1].error.code() == pb_utils.TritonError.CANCELLED
        assert requests["client_gone"].responses == []
    finally:
        model.finalize()
    assert model._gauges._metrics == {}  # the metrics are released before their families on unload
