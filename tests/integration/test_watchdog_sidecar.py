"""`talkinghead watchdog`, the stub watchdog as the Kubernetes sidecar runs it (deploy/kubernetes/base/
triton-deployment.yaml): a separate process beside tritonserver, not its parent, that finds the server by its HTTP
port, takes the admin token from the environment, and reloads a model whose python-backend stub was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from client.cli import main
from client.server import ServerOptions, TritonServer, free_port
from client.stub_watchdog import TOKEN_ENV
from client.triton_client import Endpoint, TalkingHeadClient
from python_backends import spec
from python_backends.stub_processes import live_stubs, tritonserver_pid

pytestmark = pytest.mark.integration
MODEL = "audio_features"


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_sidecar_reloads_a_model_whose_stub_died(tmp_path, samples):
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            weights=tmp_path / "no-weights", models=(MODEL,))
    (tmp_path / "no-weights").mkdir()
    with TritonServer(options, log_path=tmp_path / "tritonserver.log") as server:
        server.watchdog.stop()  # the launcher's own watchdog steps aside: only the sidecar may act
        server.watchdog = None
        assert tritonserver_pid(options.http_port) == server.process.pid  # found by its port, among any others
        log = tmp_path / "sidecar.log"
        with open(log, "wb") as out:
            sidecar = subprocess.Popen(
                [sys.executable, "-m", "client.cli", "watchdog", f"--http-url={options.http_url}", "--interval=0.5"],
                env={**os.environ, TOKEN_ENV: server.admin_token}, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: f"tritonserver pid {server.process.pid}" in log.read_text(), 60, "the sidecar to start")
            (victim,) = [pid for pid, model in live_stubs(server.process.pid).items() if model == MODEL]
            os.kill(victim, signal.SIGKILL)
            fresh = _wait(lambda: [pid for pid, model in live_stubs(server.process.pid).items()
                                   if model == MODEL and pid != victim], 120, "a new stub")
            _wait(lambda: "reloaded" in log.read_text(), 60, "the sidecar's reload")
            with TalkingHeadClient(Endpoint(options.grpc_url, "grpc")) as client:
                wav = (samples / "speech.wav").read_bytes()
                outputs = client.infer(spec.AUDIO_FEATURES, {spec.AUDIO_BYTES: np.array([[wav]], dtype=np.object_)})
            assert outputs[spec.WAVEFORM].size > 0 and fresh
            assert server.admin_token not in log.read_text()  # the token is never logged
        finally:
            sidecar.send_signal(signal.SIGTERM)
            assert sidecar.wait(timeout=30) == 0, log.read_text()


def test_the_sidecar_needs_the_token(monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["watchdog"]) == 1
    assert TOKEN_ENV in capsys.readouterr().err
