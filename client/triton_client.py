"""A small typed client for the talkinghead models over Triton HTTP or gRPC."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from python_backends import spec
from python_backends.errors import split_code

PROTOCOLS = ("grpc", "http")
IDLE_TIMEOUT_S = spec.STREAM_SILENCE_S  # the server sends a keep-alive every spec.STREAM_KEEPALIVE_S


class RequestRejected(Exception):
    """The server refused the input; `str()` says what to do, `code` is stable for programs."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code


class ServerUnavailable(Exception):
    """The server or a model is not reachable or has no weights."""


@dataclass(frozen=True)
class StreamedChunk:
    frames: np.ndarray  # [n, H, W, 3] uint8 RGB
    start_frame: int
    total_frames: int
    fps: float
    info: dict[str, Any]  # engine, timings, the segment's "qa"; the first chunk also carries "job_report"

    @property
    def qa_report(self) -> dict[str, Any] | None:
        """The job's QA report: talking_head's last response carries it and no frames."""
        return self.info.get("qa_report")


@dataclass(frozen=True)
class Endpoint:
    url: str  # host:port
    protocol: str = "grpc"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


class TalkingHeadClient:
    """Context manager over tritonclient's HTTP or gRPC client."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 300.0, retry_s: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retry_s = retry_s  # how long `infer` retries while a model's process is being restarted
        if endpoint.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module
        kwargs = {} if endpoint.protocol == "grpc" else {"network_timeout": timeout_s, "connection_timeout": 10.0}
        self._client = module.InferenceServerClient(endpoint.url, **kwargs)

    def __enter__(self) -> TalkingHeadClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def infer(self, model: spec.ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send one request; the arrays carry the batch dimension when the model batches."""
        wire = []
        for name, value in inputs.items():
            tensor_spec = model.input(name)
            array = np.asarray(value, dtype=np.object_ if tensor_spec.dtype == "BYTES" else None)
            item = self._module.InferInput(name, list(array.shape), tensor_spec.dtype)
            item.set_data_from_numpy(array)
            wire.append(item)
        outputs = [self._module.InferRequestedOutput(t.name) for t in model.outputs]
        kwargs = {"client_timeout": self.timeout_s} if self.endpoint.protocol == "grpc" else {}
        deadline, delay = time.monotonic() + self.retry_s, 0.5
        while True:
            try:
                result = self._client.infer(model.name, wire, outputs=outputs, **kwargs)
                break
            except InferenceServerException as exc:
                # A dead python-backend stub fails the request at once; the server's watchdog reloads the model
                # within seconds (client/stub_watchdog.py). Requests are idempotent: retry, bounded.
                if not _restarting(exc) or time.monotonic() + delay > deadline:
                    raise _translate(exc) from None
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
        return {t.name: result.as_numpy(t.name) for t in model.outputs}

    def preprocess(
        self, photo: bytes, audio: bytes | None = None, driving_video: bytes | None = None
    ) -> dict[str, Any]:
        """Validate + pre-process a photo with speech and/or a driving video; raises RequestRejected with
        guidance on bad input."""
        inputs = {spec.PHOTO_BYTES: photo, spec.AUDIO_BYTES: audio, spec.DRIVING_VIDEO_BYTES: driving_video}
        outputs = self.infer(
            spec.PREPROCESS,
            {name: np.array([data], dtype=np.object_) for name, data in inputs.items() if data is not None},
        )
        return json.loads(outputs[spec.PREPROCESS_REPORT].reshape(-1)[0])

    def generate(
        self,
        photo: bytes,
        audio: bytes | None = None,
        driving_video: bytes | None = None,
        parameters: dict[str, Any] | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        deadline_s: float | None = None,
        on_keepalive: Callable[[], None] | None = None,
    ) -> Iterator[StreamedChunk]:
        """Run the talking_head pipeline and yield chunks as the server streams them (gRPC only).

        Stopping the iteration early cancels the job on the server. The timeouts are those of `stream`.
        """
        data = {spec.PHOTO_BYTES: photo, spec.AUDIO_BYTES: audio, spec.DRIVING_VIDEO_BYTES: driving_video}
        inputs = {name: np.array([value], dtype=np.object_) for name, value in data.items() if value is not None}
        return self.stream(spec.TALKING_HEAD, inputs, parameters, idle_timeout_s, on_keepalive, deadline_s)

    def stream(
        self,
        model: spec.ModelSpec,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Any] | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        on_keepalive: Callable[[], None] | None = None,
        deadline_s: float | None = None,
    ) -> Iterator[StreamedChunk]:
        """Stream any decoupled chunk model (talking_head, video_generator) over gRPC.

        A job may go without chunks for as long as it needs; `idle_timeout_s` without even a keep-alive ends
        it with ServerUnavailable (the server process is gone), and so does a stream still open after
        `deadline_s` (None: no limit; keep-alives show the process lives, not that the job progresses).
        `on_keepalive` is called for each keep-alive.
        """
        if self.endpoint.protocol != "grpc":
            raise ValueError("streaming generation needs the gRPC endpoint (Triton streams over gRPC only)")
        wire = []
        for name, value in inputs.items():
            array = np.asarray(value, dtype=np.object_ if model.input(name).dtype == "BYTES" else None)
            item = self._module.InferInput(name, list(array.shape), model.input(name).dtype)
            item.set_data_from_numpy(array)
            wire.append(item)
        results: queue.Queue = queue.Queue()
        self._client.start_stream(callback=lambda result, error: results.put((result, error)))
        finished = False
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        try:
            self._client.async_stream_infer(model.name, wire, parameters=parameters or {},
                                            enable_empty_final_response=True)
            while True:
                wait = idle_timeout_s if deadline is None else min(idle_timeout_s, deadline - time.monotonic())
                try:
                    result, error = results.get(timeout=max(0.0, wait))
                except queue.Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise ServerUnavailable(f"the job did not finish within {deadline_s:g} s") from None
                    raise ServerUnavailable(
                        f"the server sent nothing for {idle_timeout_s:g} s, not even a keep-alive (it sends one "
                        f"every {spec.STREAM_KEEPALIVE_S:g} s): the process serving this job stopped; send the job "
                        "again") from None
                if error is not None:
                    raise _translate(error)
                response = result.get_response()
                final = response.parameters.get("triton_final_response")
                if not response.outputs and not (final is not None and final.bool_param) and on_keepalive:
                    on_keepalive()
                if response.outputs:
                    yield StreamedChunk(
                        frames=result.as_numpy(spec.FRAMES),
                        start_frame=int(result.as_numpy(spec.START_FRAME)[0]),
                        total_frames=int(result.as_numpy(spec.TOTAL_FRAMES)[0]),
                        fps=float(result.as_numpy(spec.FPS)[0]),
                        info=json.loads(result.as_numpy(spec.CHUNK_INFO).reshape(-1)[0]),
                    )
                if final is not None and final.bool_param:
                    finished = True
                    return
        finally:
            self._client.stop_stream(cancel_requests=not finished)

    def model_statistics(self, model: str) -> dict[str, Any]:
        if self.endpoint.protocol == "grpc":
            return self._client.get_inference_statistics(model, as_json=True)
        return self._client.get_inference_statistics(model)

    def batching_counts(self, model: str) -> tuple[int, int]:
        """(inferences, executions) so far: their ratio is how many requests each execution batched."""
        stats = self.model_statistics(model)["model_stats"][0]
        # gRPC's JSON leaves out zero counters (proto3 defaults) and writes int64 as strings.
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


# What Triton says while a model's stub process is dead or its model is being reloaded.
_RESTARTING = ("is not healthy", "has no available versions", "is not ready")


def _restarting(exc: InferenceServerException) -> bool:
    message = exc.message() or str(exc)
    return any(marker in message for marker in _RESTARTING)


def _translate(exc: InferenceServerException) -> Exception:
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if _restarting(exc):
        return ServerUnavailable(f"a model process of the server stopped and is being restarted ({message}); "
                                 "send the request again in a few seconds")
    text, code = split_code(message)
    # Streamed (decoupled) errors come without a status: our code suffix marks the user's errors.
    if "400" in status or "INVALID_ARGUMENT" in status or code is not None:
        return RequestRejected(text, code)
    if "UNAVAILABLE" in status or "503" in status or "Failed to connect" in message:
        return ServerUnavailable(message)
    return exc
