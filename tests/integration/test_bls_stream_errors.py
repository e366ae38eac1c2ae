"""A decoupled callee's error reaches its BLS caller wherever in the stream it comes (triton_io.IN_BAND_ERRORS).

A private server runs two test models: `failing_source` streams chunks, then fails; `error_reader` reads it through
triton_io.stream_model, as talking_head reads video_generator, and answers with what it caught. On Triton 2.51 a
callee's error response that followed a chunk or a keep-alive of the same request never reached the BLS caller:
talking_head waited on video_generator until the server stopped (an H100 run, video_generator out of GPU memory,
perf/results/served_e2e_h100_704_hung.tritonserver.log), and an error response sent before a separate final flag
was lost too, so the caller took a cut segment for a whole one. Only an error as the first response arrived."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import numpy as np
import pytest

from client.server import ServerOptions, TritonServer, free_port

pytestmark = pytest.mark.integration

KEEPALIVE_S = 0.5

_COMMON = '''
import json
import time
from dataclasses import dataclass

import numpy as np

from python_backends.errors import InputError, TalkingHeadError
from python_backends.spec import ModelSpec, TensorSpec
from python_backends.triton_io import StreamingModel, stream_model

SOURCE = ModelSpec("failing_source", (TensorSpec("chunks", "INT32", (1,)), TensorSpec("wait_s", "FP32", (1,)),
                                      TensorSpec("user_error", "BOOL", (1,))),
                   (TensorSpec("frames", "UINT8", (-1,)), TensorSpec("chunk_info", "BYTES", (1,))), 0, decoupled=True)
READER = ModelSpec("error_reader", SOURCE.inputs, (TensorSpec("caught", "BYTES", (1,)),), 0, decoupled=True)


@dataclass
class Settings:
    keepalive_s: float = 5.0
'''

_SOURCE_MODEL = _COMMON + '''

class TritonPythonModel(StreamingModel):
    spec, settings_type = SOURCE, Settings

    def stream(self, inputs, parameters, is_cancelled, backlog):
        for i in range(int(inputs["chunks"][0])):
            yield {"frames": np.full(16, i, np.uint8), "chunk_info": np.array([json.dumps({"chunk": i}).encode()],
                                                                               dtype=np.object_)}
        time.sleep(float(inputs["wait_s"][0]))  # long enough for keep-alives
        if bool(inputs["user_error"][0]):
            raise InputError("the photo is blank: send a photo of a face", "blank_photo")
        raise RuntimeError("the source broke")
'''

_READER_MODEL = _COMMON + '''

class TritonPythonModel(StreamingModel):
    spec, settings_type = READER, Settings

    def stream(self, inputs, parameters, is_cancelled, backlog):
        chunks = 0
        try:
            for chunk in stream_model(SOURCE, inputs, {}, is_cancelled=is_cancelled):
                chunks += len(chunk["frames"]) > 0
            caught = {"error": None}
        except TalkingHeadError as exc:
            caught = {"error": type(exc).__name__, "message": str(exc), "code": getattr(exc, "code", None)}
        yield {"caught": np.array([json.dumps({**caught, "chunks": chunks}).encode()], dtype=np.object_)}
'''


def _config(name: str, outputs: str) -> str:
    inputs = ('{ name: "chunks" data_type: TYPE_INT32 dims: [ 1 ] }, '
              '{ name: "wait_s" data_type: TYPE_FP32 dims: [ 1 ] }, '
              '{ name: "user_error" data_type: TYPE_BOOL dims: [ 1 ] }')
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\nmodel_transaction_policy {{ decoupled: true }}\n'
            f'input [ {inputs} ]\noutput [ {outputs} ]\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\n'
            f'parameters [ {{ key: "keepalive_s" value: {{ string_value: "{KEEPALIVE_S}" }} }} ]\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ServerOptions:
    root = tmp_path_factory.mktemp("bls-errors")
    models = {
        "failing_source": (_SOURCE_MODEL, '{ name: "frames" data_type: TYPE_UINT8 dims: [ -1 ] }, '
                                          '{ name: "chunk_info" data_type: TYPE_STRING dims: [ 1 ] }'),
        "error_reader": (_READER_MODEL, '{ name: "caught" data_type: TYPE_STRING dims: [ 1 ] }'),
    }
    for name, (code, outputs) in models.items():
        (root / "repository" / name / "1").mkdir(parents=True)
        (root / "repository" / name / "1" / "model.py").write_text(code)
        (root / "repository" / name / "config.pbtxt").write_text(_config(name, outputs))
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            repositories=(Path(root / "repository"),))
    with TritonServer(options, log_path=root / "tritonserver.log"):
        yield options


def _read(options: ServerOptions, chunks: int, wait_s: float, user_error: bool = False,
          timeout_s: float = 30.0) -> dict:
    """What error_reader caught, and how long its answer took."""
    import tritonclient.grpc as grpcclient

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(options.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    tensors = []
    for name, dtype, value in (("chunks", "INT32", np.array([chunks], np.int32)),
                               ("wait_s", "FP32", np.array([wait_s], np.float32)),
                               ("user_error", "BOOL", np.array([user_error]))):
        tensor = grpcclient.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    started = time.monotonic()
    client.async_stream_infer("error_reader", tensors)
    try:
        while True:
            result, error = results.get(timeout=timeout_s)
            assert error is None, error
            caught = result.as_numpy("caught")
            if caught is not None:
                return {**json.loads(caught[0]), "seconds": time.monotonic() - started}
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


@pytest.mark.parametrize("chunks, wait_s", [(0, 0.0), (2, 0.0), (0, 4 * KEEPALIVE_S), (2, 4 * KEEPALIVE_S)],
                         ids=["first-response", "after-chunks", "after-keep-alives", "after-both"])
def test_the_callees_error_reaches_the_caller_wherever_it_comes(server, chunks, wait_s):
    caught = _read(server, chunks, wait_s)
    assert caught["error"] == "TalkingHeadError" and caught["chunks"] == chunks
    assert caught["message"] == ("failing_source failed: internal error in failing_source; the server log has the "
                                 "details")
    assert caught["seconds"] < wait_s + 10  # at once, not at the 60 s silence limit


def test_a_user_error_after_chunks_stays_a_user_error_with_its_code(server):
    caught = _read(server, 2, 4 * KEEPALIVE_S, user_error=True)
    assert caught["error"] == "InputError" and caught["code"] == "blank_photo" and caught["chunks"] == 2
    assert caught["message"] == "the photo is blank: send a photo of a face"
