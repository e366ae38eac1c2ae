"""The launcher's restart after tritonserver dies by itself (what `talkinghead serve` does, and the fault tests
after Triton's abort): the same ports serve again, and the log keeps the crash."""

from __future__ import annotations

import os
import signal
import time

import pytest

from client.server import ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient

pytestmark = pytest.mark.integration


def test_a_server_that_died_is_restarted_on_the_same_ports_with_its_crash_in_the_log(tmp_path):
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            weights=tmp_path / "weights", models=("face_detector",))
    (tmp_path / "weights").mkdir()
    server = TritonServer(options, log_path=tmp_path / "tritonserver.log").start()
    try:
        first = server.process.pid
        assert not server.exited()
        os.kill(first, signal.SIGABRT)  # as Triton's own abort ends it
        deadline = time.monotonic() + 30
        while not server.exited() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.exited() and server.crash_reason() == "Signal (6) received."
        server.restart()
        assert server.process.pid != first and not server.exited()
        with TalkingHeadClient(Endpoint(options.grpc_url, "grpc")) as client:
            assert client.is_ready()
        log = server.log_path.read_text(errors="replace")
        assert log.count("Started GRPCInferenceService") == 2 and "Signal (6) received." in log
    finally:
        server.stop()
