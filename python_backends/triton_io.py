"""The one seam between Triton's python backend and the pure model code.

Everything else in python_backends works on numpy arrays and dataclasses; this module turns Triton
requests into batches, runs one predictor call per batch, splits the results back per request and maps
our exceptions to TritonError codes (the traceback goes to the server log, never to the client).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import triton_python_backend_utils as pb_utils

from .backlog import GAUGES, Backlog, BacklogJob, BacklogSnapshot
from .batching import stack_padded
from .errors import (
    WEIGHTS_UNAVAILABLE,
    ConfigError,
    InputError,
    TalkingHeadError,
    WeightsUnavailable,
    input_error_from_message,
    split_code,
    with_code,
)
from .keepalive import KeepAlive, ResponseStream
from .settings import from_model_config
from .spec import CHUNK_INFO, MODEL_INFO, STREAM_KEEPALIVE_S, STREAM_SILENCE_S, ModelSpec, TensorSpec
from .stream_remains import STREAM_REMAINS
from .weights import WeightsChoice

_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


class Predictor(Protocol):
    weights: WeightsChoice

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Inputs stacked on axis 0 (absent optional inputs are missing keys); one result dict per item."""


def triton_error(exc: BaseException, model: str) -> pb_utils.TritonError:
    if isinstance(exc, InputError):
        return pb_utils.TritonError(with_code(exc), pb_utils.TritonError.INVALID_ARG)
    if isinstance(exc, WeightsUnavailable):
        return unavailable_error(str(exc))
    if isinstance(exc, TalkingHeadError):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.INTERNAL)
    return pb_utils.TritonError(f"internal error in {model}; the server log has the details")


def unavailable_error(message: str) -> pb_utils.TritonError:
    return pb_utils.TritonError(f"{message} [code: {WEIGHTS_UNAVAILABLE}]", pb_utils.TritonError.UNAVAILABLE)


def output_tensor(spec: TensorSpec, value: Any) -> pb_utils.Tensor:
    if spec.dtype == "BYTES":
        return pb_utils.Tensor(spec.name, np.asarray(value, dtype=np.object_))
    array = np.ascontiguousarray(value, dtype=pb_utils.triton_string_to_numpy("TYPE_" + spec.dtype))
    if _NUMPY_2:
        # The stub is built against numpy 1: under numpy 2 pb_utils.Tensor(name, array) reports a size
        # mismatch, and numpy's own dlpack capsule is refused, so hand the buffer over through torch.
        import torch.utils.dlpack

        return pb_utils.Tensor.from_dlpack(spec.name, torch.utils.dlpack.to_dlpack(torch.from_numpy(array)))
    return pb_utils.Tensor(spec.name, array)


def refuse_unlicensed(model: str, settings: Any) -> None:
    """Under the `commercial` setting, refuse (before loading anything) weights whose licence forbids it."""
    from .catalog import licence_refusals

    reasons = licence_refusals(model, settings)
    if reasons:
        raise WeightsUnavailable("; ".join(reasons))


def trace_crashes() -> None:
    """A stub that dies of a fatal signal (a native crash, an abort) writes every thread's Python stack to its
    stderr, which is the server log: the crash then names the code that ran instead of only "stub not healthy".
    The stub's embedded interpreter ignores PYTHONFAULTHANDLER, so every model base turns it on here."""
    import faulthandler

    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)


def device_of(args: dict[str, str]) -> str:
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cpu"


class BatchedModel:
    """Base for batched python-backend models: subclasses set `spec`, `settings_type` and `build`."""

    spec: ModelSpec
    settings_type: type

    def build(self, settings: Any, device: str) -> Predictor:
        raise NotImplementedError

    def initialize(self, args: dict[str, str]) -> None:
        trace_crashes()
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.predictor: Predictor | None = None
        self.unavailable = ""
        try:
            settings = from_model_config(self.settings_type, config)
            refuse_unlicensed(self.spec.name, settings)
            self.predictor = self.build(settings, device_of(args))
        except WeightsUnavailable as exc:
            # Stay loaded and answer UNAVAILABLE with the reason, so the rest of the server works.
            self.unavailable = str(exc)
            self.logger.log_warn(f"{self.spec.name}: {exc}")
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"{self.spec.name}: {exc}") from None
        if self.predictor is not None:
            self.info = json.dumps(self.predictor.weights.as_dict()).encode()
            self.logger.log_info(f"{self.spec.name}: {self.info.decode()}")

    def execute(self, requests: list) -> list:
        if self.predictor is None:
            return [pb_utils.InferenceResponse(error=unavailable_error(self.unavailable)) for _ in requests]
        # Triton itself refuses requests that lack a required input, so reading cannot fail here.
        per_request = [read_inputs(request, self.spec) for request in requests]
        try:
            return self._run(per_request)
        except Exception:
            # Isolate the failing request(s): one bad input must not fail the whole batch.
            if len(requests) == 1:
                return [self._failed(self._run, per_request)]
            return [self._failed(self._run, [inputs]) for inputs in per_request]

    def _failed(self, run, per_request: list[dict[str, np.ndarray]]):
        try:
            return run(per_request)[0]
        except Exception as exc:
            if not isinstance(exc, InputError):
                self.logger.log_error(f"{self.spec.name}: {traceback.format_exc()}")
            return pb_utils.InferenceResponse(error=triton_error(exc, self.spec.name))

    def _run(self, per_request: list[dict[str, np.ndarray]]) -> list:
        names = per_request[0].keys()
        if any(inputs.keys() != names for inputs in per_request):
            raise InputError("requests in one batch must send the same optional inputs")
        counts = [len(next(iter(inputs.values()))) for inputs in per_request]
        batch = {name: np.concatenate([inputs[name] for inputs in per_request]) for name in names}
        results = self.predictor.predict(batch)
        if len(results) != sum(counts):
            raise RuntimeError(f"{self.spec.name} returned {len(results)} results for {sum(counts)} items")
        responses, start = [], 0
        for count in counts:
            items = results[start : start + count]
            start += count
            tensors = []
            for spec in self.spec.outputs:
                if spec.name == MODEL_INFO:
                    tensors.append(output_tensor(spec, [[self.info]] * count))
                else:
                    tensors.append(output_tensor(spec, stack_padded([item[spec.name] for item in items])))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses


class TritonModelCaller:
    """Calls another model in the same server through BLS (the `ModelCaller` the pure orchestrators use)."""

    async def __call__(self, model: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=model.name,
            requested_output_names=[tensor.name for tensor in model.outputs],
            inputs=[output_tensor(model.input(name), value) for name, value in inputs.items()],
        )
        response = await request.async_exec()
        if response.has_error():
            _raise_bls_error(model, response.error())
        return {tensor.name: _as_numpy(response, tensor) for tensor in model.outputs}


def _raise_bls_error(model: ModelSpec, error) -> None:
    _raise_callee_error(model, error.message(), int(error.code()))


def _raise_callee_error(model: ModelSpec, message: str, status: int) -> None:
    # A user error downstream is still a user error here. BLS responses do not always carry the callee's
    # error code (seen: INTERNAL for an INVALID_ARG on Triton 2.51), so our code suffix decides.
    text, code = split_code(message)
    if status == int(pb_utils.TritonError.UNAVAILABLE) or code == WEIGHTS_UNAVAILABLE:
        raise WeightsUnavailable(f"{model.name}: {text}")
    if status == int(pb_utils.TritonError.INVALID_ARG) or code:
        raise input_error_from_message(message)
    raise TalkingHeadError(f"{model.name} failed: {message}")


def _as_numpy(response, spec: TensorSpec) -> np.ndarray:
    tensor = pb_utils.get_output_tensor_by_name(response, spec.name)
    if tensor is None:
        raise TalkingHeadError(f"response has no output {spec.name!r}")
    return _tensor_numpy(tensor)


def _tensor_numpy(tensor) -> np.ndarray:
    if tensor.is_cpu():
        return tensor.as_numpy()
    import torch.utils.dlpack

    return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu().numpy()


def read_inputs(request, model: ModelSpec) -> dict[str, np.ndarray]:
    """The request's tensors by name; optional ones that were not sent are absent."""
    inputs = {}
    for tensor in model.inputs:
        value = pb_utils.get_input_tensor_by_name(request, tensor.name)
        if value is None and not tensor.optional:
            raise InputError(f"missing input {tensor.name!r}: send it with the request")
        if value is not None:
            inputs[tensor.name] = value.as_numpy()
    return inputs


class OrchestratorModel:
    """Base for unbatched BLS orchestrators: subclasses set `spec`, `settings_type` and async `handle`."""

    spec: ModelSpec
    settings_type: type

    def initialize(self, args: dict[str, str]) -> None:
        trace_crashes()
        self.logger = pb_utils.Logger
        try:
            self.settings = from_model_config(self.settings_type, json.loads(args["model_config"]))
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"{self.spec.name}: {exc}") from None
        self.call_model = TritonModelCaller()

    async def handle(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    async def execute(self, requests: list) -> list:
        import asyncio

        return list(await asyncio.gather(*(self._one(request) for request in requests)))

    async def _one(self, request):
        try:
            outputs = await self.handle(read_inputs(request, self.spec))
            return pb_utils.InferenceResponse(
                output_tensors=[output_tensor(spec, outputs[spec.name]) for spec in self.spec.outputs]
            )
        except Exception as exc:
            if not isinstance(exc, InputError):
                self.logger.log_error(f"{self.spec.name}: {traceback.format_exc()}")
            return pb_utils.InferenceResponse(error=triton_error(exc, self.spec.name))


class BacklogGauges:
    """A model instance's backlog (backlog.py) as Triton custom metrics (GAUGE) labelled by model and instance,
    set on every change and every `interval_s` (the oldest queued age grows while nothing else changes)."""

    def __init__(self, model: str, instance: str, snapshot: Callable[[], BacklogSnapshot],
                 interval_s: float = 1.0) -> None:
        self._snapshot, self.interval_s = snapshot, interval_s
        self._families = {name: pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.GAUGE)
                          for name, text in GAUGES.items()}
        labels = {"model": model, "instance": instance}
        self._metrics = {name: family.Metric(labels=labels) for name, family in self._families.items()}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        # One at a time, so that an older snapshot never overwrites a newer one.
        with self._lock:
            if self._metrics:
                for name, value in self._snapshot().as_metrics().items():
                    self._metrics[name].set(value)

    def start(self, name: str) -> BacklogGauges:
        def run() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.publish()
                except Exception as exc:  # a metrics hiccup must never stop the model; the next tick retries
                    pb_utils.Logger.log_warn(f"backlog metrics not updated: {exc}")

        self.publish()  # zeros from the start, also over what a dead predecessor left
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s * 2)
        with self._lock:
            self._metrics.clear()  # the python backend wants every Metric deleted before its MetricFamily
            self._families.clear()


class StreamingModel:
    """Base for decoupled models: each request is served on a worker thread that sends one response per
    item its `stream` yields and always ends with the FINAL flag (errors included); while a request is silent,
    queued or running, it gets keep-alives (keepalive.py); its backlog (queued, running, segments) is exported as
    Triton metrics (BacklogGauges); `finalize` waits for the requests in flight.
    Subclasses set `spec`, `settings_type` (with a `keepalive_s` field), `build` and `stream`."""

    spec: ModelSpec
    settings_type: type
    max_workers = 4
    # False: a request is one segment, running while `stream` runs. True: `stream` reports its segments itself
    # through the BacklogJob it gets (talking_head, which generates a job segment by segment).
    reports_segments = False

    def build(self, settings: Any, device: str) -> None:
        """Load what the model needs (runs once in initialize)."""

    def stream(self, inputs: dict[str, np.ndarray], parameters: dict, is_cancelled, backlog: BacklogJob):
        """Yield dicts of output arrays keyed by output tensor name."""
        raise NotImplementedError

    def initialize(self, args: dict[str, str]) -> None:
        trace_crashes()
        from concurrent.futures import ThreadPoolExecutor

        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(f"{self.spec.name} must be decoupled (model_transaction_policy)")
        try:
            self.settings = from_model_config(self.settings_type, config)
            if not 0 < self.settings.keepalive_s <= STREAM_KEEPALIVE_S:
                # Clients wait 12 intervals of STREAM_KEEPALIVE_S (TalkingHeadClient): a longer one breaks them.
                raise ConfigError(f"parameter 'keepalive_s': must be above 0 and at most {STREAM_KEEPALIVE_S:g} s, "
                                  f"got {self.settings.keepalive_s:g}")
            try:
                refuse_unlicensed(self.spec.name, self.settings)
            except WeightsUnavailable as exc:  # a streaming model has no UNAVAILABLE mode: it does not load
                raise ConfigError(str(exc)) from None
            self.build(self.settings, device_of(args))
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"{self.spec.name}: {exc}") from None
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=self.spec.name)
        self._in_flight: set = set()
        self._keepalive = KeepAlive(self.settings.keepalive_s,
                                    lambda: pb_utils.InferenceResponse(output_tensors=[]))
        self._keepalive.start(f"{self.spec.name}-keepalive")
        self._backlog = Backlog(on_change=lambda: self._gauges.publish())
        self._gauges = BacklogGauges(self.spec.name, args.get("model_instance_name", self.spec.name),
                                     self._backlog.snapshot).start(f"{self.spec.name}-backlog")

    def execute(self, requests: list) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            # Opened here, not on the worker, so that a request queued behind busy workers is kept alive too.
            stream = self._keepalive.open(lambda response, last, sender=sender: sender.send(
                response, flags=final if last else 0))
            job = self._backlog.accept(request.is_cancelled)
            future = self._pool.submit(self._serve, request, stream, job)
            self._in_flight.add(future)
            future.add_done_callback(self._in_flight.discard)
        return None

    def _serve(self, request, stream: ResponseStream, job: BacklogJob) -> None:
        in_band = False

        def cancel() -> None:
            # One final error response, never in-band: the caller has stopped reading. Triton's vLLM backend answers
            # a cancellation so too; an in-band error then the final flag (two responses to a cancelled request) is
            # the unconfirmed suspect of one CI run's tritonserver abort ("double free or corruption").
            stream.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                "the client cancelled the request", pb_utils.TritonError.CANCELLED)), final=True)

        def fail(error) -> None:
            if in_band:
                stream.send(in_band_error(self.spec, error))
                stream.send(final=True)
            else:
                stream.send(pb_utils.InferenceResponse(error=error), final=True)

        try:
            job.start()
            if request.is_cancelled():  # cancelled (or its client gone) while it waited for this worker
                cancel()
                return
            inputs = read_inputs(request, self.spec)
            parameters = json.loads(request.parameters() or "{}")
            in_band = bool(parameters.pop(IN_BAND_ERRORS, False)) and any(
                t.name == CHUNK_INFO for t in self.spec.outputs)
            requested = set(request.requested_output_names())
            if not self.reports_segments:
                job.begin(0)
            for outputs in self.stream(inputs, parameters, request.is_cancelled, job):
                if request.is_cancelled():
                    cancel()
                    return
                # Only what the client asked for: Triton 2.51's response sender drops the other tensors on a thread
                # without the GIL (stream_remains.py has the same bug's other face).
                tensors = [output_tensor(t, outputs[t.name]) for t in self.spec.outputs
                           if t.name in outputs and t.name in requested]
                stream.send(pb_utils.InferenceResponse(output_tensors=tensors))
            stream.send(final=True)
        except Exception as exc:
            if not isinstance(exc, InputError):
                self.logger.log_error(f"{self.spec.name}: {traceback.format_exc()}")
            try:
                fail(triton_error(exc, self.spec.name))
            except Exception:  # on a worker no one joins: said here, or never (its caller stops at the silence)
                self.logger.log_error(f"{self.spec.name}: the error response was not sent: {traceback.format_exc()}")
        finally:
            job.close()  # done, failed, cancelled or its client gone: the gauges come down

    def finalize(self) -> None:
        self._pool.shutdown(wait=True)
        self._keepalive.stop()
        self._gauges.close()


# Asked by stream_model of the decoupled models it calls: a Triton 2.51 BLS caller never receives a decoupled
# callee's error response that follows another response of the same request (a chunk or a keep-alive; the first
# response arrives, tests/integration/test_bls_stream_errors.py), so such a callee sends its error as a chunk whose
# CHUNK_INFO holds STREAM_ERROR, then ends the stream.
IN_BAND_ERRORS = "in_band_errors"
STREAM_ERROR = "stream_error"


def in_band_error(model: ModelSpec, error) -> pb_utils.InferenceResponse:
    info = json.dumps({STREAM_ERROR: {"message": error.message(), "code": int(error.code())}})
    return pb_utils.InferenceResponse(output_tensors=[output_tensor(model.output(CHUNK_INFO), [info.encode()])])


def _raise_in_band_error(model: ModelSpec, outputs: dict[str, np.ndarray]) -> None:
    if CHUNK_INFO not in outputs:
        return
    info = json.loads(outputs[CHUNK_INFO].reshape(-1)[0])
    if STREAM_ERROR in info:
        _raise_callee_error(model, info[STREAM_ERROR]["message"], info[STREAM_ERROR]["code"])


def stream_model(model: ModelSpec, inputs: dict[str, np.ndarray], parameters: dict,
                 is_cancelled: Callable[[], bool]):
    """Call a decoupled model through BLS and yield its responses' outputs as dicts of arrays; its errors raise
    here, wherever in the stream they come. `is_cancelled` is the calling request's (open while this runs):
    stream_remains.py says why it is asked."""
    request = pb_utils.InferenceRequest(
        model_name=model.name,
        requested_output_names=[tensor.name for tensor in model.outputs],
        inputs=[output_tensor(model.input(name), value) for name, value in inputs.items()],
        # BLS takes only bool/int/str parameter values; settings parsing reads numbers back from strings.
        parameters={**{k: str(v) if isinstance(v, float) else v for k, v in parameters.items()}, IN_BAND_ERRORS: True},
    )
    for response in guarded_responses(request, model.name, is_cancelled):
        if response.has_error():
            _raise_bls_error(model, response.error())
        if response.output_tensors():
            outputs = {t.name(): _tensor_numpy(t) for t in response.output_tensors()}
            _raise_in_band_error(model, outputs)
            yield outputs


_END = object()


def guarded_responses(request, model: str, is_cancelled: Callable[[], bool], poll_s: float = 1.0,
                      silence_s: float = STREAM_SILENCE_S):
    """The responses of a decoupled BLS request, failing fast if the callee's stub process dies meanwhile or the
    stream goes silent for `silence_s`, keep-alives included.

    Triton 2.51 never answers a streamed request whose python-backend stub died, so a plain `exec` loop would
    wait forever and hold this worker thread. The request runs on a helper thread; while it is silent, the
    callee's stubs (as found at the start, in /proc) are checked every `poll_s`. If one died, this raises at
    once and the helper thread is left blocked (a daemon: it never holds the process open). The helper parks
    what the stream leaves and a stream read to its end settles it (stream_remains.py).

    Silence: our decoupled models send a keep-alive on any stream silent for STREAM_KEEPALIVE_S until its final
    response, so a stream that goes quiet while its stub lives lost its final response or its worker is stuck.
    Before in-band errors (IN_BAND_ERRORS) an error after a keep-alive was lost this way: on an H100, video_generator
    ran out of GPU memory at a request's start and talking_head waited for 8 minutes
    (perf/results/served_e2e_h100_704_hung.tritonserver.log).
    """
    from .stub_processes import alive, sibling_stubs

    stubs = sibling_stubs(model)  # none without /proc or for a model that is not a python-backend one
    responses: queue.Queue = queue.Queue()

    def pump() -> None:
        remains: list = []
        try:
            iterator = request.exec(decoupled=True)
            remains.append(iterator)
            for response in iterator:
                remains.append(response)
                responses.put(response)
        except BaseException as exc:
            responses.put(exc)
        STREAM_REMAINS.park(remains)
        responses.put(_END)

    threading.Thread(target=pump, name=f"bls-{model}", daemon=True).start()
    heard = time.monotonic()
    while True:
        try:
            item = responses.get(timeout=poll_s)
        except queue.Empty:
            dead = sorted(pid for pid in stubs if not alive(pid))
            if dead:
                raise TalkingHeadError(
                    f"{model} stopped mid-request: its process (pid {dead[0]}) died, Stub process is not healthy; "
                    "the server reloads the model: send the job again"
                ) from None
            if time.monotonic() - heard > silence_s:
                raise TalkingHeadError(
                    f"{model} sent nothing for {silence_s:g} s, not even a keep-alive: its answer was lost or its "
                    "worker is stuck (the server log says which); send the job again"
                ) from None
            continue
        heard = time.monotonic()
        if item is _END:
            STREAM_REMAINS.settle(is_cancelled)
            return
        if isinstance(item, BaseException):
            raise item
        yield item
