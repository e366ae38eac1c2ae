"""The delivery gateway end to end: a real uvicorn gateway process, the session's real tritonserver and a webhook
receiver on loopback. Jobs are kept cheap (256x256 at 10 fps from the 6 s sample speech)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_harness import GatewayProcess, add_tenant, write_config

from client.gateway.webhooks import verify_signature
from client.probe import probe
from client.provenance import verify_video
from client.sdk import GatewayClient, GatewayError
from client.server import free_port

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "client.cli"]
PARAMS = {"width": 256, "height": 256, "fps": 10}
MAX_UPLOAD = 5 << 20


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    received: list[tuple[dict, bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait_for(self, job_id: str, event: str, timeout: float = 30.0) -> tuple[dict, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for headers, body in list(self.received):
                payload = json.loads(body)
                if payload["type"] == event and payload["data"]["object"]["id"] == job_id:
                    return headers, body
            time.sleep(0.1)
        events = [json.loads(body)["type"] for _, body in self.received]
        raise AssertionError(f"no {event} webhook for {job_id}; got {events}")


@pytest.fixture(scope="module")
def receiver():
    received: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Receiver(server, received)
    server.shutdown()


# Webhooks to the loopback receiver, quick retries, a small upload cap to test 413 against.
_SETTINGS = f"""
[limits]
max_upload_bytes = {MAX_UPLOAD}
[webhooks]
allow = ["127.0.0.1/32"]
backoff_base_s = 0.2
"""


def _write_config(path: Path, data_dir: Path, triton_url: str, weights: Path | None, extra: str = "") -> Path:
    return write_config(path, data_dir, triton_url, weights, _SETTINGS + extra)


@dataclass
class Deployment:
    config: Path
    gateway: GatewayProcess
    acme: dict
    other: dict

    def client(self, tenant: dict | None = None) -> GatewayClient:
        return GatewayClient(self.gateway.url, (tenant or self.acme)["api_key"], timeout_s=60)


@pytest.fixture(scope="module")
def deployment(triton_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway")
    config = _write_config(folder / "gateway.toml", folder / "data", triton_server.grpc_url, triton_server.weights)
    acme, other = add_tenant(config, "acme"), add_tenant(config, "other")
    gateway = GatewayProcess(config, folder / "gateway.log").start()
    deployment = Deployment(config, gateway, acme, other)
    yield deployment
    deployment.gateway.stop()


def _files(samples: Path) -> tuple[bytes, bytes]:
    return (samples / "astronaut.png").read_bytes(), (samples / "speech.wav").read_bytes()


def _wait_running(client: GatewayClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.status(job_id)
        if job["status"] == "running":
            return job
        assert job["status"] == "queued", job
        time.sleep(0.1)
    raise AssertionError(f"{job_id} never started")


def test_submit_webhook_signed_download_verifies(deployment, receiver, samples, tmp_path):
    photo, audio = _files(samples)
    with deployment.client() as client:
        started = time.perf_counter()
        job = client.submit(photo, audio, parameters=PARAMS, webhook_url=receiver.url)
        submit_s = time.perf_counter() - started
        assert job["status"] == "queued" and job["inputs"]["photo"]["sha256"] == hashlib.sha256(photo).hexdigest()
        done = client.wait(job["id"], timeout_s=300, poll_s=0.25)
        job_s = time.perf_counter() - started
        headers, body = receiver.wait_for(job["id"], "video.succeeded")
        # The webhook is signed with the tenant's secret over timestamp + raw body.
        verify_signature(deployment.acme["webhook_secret"], headers["Talkinghead-Signature"], body)
        with pytest.raises(Exception, match="does not match"):
            verify_signature(deployment.other["webhook_secret"], headers["Talkinghead-Signature"], body)
        payload = json.loads(body)["data"]["object"]
        assert payload["status"] == "succeeded" and payload["output"]["sha256"] == done["output"]["sha256"]
        assert payload["qa"]["status"] == done["qa"]["status"]
        path = client.download(job["id"], tmp_path / "out.mp4")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == done["output"]["sha256"]
        verified = verify_video(path)
        assert verified.valid, verified.errors
        assert verified.qa_verdict["status"] == done["qa"]["status"] in ("pass", "pass_with_unavailable",
                                                                         "needs_review")
        assert verified.generation["job_id"] == job["id"]
        report = client.report(job["id"])
        assert report["qa_report"]["schema_version"] == "1.0" and report["delivery"]["signed"]
        assert report["job_report"]["verdict"] == "accepted"
        (delivery,) = client.webhooks(job["id"])
        assert delivery["state"] == "delivered" and delivery["attempts"][0]["status_code"] == 200
        assert done["output"]["frames"] == done["frames_done"] == done["total_frames"] == 60
        assert done["photo"]["faces"] == 1
    print(f"\nsubmit {submit_s * 1000:.0f} ms; submit -> succeeded {job_s:.1f} s "
          f"({done['output']['frames']} frames, {done['output']['bytes']} bytes)")


def test_output_cache_serves_the_same_video_for_the_same_request(deployment, samples):
    photo, audio = _files(samples)
    with deployment.client() as client:
        started = time.perf_counter()
        job = client.submit(photo, audio, parameters={**PARAMS, "seed": 0})  # seed 0 is the default: same key
        done = client.wait(job["id"], timeout_s=120, poll_s=0.1)
        elapsed = time.perf_counter() - started
        assert done["output"]["cache"] == "hit" and done["output"]["cached_from"] != job["id"]
        first = client.status(done["output"]["cached_from"])
        assert done["output"]["sha256"] == first["output"]["sha256"]
    print(f"\ncache hit: submit -> succeeded {elapsed:.2f} s")


def test_submit_with_an_output_size_gets_a_1080p_mp4(deployment, samples, tmp_path):
    """`talkinghead submit --output-width 1920 --output-height 1080`: the gateway's allow-list and the CLI's flags
    both come from the request contract, so the size reaches the worker, whose encoder scales the accepted frames."""
    photo, audio = samples / "astronaut.png", samples / "speech.wav"
    out = tmp_path / "hd.mp4"
    result = subprocess.run(CLI + ["submit", str(photo), str(audio), "--gateway", deployment.gateway.url, "--api-key",
                                   deployment.acme["api_key"], "-o", str(out), "--width", "256", "--height", "256",
                                   "--fps", "10", "--max-duration", "2", "--output-width", "1920",
                                   "--output-height", "1080"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    info = probe(out)
    assert (info.width, info.height) == (1920, 1080) and info.frames == 20
    resize = json.loads(out.with_suffix(".qa.json").read_text())["post_processing"]["resize"]
    assert resize["status"] == "resized" and resize["to"] == [1920, 1080] and resize["from"] == [256, 256]
    assert resize["where"].startswith("encoder")


def test_polling_without_webhook_and_idempotency_key(deployment, samples):
    photo, audio = _files(samples)
    headers = {"Authorization": f"Bearer {deployment.acme['api_key']}", "Idempotency-Key": "order-42"}
    files = {"photo": ("a.png", photo), "audio": ("s.wav", audio)}
    data = {"parameters": json.dumps({**PARAMS, "seed": 1})}
    first = httpx.post(f"{deployment.gateway.url}/v1/videos", headers=headers, files=files, data=data, timeout=60)
    second = httpx.post(f"{deployment.gateway.url}/v1/videos", headers=headers, files=files, data=data, timeout=60)
    assert first.status_code == 202 and second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true" and first.json()["id"] == second.json()["id"]
    assert first.headers["Location"] == f"/v1/videos/{first.json()['id']}"
    reuse = httpx.post(f"{deployment.gateway.url}/v1/videos", headers=headers, files=files,
                       data={"parameters": json.dumps({**PARAMS, "seed": 2})}, timeout=60)
    assert reuse.status_code == 422 and reuse.json()["error"]["code"] == "idempotency_key_reused"
    seen = []
    with deployment.client() as client:
        done = client.wait(first.json()["id"], on_progress=lambda job: seen.append(job["status"]), poll_s=0.2,
                           timeout_s=300)
    assert done["status"] == "succeeded" and done["output"]["cache"] == "miss" and done["attempts"] == 1
    assert seen[-1] == "succeeded" and set(seen) <= {"queued", "running", "succeeded"}


def test_wrong_key_401_and_other_tenants_job_404(deployment, samples):
    photo, audio = _files(samples)
    with deployment.client() as client:
        job = client.submit(photo, audio, parameters=PARAMS)  # a cache hit: cheap
        client.wait(job["id"], timeout_s=120)
    url = f"{deployment.gateway.url}/v1/videos/{job['id']}"
    for headers in ({}, {"Authorization": "Bearer thk_" + "x" * 43}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
    with deployment.client(deployment.other) as other:
        for call in (lambda: other.status(job["id"]), lambda: other.report(job["id"]),
                     lambda: other.cancel(job["id"]), lambda: other.download(job["id"], "/tmp/never.mp4")):
            with pytest.raises(GatewayError) as caught:
                call()
            assert caught.value.status == 404 and caught.value.code == "not_found"
    assert not Path("/tmp/never.mp4").exists()


def test_oversize_upload_is_413_with_a_clear_message(deployment, samples):
    headers = {"Authorization": f"Bearer {deployment.acme['api_key']}"}
    big = os.urandom(MAX_UPLOAD + 1)
    response = httpx.post(f"{deployment.gateway.url}/v1/videos", headers=headers, timeout=60,
                          files={"photo": ("big.png", big), "audio": ("s.wav", (samples / "speech.wav").read_bytes())})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "upload_too_large"
    assert error["message"].startswith("photo is larger than the limit of 5.0 MiB per file")
    # Over the whole-request limit by Content-Length: refused before a byte of the body is read.
    huge = httpx.post(f"{deployment.gateway.url}/v1/videos", timeout=60,
                      headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
                      content=b"x" * (3 * MAX_UPLOAD + 200_000))
    assert huge.status_code == 413 and "per file" in huge.json()["error"]["message"]


def test_rejected_photo_fails_with_the_servers_message_and_is_refused_at_submit_next_time(deployment, receiver,
                                                                                          samples):
    profile, audio = (samples / "profile.png").read_bytes(), (samples / "speech.wav").read_bytes()
    with deployment.client() as client:
        job = client.submit(profile, audio, parameters=PARAMS, webhook_url=receiver.url)
        failed = client.wait(job["id"], timeout_s=120, raise_on_failure=False)
        assert failed["status"] == "failed" and failed["attempts"] == 1
        assert "front-facing" in failed["error"]["message"]
        headers, body = receiver.wait_for(job["id"], "video.failed")
        verify_signature(deployment.acme["webhook_secret"], headers["Talkinghead-Signature"], body)
        assert json.loads(body)["data"]["object"]["error"] == failed["error"]
        started = time.perf_counter()
        with pytest.raises(GatewayError) as caught:  # the embedding cache knows this photo: no queue, no Triton
            client.submit(profile, audio, parameters=PARAMS)
        assert time.perf_counter() - started < 2.0
    assert caught.value.status == 422 and caught.value.code == failed["error"]["code"]
    assert caught.value.message == failed["error"]["message"]


def test_webhook_to_loopback_is_refused_without_an_allowlist(deployment, samples):
    photo, audio = _files(samples)
    with deployment.client() as client, pytest.raises(GatewayError) as caught:
        client.submit(photo, audio, parameters=PARAMS, webhook_url="http://169.254.169.254/latest/meta-data")
    assert caught.value.status == 422 and "link-local" in caught.value.message


def test_cancel_a_running_job(deployment, samples):
    photo, audio = _files(samples)
    with deployment.client() as client:
        job = client.submit(photo, audio, parameters={**PARAMS, "seed": 3})
        _wait_running(client, job["id"])
        cancelled = client.cancel(job["id"])
        assert cancelled["cancel_requested"] and cancelled["status"] in ("running", "cancelled")
        done = client.wait(job["id"], timeout_s=120, raise_on_failure=False)
        assert done["status"] == "cancelled" and done["error"]["code"] == "cancelled"
        with pytest.raises(GatewayError) as caught:
            client.download(job["id"], "/tmp/cancelled.mp4")
        assert caught.value.status == 409


def test_kill9_mid_job_then_restart_completes_the_job(fast_keepalive_server, samples, tmp_path):
    """A gateway of its own in front of the server whose video_generator takes at least 1.2 s per chunk
    (tests/keepalive_server.py): the job (4 chunks) is still streaming a second after it started on any machine,
    where with the session's server only a machine slower than a few seconds per job guaranteed it."""
    config = _write_config(tmp_path / "gateway.toml", tmp_path / "data", fast_keepalive_server.grpc_url,
                           fast_keepalive_server.weights)
    tenant = add_tenant(config, "acme")
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        photo, audio = _files(samples)
        with GatewayClient(gateway.url, tenant["api_key"], timeout_s=60) as client:
            job = client.submit(photo, audio, parameters={**PARAMS, "seed": 4})
            _wait_running(client, job["id"])
        time.sleep(1.0)
        gateway.kill9()  # mid-job: no shutdown handler runs
        gateway = GatewayProcess(config, gateway.log).start()
        with GatewayClient(gateway.url, tenant["api_key"], timeout_s=60) as client:
            done = client.wait(job["id"], timeout_s=300, poll_s=0.25)
            assert done["status"] == "succeeded" and done["attempts"] == 2
            path = client.download(job["id"], tmp_path / "resumed.mp4")
    finally:
        gateway.stop()
    assert verify_video(path).valid


def test_sigterm_drains_the_running_job(deployment, samples):
    photo, audio = _files(samples)
    with deployment.client() as client:
        job = client.submit(photo, audio, parameters={**PARAMS, "seed": 5})
        _wait_running(client, job["id"])
    # uvicorn shuts down gracefully (the lifespan drains the running job), then re-raises SIGTERM to exit.
    assert deployment.gateway.stop(timeout=120) in (0, -signal.SIGTERM)
    assert "handed" not in deployment.gateway.log.read_text()  # nothing had to be handed back to the queue
    deployment.gateway = GatewayProcess(deployment.config, deployment.gateway.log).start()
    with deployment.client() as client:
        done = client.status(job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1


def test_cli_submit_through_the_sdk(deployment, samples, tmp_path):
    out = tmp_path / "cli.mp4"
    result = subprocess.run(
        CLI + ["submit", str(samples / "astronaut.png"), str(samples / "speech.wav"), "--gateway",
               deployment.gateway.url, "--width", "256", "--height", "256", "--fps", "10", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TALKINGHEAD_API_KEY": deployment.acme["api_key"]})
    assert result.returncode == 0, result.stderr
    assert "signed" in result.stdout and out.stat().st_size > 10_000
    assert json.loads(out.with_suffix(".qa.json").read_text())["schema_version"] == "1.0"
    assert verify_video(out).valid


def test_tritonserver_down_nothing_accepted_is_lost_and_s3_storage(triton_server, samples, tmp_path, monkeypatch):
    """Jobs accepted while tritonserver is unreachable wait in the queue (no attempt is burnt) and run once a
    gateway can reach it; this deployment keeps its objects in S3 (moto's S3 server on loopback)."""
    server_module = pytest.importorskip("moto.server")
    s3_port = free_port()
    s3 = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)  # for boto3 here and in the gateway processes
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}").create_bucket(Bucket="videos")
    storage = f'[storage]\nkind = "s3"\nbucket = "videos"\nprefix = "th"\nendpoint_url = "http://127.0.0.1:{s3_port}"'
    dead = _write_config(tmp_path / "dead.toml", tmp_path / "data", f"127.0.0.1:{free_port()}", None, storage)
    tenant = add_tenant(dead, "acme")
    gateway = GatewayProcess(dead, tmp_path / "gateway.log").start()
    try:
        photo, audio = _files(samples)
        with GatewayClient(gateway.url, tenant["api_key"]) as client:
            job = client.submit(photo, audio, parameters=PARAMS)
            time.sleep(3.0)
            waiting = client.status(job["id"])
            assert waiting["status"] == "queued" and waiting["attempts"] == 0
            ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["triton_ready"] is False
        assert gateway.stop(timeout=60) in (0, -signal.SIGTERM)
        live = _write_config(tmp_path / "live.toml", tmp_path / "data", triton_server.grpc_url,
                             triton_server.weights, storage)
        gateway = GatewayProcess(live, tmp_path / "gateway.log").start()
        with GatewayClient(gateway.url, tenant["api_key"]) as client:
            done = client.wait(job["id"], timeout_s=300, poll_s=0.25)
            assert done["status"] == "succeeded" and done["attempts"] == 1
            path = client.download(job["id"], tmp_path / "s3.mp4")
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}").list_objects_v2(
            Bucket="videos")["Contents"]]
        assert f"th/tenants/{tenant['tenant_id']}/jobs/{job['id']}/video.mp4" in keys
        assert not (tmp_path / "data" / "objects").exists()
        assert verify_video(path).valid
    finally:
        gateway.stop()
        s3.stop()
