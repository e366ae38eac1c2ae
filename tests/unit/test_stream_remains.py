"""A finished BLS stream's iterator and responses stay alive in Python until a round trip through the stub's
message thread proves their clean-up is done (python_backends/stream_remains.py); StreamingModel sends only the
outputs a request asked for. The crash these prevent is shown through a real tritonserver in
tests/integration/test_bls_stream_lifetime.py."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import pytest

from python_backends.errors import TalkingHeadError
from python_backends.spec import ModelSpec, TensorSpec
from python_backends.stream_remains import StreamRemains


class Remains:
    """Something a stream leaves (weak-referenceable, so a test can see when it is freed)."""


class Request:
    """`is_cancelled` as the stub answers it: a round trip each time until found cancelled, then from a cache."""

    def __init__(self, cancelled: bool = False, on_ask=None) -> None:
        self.cancelled, self.round_trips, self._on_ask = cancelled, 0, on_ask

    def is_cancelled(self) -> bool:
        if not self.cancelled:
            self.round_trips += 1
            if self._on_ask is not None:
                self._on_ask(self.round_trips)
        return self.cancelled


def _park(remains: StreamRemains) -> weakref.ref:
    item = Remains()
    remains.park([item])
    return weakref.ref(item)


def test_settle_frees_what_was_parked_after_a_round_trip():
    remains = StreamRemains()
    first, second = _park(remains), _park(remains)
    request = Request()
    assert remains.settle(request.is_cancelled) == 2
    gc.collect()
    assert first() is None and second() is None and len(remains) == 0
    assert request.round_trips == 2  # the second question is the one asked after every parked stream ended


def test_a_cancelled_request_settles_nothing_and_the_next_open_one_frees_it():
    remains = StreamRemains()
    parked = _park(remains)
    assert remains.settle(Request(cancelled=True).is_cancelled) == 0
    gc.collect()
    assert parked() is not None and len(remains) == 1
    assert remains.settle(Request().is_cancelled) == 1
    gc.collect()
    assert parked() is None


def test_remains_parked_while_a_settle_asks_wait_for_a_later_one():
    remains = StreamRemains()
    before = _park(remains)
    late: list[weakref.ref] = []
    request = Request(on_ask=lambda n: late.append(_park(remains)) if n == 1 else None)
    assert remains.settle(request.is_cancelled) == 1
    gc.collect()
    assert before() is None and late[0]() is not None  # its clean-up may be queued behind the answer
    assert remains.settle(Request().is_cancelled) == 1


class Response:
    def __init__(self, outputs: dict[str, np.ndarray], pb_utils) -> None:
        self._tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]

    def has_error(self) -> bool:
        return False

    def output_tensors(self):
        return self._tensors


class BlsRequest:
    """A decoupled BLS request whose iterator is weak-referenceable."""

    def __init__(self, responses: list) -> None:
        self.responses = responses
        self.iterator: weakref.ref | None = None

    def exec(self, decoupled: bool):
        assert decoupled
        outer = self

        class Iterator:
            def __iter__(self):
                return iter(outer.responses)

        iterator = Iterator()
        self.iterator = weakref.ref(iterator)
        return iterator


def test_guarded_responses_keeps_the_stream_until_its_caller_settles_it(fake_pb_utils):
    from python_backends.stream_remains import STREAM_REMAINS

    responses = [Response({"x": np.full(3, i, np.float32)}, fake_pb_utils.pb_utils) for i in range(3)]
    watched = [weakref.ref(r) for r in responses]
    request, caller = BlsRequest(responses), Request()
    del responses
    stream = fake_pb_utils.guarded_responses(request, "not_a_served_model", caller.is_cancelled)
    seen = [next(stream) for _ in range(3)]
    del seen
    request.responses = []
    gc.collect()
    # Read but not yet settled: the stream's pump still holds its iterator and every response.
    assert request.iterator() is not None and all(r() is not None for r in watched)
    assert caller.round_trips == 0
    assert list(stream) == []  # the end of the stream settles it
    gc.collect()
    assert caller.round_trips == 2 and request.iterator() is None and all(r() is None for r in watched)
    assert len(STREAM_REMAINS) == 0



class SilentBls:
    """A decoupled BLS request whose stream sends `keepalives` empty responses `every` s apart, then falls silent
    without a final response (what talking_head saw of video_generator's lost error response), unless `last` is
    given: then that response ends it."""

    def __init__(self, pb_utils, keepalives: int, every: float, last: dict[str, np.ndarray] | None = None) -> None:
        self.pb_utils, self.keepalives, self.every, self.last = pb_utils, keepalives, every, last
        self.released = threading.Event()

    def exec(self, decoupled: bool):
        assert decoupled
        for _ in range(self.keepalives):
            self.released.wait(self.every)
            yield Response({}, self.pb_utils)
        if self.last is None:
            self.released.wait()  # silent until the test ends
            return
        yield Response(self.last, self.pb_utils)


def test_a_stream_silent_past_the_limit_fails_the_caller_with_the_model_named(fake_pb_utils):
    bls = SilentBls(fake_pb_utils.pb_utils, keepalives=2, every=0.05)
    started = time.monotonic()
    try:
        with pytest.raises(TalkingHeadError, match="video_generator sent nothing for 0.3 s, not even a keep-alive"):
            list(fake_pb_utils.guarded_responses(bls, "video_generator", Request().is_cancelled, poll_s=0.02,
                                                 silence_s=0.3))
    finally:
        bls.released.set()
    # the limit counts from the last keep-alive (0.1 s in), not from the request's start
    assert 0.4 <= time.monotonic() - started < 3.0


def test_keep_alives_hold_a_stream_open_past_the_silence_limit(fake_pb_utils):
    bls = SilentBls(fake_pb_utils.pb_utils, keepalives=8, every=0.1, last={"x": np.ones(2, np.float32)})
    responses = list(fake_pb_utils.guarded_responses(bls, "video_generator", Request().is_cancelled, poll_s=0.02,
                                                     silence_s=0.3))
    assert len(responses) == 9 and responses[-1].output_tensors()[0].as_numpy().tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- outputs a request asked for


@dataclass
class Settings:
    keepalive_s: float = 5.0


class StreamRequest:
    def __init__(self, requested: set[str]) -> None:
        self.requested, self.responses, self.done = requested, [], threading.Event()

    def get_response_sender(self):
        request = self

        class Sender:
            def send(self, response=None, flags=0):
                request.responses.append(response)
                if flags:
                    request.done.set()

        return Sender()

    def parameters(self) -> str:
        return "{}"

    def is_cancelled(self) -> bool:
        return False

    def requested_output_names(self) -> set[str]:
        return self.requested


def test_a_streaming_model_sends_only_the_outputs_asked_for(fake_pb_utils):
    class Model(fake_pb_utils.StreamingModel):
        spec = ModelSpec("two_outputs", (), (TensorSpec("x", "FP32", (1,)), TensorSpec("y", "FP32", (1,))), 0,
                         decoupled=True)
        settings_type = Settings

        def stream(self, inputs, parameters, is_cancelled, backlog):
            yield {"x": np.zeros(1, np.float32), "y": np.ones(1, np.float32)}

    model = Model()
    model.initialize({"model_config": json.dumps({"model_transaction_policy": {"decoupled": True}}),
                      "model_instance_name": "two_outputs_0"})
    try:
        only_y, both = StreamRequest({"y"}), StreamRequest({"x", "y"})
        model.execute([only_y, both])
        assert only_y.done.wait(10) and both.done.wait(10)
    finally:
        model.finalize()
    assert [t.name() for t in only_y.responses[0].output_tensors] == ["y"]
    assert [t.name() for t in both.responses[0].output_tensors] == ["x", "y"]
