"""Webhook signatures, the SSRF guard (IPv4, IPv6, DNS rebinding) and retried deliveries with recorded attempts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from client.gateway.settings import WebhookSettings
from client.gateway.store import DELIVERED, FAILED, QUEUED, Job, JobStore, WebhookEvent, new_id
from client.gateway.webhooks import (
    GuardedBackend,
    SignatureError,
    TargetGuard,
    WebhookDispatcher,
    WebhookSender,
    WebhookTargetRefused,
    backoff_delay,
    refusal_reason,
    sign,
    verify_signature,
)

SECRET = "whsec_test"


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"id":"whd_1"}'
    header = sign(SECRET, body, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(SECRET, header, body, now=1_700_000_100) == 1_700_000_000


@pytest.mark.parametrize("mutate, message", [
    (lambda h, b: (h, b + b" "), "does not match"),
    (lambda h, b: (h.replace("v1=", "v1=0"), b), "does not match"),
    (lambda h, b: ("t=abc,v1=00", b), "malformed"),
    (lambda h, b: (None, b), "no Talkinghead-Signature"),
    (lambda h, b: (h.replace("t=1700000000", "t=1700000001"), b), "does not match"),
])
def test_tampering_is_detected(mutate, message):
    body = b'{"a":1}'
    header, body = mutate(sign(SECRET, body, 1_700_000_000), body)
    with pytest.raises(SignatureError, match=message):
        verify_signature(SECRET, header, body, now=1_700_000_000)


def test_stale_timestamps_and_rotation():
    body = b"{}"
    header = sign(SECRET, body, 1_700_000_000)
    with pytest.raises(SignatureError, match="replay"):
        verify_signature(SECRET, header, body, tolerance_s=300, now=1_700_000_301)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature("whsec_other", header, body, now=1_700_000_000)
    assert verify_signature(["whsec_new", SECRET], header, body, now=1_700_000_000)


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("100.64.0.1", "not globally routable"), ("192.0.2.10", "private"), ("240.0.0.1", "reserved"),
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("fc00::1", "private"),
    ("fd12:3456::1", "private"), ("ff02::1", "multicast"), ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1"),
    ("::ffff:10.0.0.1", "private (IPv4"), ("2002:7f00:1::", "loopback (IPv4 127.0.0.1"),
    ("2002:a9fe:a9fe::", "link-local (IPv4 169.254.169.254"), ("64:ff9b::a00:1", "private (IPv4 10.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback (IPv4 127.0.0.1"),  # Teredo, client 127.0.0.1
])
def test_internal_addresses_are_refused(address, reason):
    assert refusal_reason(ipaddress.ip_address(address)).startswith(reason)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "2002:808:808::", "64:ff9b::808:808"])
def test_public_addresses_pass(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


def _resolver(answers: dict[str, list[list[str]]]):
    """A fake DNS: each lookup of a name returns its next answer (the last one repeats)."""
    calls: dict[str, int] = {}

    async def resolve(host: str, port: int) -> list[str]:
        index = calls.get(host, 0)
        calls[host] = index + 1
        options = answers[host]
        return options[min(index, len(options) - 1)]

    resolve.calls = calls
    return resolve


def _run(coro):
    return asyncio.run(coro)


def test_guard_checks_every_resolved_address_and_the_allowlist():
    guard = TargetGuard(WebhookSettings(allow=("10.9.0.0/16", "hooks.internal")), _resolver({
        "public.example": [["93.184.216.34"]],
        "mixed.example": [["93.184.216.34", "10.0.0.5"]],
        "v6.example": [["::1"]],
        "internal.example": [["10.9.1.1"]],
        "hooks.internal": [["192.168.7.7"]],
    }))
    assert _run(guard.resolve("public.example", 443)) == "93.184.216.34"
    with pytest.raises(WebhookTargetRefused, match="10.0.0.5, which is a private"):
        _run(guard.resolve("mixed.example", 443))
    with pytest.raises(WebhookTargetRefused, match="loopback"):
        _run(guard.resolve("v6.example", 443))
    assert _run(guard.resolve("internal.example", 80)) == "10.9.1.1"  # allowlisted network
    assert _run(guard.resolve("hooks.internal", 80)) == "192.168.7.7"  # allowlisted host
    with pytest.raises(WebhookTargetRefused, match="169.254.169.254 is a link-local"):
        _run(guard.check_url("http://169.254.169.254/latest/meta-data"))
    with pytest.raises(WebhookTargetRefused, match=r"\[?::ffff:127.0.0.1\]? is a loopback|::ffff:127.0.0.1"):
        _run(guard.check_url("http://[::ffff:127.0.0.1]:8080/"))


@pytest.mark.parametrize("url, message", [
    ("ftp://example.com/x", "must start with https://"), ("file:///etc/passwd", "must start with https://"),
    ("https://user:pw@example.com/", "user name or password"), ("https:///path", "no host"),
    ("https://example.com:99999/", "invalid port"), ("https://example.com:0/", "port 0"),
    ("https://example.com/a\r\nX-Injected: 1", "control characters"), ("https://example.com/\x00", "control"),
    ("https://example.com/a b", "spaces"),
])
def test_malformed_urls_are_refused(url, message):
    with pytest.raises(WebhookTargetRefused, match=message):
        TargetGuard.parse(url)


class _RecordingBackend:
    """Stands in for the real network: records where a connection would have gone."""

    def __init__(self) -> None:
        self.connected: list[tuple[str, int]] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connected.append((host, port))
        raise ConnectionRefusedError("recorded only")

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)


def test_dns_rebinding_is_caught_at_connect_time():
    """The name is public when the job is submitted, then rebinds to loopback: the connection is refused, and
    the socket only ever targets the address that was checked."""
    resolver = _resolver({"rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})
    guard = TargetGuard(WebhookSettings(), resolver)
    _run(guard.check_url("https://rebind.example/hook"))  # submit-time check passes
    inner = _RecordingBackend()
    backend = GuardedBackend(guard, inner)
    with pytest.raises(WebhookTargetRefused, match="rebind.example resolves to 127.0.0.1"):
        _run(backend.connect_tcp("rebind.example", 443))
    assert inner.connected == []  # nothing was opened towards the rebound address

    stable = GuardedBackend(TargetGuard(WebhookSettings(), _resolver({"ok.example": [["93.184.216.34"]]})), inner)
    with pytest.raises(ConnectionRefusedError):
        _run(stable.connect_tcp("ok.example", 443))
    assert inner.connected == [("93.184.216.34", 443)]  # the checked address, not a second lookup


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(1)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 100.0)):
        delays = [backoff_delay(attempt, 2.0, 100.0, rng) for _ in range(200)]
        assert 0.0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread over the whole range


class _Receiver(BaseHTTPRequestHandler):
    statuses: list[int] = []
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.statuses, _Receiver.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, _Receiver
    server.shutdown()


def _finished_job(store: JobStore, url: str) -> Job:
    tenant = store.create_tenant("acme", 10, 1, 1.0, 1)
    job = Job(id=new_id("vid"), tenant_id=tenant.id, state=QUEUED, parameters={}, inputs={}, request_hash="h",
              webhook_url=url, next_attempt_at=0.0, created_at=1.0, updated_at=1.0)
    store.create_job(job)
    store.claim_job("w", 30)
    store.finish_job(job.id, "w", "succeeded", webhook=WebhookEvent("video.succeeded", url, {"object": {"id": job.id}}))
    return job


def test_delivery_retries_with_backoff_records_attempts_and_signs(tmp_path, receiver):
    server, handler = receiver
    handler.statuses = [500, 503]  # two failures, then 200
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    store = JobStore(f"sqlite:///{tmp_path / 'g.db'}")
    job = _finished_job(store, url)
    settings = WebhookSettings(allow=("127.0.0.1/32",), backoff_base_s=0.05, backoff_max_s=0.1, max_attempts=5)

    async def deliver():
        sender = WebhookSender(settings, TargetGuard(settings))
        dispatcher = WebhookDispatcher(store, sender, settings, lambda tenant: SECRET, "d1")
        for _ in range(40):
            await dispatcher.run_once()
            if store.deliveries(job.tenant_id, job.id)[0]["state"] == DELIVERED:
                break
            await asyncio.sleep(0.05)
        await sender.close()

    asyncio.run(deliver())
    (delivery,) = store.deliveries(job.tenant_id, job.id)
    assert delivery["state"] == DELIVERED
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500", "HTTP 503", None]
    assert len(handler.received) == 3
    ids = {headers["Talkinghead-Webhook-Id"] for headers, _ in handler.received}
    assert ids == {delivery["id"]}  # the same id on every retry: receivers deduplicate on it
    headers, body = handler.received[-1]
    verify_signature(SECRET, headers["Talkinghead-Signature"], body)
    payload = json.loads(body)
    assert payload["type"] == "video.succeeded" and payload["data"]["object"]["id"] == job.id
    store.close()


def test_refused_targets_fail_without_a_connection(tmp_path, receiver):
    server, handler = receiver
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"  # loopback, not allowlisted this time
    store = JobStore(f"sqlite:///{tmp_path / 'g.db'}")
    job = _finished_job(store, url)
    settings = WebhookSettings(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.01)

    async def deliver():
        sender = WebhookSender(settings, TargetGuard(settings))
        dispatcher = WebhookDispatcher(store, sender, settings, lambda tenant: SECRET, "d1")
        for _ in range(20):
            await dispatcher.run_once()
            await asyncio.sleep(0.02)
        await sender.close()

    asyncio.run(deliver())
    (delivery,) = store.deliveries(job.tenant_id, job.id)
    assert delivery["state"] == FAILED and len(delivery["attempts"]) == 2
    assert "loopback" in delivery["attempts"][0]["error"]
    assert handler.received == []
    store.close()
