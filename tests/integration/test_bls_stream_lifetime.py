"""Decoupled BLS streams through a real tritonserver do not corrupt the caller's stub (python_backends/
stream_remains.py). A private server runs two test models: `chunk_source` streams frame chunks like video_generator,
`chunk_reader` reads them through triton_io.stream_model, as talking_head does, while other Python threads of its
stub allocate and free numpy arrays as talking_head's QA, keep-alive and metrics threads do.

Reading the streams with a bare `exec` loop instead (the control below, TALKINGHEAD_SLOW_TESTS=1) killed the reader's
stub with SIGSEGV within its first request of 50 streams every time it was run on Triton 2.51."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import numpy as np
import pytest

from client.server import ServerOptions, TritonServer, free_port
from python_backends.stub_processes import alive, live_stubs

pytestmark = pytest.mark.integration

STREAMS_PER_REQUEST, CHUNKS_PER_STREAM = 50, 8

_COMMON = '''
import json
import threading
from dataclasses import dataclass

import numpy as np

from python_backends.spec import ModelSpec, TensorSpec
from python_backends.triton_io import StreamingModel, stream_model

SOURCE = ModelSpec("chunk_source", (TensorSpec("chunks", "INT32", (1,)),),
                   (TensorSpec("frames", "UINT8", (-1,)), TensorSpec("chunk_info", "BYTES", (1,))), 0, decoupled=True)
READER = ModelSpec("chunk_reader", (TensorSpec("streams", "INT32", (1,)),), (TensorSpec("total", "INT64", (1,)),), 0,
                   decoupled=True)


@dataclass
class Settings:
    keepalive_s: float = 5.0
    bare_exec: bool = False
'''

_SOURCE_MODEL = _COMMON + '''

class TritonPythonModel(StreamingModel):
    spec, settings_type = SOURCE, Settings

    def stream(self, inputs, parameters, is_cancelled, backlog):
        for i in range(int(inputs["chunks"][0])):
            yield {"frames": np.full(20000 + i, i % 251, np.uint8),
                   "chunk_info": np.array([json.dumps({"chunk": i}).encode()], dtype=np.object_)}
'''

_READER_MODEL = _COMMON + f'''

def bare_stream(model, inputs, parameters, is_cancelled):
    import triton_python_backend_utils as pb_utils

    request = pb_utils.InferenceRequest(
        model_name=model.name, requested_output_names=[t.name for t in model.outputs],
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()])
    for response in request.exec(decoupled=True):
        if response.output_tensors():
            yield {{t.name(): t.as_numpy() for t in response.output_tensors()}}


class TritonPythonModel(StreamingModel):
    spec, settings_type = READER, Settings

    def build(self, settings, device):
        self.read = bare_stream if settings.bare_exec else stream_model
        self.stop = threading.Event()

        def churn():  # what talking_head's other threads do all the time
            while not self.stop.is_set():
                arrays = [np.arange(i % 64) for i in range(500)]
                del arrays

        for _ in range(2):
            threading.Thread(target=churn, daemon=True).start()

    def stream(self, inputs, parameters, is_cancelled, backlog):
        total = 0
        for _ in range(int(inputs["streams"][0])):
            chunks = list(self.read(SOURCE, {{"chunks": np.array([{CHUNKS_PER_STREAM}], np.int32)}}, {{}},
                                    is_cancelled=is_cancelled))
            total += sum(int(chunk["frames"][:10].sum()) for chunk in chunks)
        yield {{"total": np.array([total], np.int64)}}

    def finalize(self):
        self.stop.set()
        super().finalize()
'''


def _config(name: str, inputs: str, outputs: str, bare_exec: bool) -> str:
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\nmodel_transaction_policy {{ decoupled: true }}\n'
            f'input [ {inputs} ]\noutput [ {outputs} ]\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\n'
            f'parameters [ {{ key: "bare_exec" value: {{ string_value: "{str(bare_exec).lower()}" }} }} ]\n')


def _repository(root: Path, bare_exec: bool) -> Path:
    models = {
        "chunk_source": (_SOURCE_MODEL, '{ name: "chunks" data_type: TYPE_INT32 dims: [ 1 ] }',
                         '{ name: "frames" data_type: TYPE_UINT8 dims: [ -1 ] }, '
                         '{ name: "chunk_info" data_type: TYPE_STRING dims: [ 1 ] }'),
        "chunk_reader": (_READER_MODEL, '{ name: "streams" data_type: TYPE_INT32 dims: [ 1 ] }',
                         '{ name: "total" data_type: TYPE_INT64 dims: [ 1 ] }'),
    }
    for name, (code, inputs, outputs) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        (root / name / "config.pbtxt").write_text(_config(name, inputs, outputs, bare_exec))
    return root


def _read_streams(options: ServerOptions, requests: int, timeout_s: float) -> list[int | None]:
    """Each request's total, or None where the reader went silent for `timeout_s` (its stub died)."""
    import tritonclient.grpc as grpcclient

    totals: list[int | None] = []
    for _ in range(requests):
        results: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(options.grpc_url)
        client.start_stream(callback=lambda result, error, results=results: results.put((result, error)))
        streams = grpcclient.InferInput("streams", [1], "INT32")
        streams.set_data_from_numpy(np.array([STREAMS_PER_REQUEST], np.int32))
        client.async_stream_infer("chunk_reader", [streams])
        total = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                result, error = results.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            assert error is None, error
            if result.as_numpy("total") is not None:
                total = int(result.as_numpy("total")[0])
                break
        client.stop_stream(cancel_requests=True)
        client.close()
        totals.append(total)
        if total is None:
            break
    return totals


def _serve(tmp_path: Path, bare_exec: bool):
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            repositories=(_repository(tmp_path / "repository", bare_exec),), restart_dead_stubs=False)
    return options, TritonServer(options, log_path=tmp_path / "tritonserver.log")


EXPECTED_TOTAL = STREAMS_PER_REQUEST * sum(10 * (i % 251) for i in range(CHUNKS_PER_STREAM))


def test_many_bls_streams_leave_the_readers_stub_alive(tmp_path):
    options, server = _serve(tmp_path, bare_exec=False)
    with server:
        (reader,) = [pid for pid, model in live_stubs(server.process.pid).items() if model == "chunk_reader"]
        totals = _read_streams(options, requests=6, timeout_s=60)
        assert alive(reader), "chunk_reader's stub died while it read BLS streams"
    assert totals == [EXPECTED_TOTAL] * 6


@pytest.mark.skipif(not os.environ.get("TALKINGHEAD_SLOW_TESTS"), reason="the unguarded control; set "
                    "TALKINGHEAD_SLOW_TESTS=1")
def test_control_a_bare_exec_loop_kills_the_readers_stub(tmp_path):
    options, server = _serve(tmp_path, bare_exec=True)
    with server:
        (reader,) = [pid for pid, model in live_stubs(server.process.pid).items() if model == "chunk_reader"]
        totals = _read_streams(options, requests=6, timeout_s=20)
        assert not alive(reader) and totals[-1] is None, f"no crash in {len(totals)} requests: {totals}"
