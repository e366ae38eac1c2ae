"""tritonserver killed (SIGKILL) in the middle of a gateway job, then started again: the job goes back to the
queue, waits while the server is down, and completes once it is back.

Opt-in (TALKINGHEAD_SLOW_TESTS=1): it starts its own tritonserver twice, about two extra minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from gateway_harness import GatewayProcess, add_tenant
from test_gateway import PARAMS, _files, _wait_running, _write_config

from client.provenance import verify_video
from client.sdk import GatewayClient
from client.server import ServerOptions, TritonServer, free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.environ.get("TALKINGHEAD_SLOW_TESTS") != "1",
                                 reason="starts its own tritonserver twice; set TALKINGHEAD_SLOW_TESTS=1")]


def test_tritonserver_killed_mid_job_then_restarted(samples, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), weights=weights)
    server = TritonServer(options, log_path=tmp_path / "triton-1.log").start()
    config = _write_config(tmp_path / "gateway.toml", tmp_path / "data", options.grpc_url, weights)
    tenant = add_tenant(config, "acme")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        photo, audio = _files(samples)
        with GatewayClient(gateway.url, tenant["api_key"]) as client:
            # The sample is one 6 s segment: the server pre-processes, generates and judges it, then streams its
            # frames. Two seconds after the claim the request is in flight on the server (~8 s on 2 cores).
            job = client.submit(photo, audio, parameters={**PARAMS, "seed": 11})
            _wait_running(client, job["id"])
            time.sleep(2.0)
            os.killpg(server.process.pid, signal.SIGKILL)  # tritonserver and its python-backend stubs, mid-job
            server.stop()
            deadline = time.monotonic() + 60
            while (state := client.status(job["id"]))["status"] != "queued":
                assert state["status"] == "running" and time.monotonic() < deadline, state
                time.sleep(0.2)
            assert state["attempts"] == 1 and state["last_error"]
            assert "model index" not in state["last_error"]  # lost inside the generation stream, not before it
            time.sleep(3.0)
            assert client.status(job["id"])["status"] == "queued"  # nothing is claimed while the server is down
            server = TritonServer(options, log_path=tmp_path / "triton-2.log").start()
            done = client.wait(job["id"], timeout_s=300, poll_s=0.25)
            assert done["status"] == "succeeded" and done["attempts"] == 2
            assert verify_video(client.download(job["id"], tmp_path / "out.mp4")).valid
        print(f"\nlost mid-stream: {state['last_error']}")
    finally:
        gateway.stop()
        server.stop()
