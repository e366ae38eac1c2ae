"""The gateway's part: SSRF attempts on webhooks (IPv4, IPv6, encodings, DNS rebinding), tenant isolation, API key
brute force, and a webhook receiver that is down for an hour. (The gateway or tritonserver killed mid-job with
nothing lost is tests/integration/test_gateway.py; load is test_gateway_load.py.)"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from gateway_harness import Gateway, GatewayProcess, add_tenant, write_config

from client.gateway import store as store_module
from client.gateway import webhooks as webhooks_module
from client.gateway.settings import WebhookSettings
from client.gateway.store import DELIVERED, FAILED, Job, JobStore, WebhookEvent, new_id
from client.gateway.webhooks import GuardedBackend, TargetGuard, WebhookDispatcher, WebhookSender, WebhookTargetRefused
from client.server import free_port

from .corpus import photo_png, speech_wav

SMALL = '{"fps": 5, "width": 128, "height": 128, "max_duration_s": 2}'


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-reliability")
    # Brute-force guard tuned for a quick test: 5 failures, then one more per second.
    config = write_config(folder / "gateway.toml", folder / "data", triton_server.grpc_url, triton_server.weights,
                          "[limits]\nfailed_auth_burst = 5\nfailed_auth_per_minute = 60\n")
    tenants = {"acme": add_tenant(config, "acme"), "rival": add_tenant(config, "rival")}
    process = GatewayProcess(config, folder / "gateway.log").start()
    yield Gateway(config, process, tenants)
    process.stop()


def _submit(gateway: Gateway, tenant: str, webhook_url: str | None = None, key: str | None = None) -> httpx.Response:
    data = {"parameters": SMALL}
    if webhook_url is not None:
        data["webhook_url"] = webhook_url
    headers = gateway.headers(tenant)
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{gateway.url}/v1/videos", headers=headers, data=data, timeout=60,
                      files={"photo": ("photo.png", photo_png(), "image/png"),
                             "audio": ("speech.wav", speech_wav(), "audio/wav")})


# Each aims at the gateway's own host or network, written a different way.
SSRF_TARGETS = (
    "http://127.0.0.1:8080/hook", "http://127.1/hook", "http://2130706433/hook", "http://0x7f000001/hook",
    "http://0177.0.0.1/hook", "http://localhost/hook", "http://localhost./hook", "http://LOCALHOST:80/hook",
    "http://[::1]/hook", "http://[::ffff:127.0.0.1]/hook", "http://[::ffff:7f00:1]/hook", "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/hook", "http://0.0.0.0/hook", "http://[::]/hook", "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hook", "http://10.0.0.1/hook", "http://172.16.0.1/hook", "http://192.168.1.1/hook",
    "http://100.64.0.1/hook", "http://[fc00::1]/hook", "http://224.0.0.1/hook", "http://198.18.0.1/hook",
    "http://user:secret@example.com/hook", "http://example.com@127.0.0.1/hook", "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO", "ftp://127.0.0.1/", "http:///hook", "http://127.0.0.1:99999/hook",
)


@pytest.mark.integration
def test_ssrf_webhook_targets_are_refused_at_submit(gateway, ledger):
    refused = []
    for url in SSRF_TARGETS:
        started = time.monotonic()
        response = _submit(gateway, "acme", webhook_url=url)
        body = response.json()
        outcome = "refused" if response.status_code == 422 else f"http_{response.status_code}"
        ledger.record("gateway_security", f"ssrf-{url}", "refused", outcome, time.monotonic() - started,
                      message=body.get("error", {}).get("message", "")[:200])
        assert response.status_code == 422, (url, body)
        assert "webhook" in body["error"]["message"], (url, body)
        refused.append(url)
    assert len(refused) == len(SSRF_TARGETS)


def test_dns_rebinding_is_checked_on_the_address_connected_to(ledger):
    """A name that resolves to a public address at submit and to loopback at delivery is refused at connect."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def flipping(host, port):
        return next(answers)

    class Inner:
        async def connect_tcp(self, *args, **kwargs):  # pragma: no cover - must never be reached
            raise AssertionError("connected to a rebinding target")

    guard = TargetGuard(WebhookSettings(), flipping)
    asyncio.run(guard.check_url("https://rebind.example/hook"))  # submit: public, accepted
    with pytest.raises(WebhookTargetRefused, match="loopback"):
        asyncio.run(GuardedBackend(guard, Inner()).connect_tcp("rebind.example", 443))
    ledger.record("gateway_security", "ssrf-dns_rebinding_to_loopback", "refused", "refused", 0.0)


@pytest.mark.integration
def test_tenants_see_nothing_of_each_other(gateway, ledger):
    submitted = _submit(gateway, "acme", key="shared-key-1")
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    with httpx.Client(base_url=gateway.url, headers=gateway.headers("acme"), timeout=60) as acme:
        deadline = time.monotonic() + 300
        while acme.get(f"/v1/videos/{job_id}").json()["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.5)
        assert acme.get(f"/v1/videos/{job_id}").json()["status"] == "succeeded"
    probes = {"status": ("GET", f"/v1/videos/{job_id}"), "content": ("GET", f"/v1/videos/{job_id}/content"),
              "report": ("GET", f"/v1/videos/{job_id}/report"), "webhooks": ("GET", f"/v1/videos/{job_id}/webhooks"),
              "cancel": ("DELETE", f"/v1/videos/{job_id}")}
    with httpx.Client(base_url=gateway.url, headers=gateway.headers("rival"), timeout=60) as rival:
        for name, (method, path) in probes.items():
            response = rival.request(method, path)
            ledger.record("gateway_security", f"tenant_isolation-{name}", "http_404", f"http_{response.status_code}",
                          0.0)
            assert response.status_code == 404, (name, response.text)
            assert job_id not in response.text or "no video" in response.text
    # The same idempotency key from another tenant is another job, not a replay of acme's.
    again = _submit(gateway, "rival", key="shared-key-1")
    ledger.record("gateway_security", "tenant_isolation-idempotency_key", "new_job",
                  "new_job" if again.status_code == 202 and again.json()["id"] != job_id else "replayed", 0.0)
    assert again.status_code == 202 and again.json()["id"] != job_id
    # Identical inputs from the other tenant are not served from acme's output cache.
    with httpx.Client(base_url=gateway.url, headers=gateway.headers("rival"), timeout=60) as rival:
        deadline = time.monotonic() + 300
        while (view := rival.get(f"/v1/videos/{again.json()['id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.5)
    cache = (view.get("output") or {}).get("cache")
    ledger.record("gateway_security", "tenant_isolation-output_cache", "not_shared",
                  "not_shared" if view.get("output", {}).get("cached_from") != job_id else "shared", 0.0, cache=cache)
    assert view["status"] == "succeeded" and view["output"].get("cached_from") != job_id


@pytest.mark.integration
def test_reports_name_files_not_server_paths(gateway, tmp_path, ledger):
    """What a tenant reads (the job, its QA report, pre-processing report and delivery details) names weights,
    logs and files by name only: no path of the gateway's data, staging or audit log, nor of the server's
    weights or packages (issue 21)."""
    submitted = _submit(gateway, "acme", key="report-paths")
    assert submitted.status_code in (200, 202), submitted.text
    job_id = submitted.json()["id"]
    with httpx.Client(base_url=gateway.url, headers=gateway.headers("acme"), timeout=60) as acme:
        deadline = time.monotonic() + 300
        while (view := acme.get(f"/v1/videos/{job_id}")).json()["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.5)
        report = acme.get(f"/v1/videos/{job_id}/report")
    assert view.json()["status"] == "succeeded" and report.status_code == 200, report.text
    text = view.text + report.text
    server_paths = sorted({path for path in re.findall(r'"(/[^"]*/[^"]*)"', text) if not path.startswith("/v1/")} | {
        place for place in (str(gateway.config.parent), "/site-packages/", "/tmp/", "/root/", "/home/")
        if place in text})
    ledger.record("gateway_security", "report_paths-job_and_report", "names_only",
                  "names_only" if not server_paths else "server_paths", 0.0, paths=server_paths[:5])
    assert not server_paths, server_paths
    body = report.json()
    # Still named (the audit chain lives in the gateway's database by default, delivery.audit_store), never located.
    assert body["delivery"]["audit"]["log"] == "the gateway's sqlite database (table audit_records)"


@pytest.mark.integration
def test_gateway_killed_mid_job_the_job_completes_after_restart(triton_server, tmp_path, ledger):
    """kill -9 of the gateway while it streams a job: after a restart the job's lease expires, it runs again and
    succeeds; the client sees one job throughout."""
    config = write_config(tmp_path / "gateway.toml", tmp_path / "data", triton_server.grpc_url,
                          triton_server.weights)
    tenant = add_tenant(config, "acme")
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    process = GatewayProcess(config, tmp_path / "gateway.log").start()
    started = time.monotonic()
    try:
        submitted = httpx.post(f"{process.url}/v1/videos", headers=headers, timeout=60,
                               data={"parameters": '{"fps": 5, "width": 128, "height": 128, "seed": 11}'},
                               files={"photo": ("photo.png", photo_png(), "image/png"),
                                      "audio": ("speech.wav", speech_wav(), "audio/wav")})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{process.url}/v1/videos/{job_id}", headers=headers).json()["status"] != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        process.kill9()
        process = GatewayProcess(config, tmp_path / "gateway.log")
        process.start()
        deadline = time.monotonic() + 300
        while (view := httpx.get(f"{process.url}/v1/videos/{job_id}", headers=headers).json())["status"] not in (
                "succeeded", "failed"):
            assert time.monotonic() < deadline, "the job did not finish after the restart"
            time.sleep(0.5)
    finally:
        process.stop()
    ledger.record("gateway_fault", "gateway_kill_9_mid_job", "succeeded", view["status"], time.monotonic() - started,
                  lost=view["status"] != "succeeded", runs=view["attempts"])
    assert view["status"] == "succeeded" and view["attempts"] >= 2, view


@pytest.mark.integration
def test_api_key_brute_force_is_rate_limited(gateway, ledger):
    """Guessing keys: 5 failures, then 429 with Retry-After for every wrong key from that address; a right key
    from the same address is never refused (issue 21: behind an ingress every client shares one address), and
    once the bucket refills, wrong keys are checked (401) again. Runs last in this module (it locks out
    127.0.0.1 for wrong keys)."""
    statuses = []
    started = time.monotonic()
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(40):
            guess = "thk_" + secrets.token_urlsafe(32)
            statuses.append(client.get("/v1/videos/vid_x", headers={"Authorization": f"Bearer {guess}"}).status_code)
        right_key = client.get("/v1/videos/vid_unknown", headers=gateway.headers("acme"))
        locked = client.get("/v1/videos/vid_x", headers={"Authorization": f"Bearer thk_{secrets.token_urlsafe(32)}"})
        retry_after = float(locked.headers.get("retry-after", "0"))
        time.sleep(retry_after + 0.2)
        unlocked = client.get("/v1/videos/vid_x", headers={"Authorization": f"Bearer thk_{secrets.token_urlsafe(32)}"})
    guesses_checked = statuses.count(401)
    ledger.record("gateway_security", "api_key_brute_force", "rate_limited",
                  "rate_limited" if statuses.count(429) >= 30 else "not_limited", time.monotonic() - started,
                  guesses=len(statuses), checked=guesses_checked, refused_429=statuses.count(429),
                  retry_after_s=retry_after, right_key_during_lockout=right_key.status_code)
    assert guesses_checked <= 6 and statuses.count(429) >= 30, statuses
    assert right_key.status_code == 404  # authenticated: an unknown job of acme's
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "auth_rate_limited" and retry_after >= 1
    assert unlocked.status_code == 401  # checked again once the bucket refilled


# -- a webhook receiver that is down for an hour ----------------------------------------------------------------
class _Clock:
    """time.time() for the store and the dispatcher, moved by the test; everything else keeps real time."""

    perf_counter = staticmethod(time.perf_counter)
    monotonic = staticmethod(time.monotonic)

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


class _Receiver(BaseHTTPRequestHandler):
    up_at = float("inf")
    clock: _Clock
    received: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        up = self.clock.now >= self.up_at
        if up:
            type(self).received.append(self.clock.now)
        self.send_response(200 if up else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def _outage(tmp_path, monkeypatch, receiver_url: str, clock: _Clock, horizon_s: float) -> tuple[dict, str]:
    """Run the dispatcher with the webhook settings' defaults until the delivery ends or `horizon_s` passes."""
    monkeypatch.setattr(webhooks_module, "time", clock)
    monkeypatch.setattr(store_module, "time", clock)
    store = JobStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    tenant = store.create_tenant("acme", 10, 1, 1.0, 1)
    job = Job(id=new_id("vid"), tenant_id=tenant.id, state="queued", parameters={}, inputs={}, request_hash="h",
              webhook_url=receiver_url, next_attempt_at=0.0, created_at=clock.now, updated_at=clock.now)
    store.create_job(job)
    store.claim_job("w", 30)
    store.finish_job(job.id, "w", "succeeded",
                     webhook=WebhookEvent("video.succeeded", receiver_url, {"object": {"id": job.id}}))
    settings = WebhookSettings(allow=("127.0.0.1/32",))  # defaults otherwise: attempts, backoff, timeout
    start = clock.now

    async def run():
        sender = WebhookSender(settings, TargetGuard(settings))
        dispatcher = WebhookDispatcher(store, sender, settings, lambda tenant_id: "whsec_test", "d1")
        dispatcher.rng.seed(7)
        while clock.now - start < horizon_s:
            if not await dispatcher.run_once():
                row = store.db.read("SELECT state, next_attempt_at FROM webhook_deliveries WHERE job_id = ?",
                                    (job.id,))[0]
                if row["state"] in (DELIVERED, FAILED):
                    break
                clock.now = max(clock.now + 0.001, row["next_attempt_at"])
        await sender.close()

    asyncio.run(run())
    (delivery,) = store.deliveries(tenant.id, job.id)
    state = store.job(tenant.id, job.id).state
    store.close()
    return delivery, state


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there: connection refused


def test_webhook_receiver_down_for_an_hour_retries_then_gives_up(tmp_path, monkeypatch, ledger):
    clock = _Clock(1_800_000_000.0)
    delivery, job_state = _outage(tmp_path, monkeypatch, _closed_port_url(), clock, horizon_s=3 * 3600)
    attempts = delivery["attempts"]
    window = attempts[-1]["at"] - attempts[0]["at"]
    outcome = "failed_after_retries" if delivery["state"] == FAILED else delivery["state"]
    ledger.record("gateway_fault", "webhook_receiver_down_1h", "failed_after_retries", outcome, 0.0,
                  attempts=len(attempts), window_s=round(window, 1), job_state=job_state)
    assert delivery["state"] == FAILED and len(attempts) == WebhookSettings().max_attempts
    assert all(a["status_code"] is None and a["error"] for a in attempts)  # every refused connection recorded
    assert 53 * 60 <= window <= 108 * 60, window
    gaps = [b["at"] - a["at"] for a, b in zip(attempts, attempts[1:])]
    assert gaps[-1] >= 450 and gaps[0] <= 2.0, gaps
    assert job_state == "succeeded"  # the video is delivered all the same: the webhook is only the notice


def test_webhook_receiver_back_after_50_minutes_gets_the_event(tmp_path, monkeypatch, ledger):
    clock = _Clock(1_800_000_000.0)
    _Receiver.clock, _Receiver.up_at, _Receiver.received = clock, clock.now + 50 * 60, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        delivery, _ = _outage(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/hook", clock,
                              horizon_s=3 * 3600)
    finally:
        server.shutdown()
    attempts = delivery["attempts"]
    ledger.record("gateway_fault", "webhook_receiver_down_50min", "delivered", delivery["state"], 0.0,
                  attempts=len(attempts), delivered_after_s=round(attempts[-1]["at"] - attempts[0]["at"], 1))
    assert delivery["state"] == DELIVERED and [a["status_code"] for a in attempts][-1] == 200
    assert all(a["status_code"] == 503 for a in attempts[:-1]) and len(_Receiver.received) == 1
