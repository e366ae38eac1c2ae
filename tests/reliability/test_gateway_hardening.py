"""Issue 21, an adversarial pass over the gateway and the CLI, kept as regression cases: wrong keys that must never
lock out valid ones, quota and queue-cap races (SQLite and PostgreSQL), forwarded headers from untrusted peers,
slow and huge webhook answers, malformed submits, audit logs of garbage, impossible tenant limits, engines and
webhook URLs that cannot work, slow-loris clients, secrets in the access log, bidi characters in the audit log,
and pipes where files go. (Server paths in reports: test_gateway_reliability.py, which has a tritonserver.)

The gateways here have no tritonserver behind them (jobs are accepted and stay queued, which is what the quota and
queue-cap cases count) and short HTTP limits, so each case takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_harness import CLI, Gateway, GatewayProcess, add_tenant, write_config

from client.audit import AuditLog, head_path, printable, verify_log
from client.gateway.settings import WebhookSettings
from client.gateway.store import DELIVERED, Job, JobStore, WebhookEvent, new_id
from client.gateway.webhooks import TargetGuard, WebhookDispatcher, WebhookSender

from .conftest import assert_clear
from .corpus import photo_png, speech_wav

HEADER_TIMEOUT_S = BODY_TIMEOUT_S = 2.0
MIN_BODY_BYTES_PER_S = 1024
MAX_QUEUED = 3
TENANTS = {"acme": (), "rival": (), "quota2": ("--jobs-per-day", "2"), "quota3": ("--jobs-per-day", "3"),
           "queue": (), "once": ("--jobs-per-day", "1")}


def _gateway(folder: Path, http: str = "", database_url: str | None = None) -> Gateway:
    # No tritonserver (a closed port) and no caches: jobs are accepted and stay queued.
    extra = f"""embeddings = false
outputs = false
[http]
header_timeout_s = {HEADER_TIMEOUT_S}
body_timeout_s = {BODY_TIMEOUT_S}
min_body_bytes_per_s = {MIN_BODY_BYTES_PER_S}
{http}
[limits]
max_queued_jobs = {MAX_QUEUED}
failed_auth_burst = 5
failed_auth_per_minute = 60
"""
    from client.server import free_port

    config = write_config(folder / "gateway.toml", folder / "data", f"127.0.0.1:{free_port()}", None, extra,
                          database_url=database_url)
    tenants = {name: add_tenant(config, name, *options) for name, options in TENANTS.items()}
    return Gateway(config, GatewayProcess(config, folder / "gateway.log").start(), tenants)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """SQLite, and no trusted proxies (the default)."""
    gateway = _gateway(tmp_path_factory.mktemp("gateway-plain"))
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """Behind a proxy on 127.0.0.1 that it trusts: X-Forwarded-For names the client."""
    gateway = _gateway(tmp_path_factory.mktemp("gateway-proxied"), 'trusted_proxies = ["127.0.0.1"]')
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def on_postgres(tmp_path_factory, postgres_url):
    import psycopg

    name = f"gateway_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    gateway = _gateway(tmp_path_factory.mktemp("gateway-postgres"),
                       database_url=postgres_url.rsplit("/", 1)[0] + "/" + name)
    yield gateway
    gateway.process.stop()


def _log(gateway: Gateway) -> str:
    return gateway.process.log.read_text(errors="replace")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wrong_key() -> str:
    return "thk_" + secrets.token_urlsafe(32)


def _multipart(fields: dict[str, str] | None = None, boundary: str = "hardening") -> tuple[str, bytes]:
    """A submit's body, built by hand (to send it as slowly or in as many pieces as a case needs)."""
    parts = [('form-data; name="photo"; filename="photo.png"', b"Content-Type: image/png\r\n", photo_png()),
             ('form-data; name="audio"; filename="speech.wav"', b"Content-Type: audio/wav\r\n", speech_wav())]
    parts += [(f'form-data; name="{name}"', b"", value.encode()) for name, value in (fields or {}).items()]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode() + content_type + b"\r\n"
                    + data + b"\r\n" for disposition, content_type, data in parts)
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def _submit(gateway: Gateway, tenant: str, **fields: str) -> httpx.Response:
    files = {"photo": ("photo.png", photo_png(), "image/png"), "audio": ("speech.wav", speech_wav(), "audio/wav")}
    return httpx.post(f"{gateway.url}/v1/videos", headers=gateway.headers(tenant), data=fields, files=files,
                      timeout=60)


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}", response.text[:300]


# -- items 3 and 1: forwarded headers, failed authentications -------------------------------------------------
# (The untrusted-peer case first: it needs 127.0.0.1's failure bucket of the plain gateway still full.)


def test_forwarded_headers_from_an_untrusted_peer_change_nothing(plain, ledger):
    """Rotating X-Forwarded-For neither escapes the failed-authentication limit nor reaches the access log."""
    statuses, started = [], time.monotonic()
    with httpx.Client(base_url=plain.url, timeout=30) as client:
        for n in range(1, 21):
            statuses.append(client.get("/v1/videos/vid_x", headers={
                **_bearer(_wrong_key()), "X-Forwarded-For": f"198.51.100.{n}"}).status_code)
    forged = [n for n in range(1, 21) if f"198.51.100.{n}:" in _log(plain)]
    outcome = "ignored" if statuses.count(429) >= 14 and not forged else "believed"
    ledger.record("gateway_hardening", "forwarded_for-untrusted_peer-20_addresses", "ignored", outcome,
                  time.monotonic() - started, refused_429=statuses.count(429), checked_401=statuses.count(401),
                  forged_addresses_in_access_log=len(forged))
    assert statuses.count(401) <= 6 and statuses.count(429) >= 14, statuses
    assert not forged and '127.0.0.1:' in _log(plain)


def test_wrong_keys_never_lock_out_valid_keys(plain, ledger):
    """Every client behind one ingress shares an address: a flood of wrong keys from it is limited (429), and
    every tenant's valid key from the same address still works at once."""
    started = time.monotonic()
    with httpx.Client(base_url=plain.url, timeout=30) as client:
        wrong = [client.get("/v1/videos/vid_x", headers=_bearer(_wrong_key())).status_code for _ in range(30)]
        valid = {name: client.get("/v1/videos/vid_x", headers=plain.headers(name)).status_code
                 for name in ("acme", "rival", "quota2")}
        still_limited = client.get("/v1/videos/vid_x", headers=_bearer(_wrong_key()))
    ledger.record("gateway_hardening", "auth_limit-30_wrong_keys_one_address", "rate_limited",
                  "rate_limited" if wrong.count(429) >= 24 else "not_limited", time.monotonic() - started,
                  refused_429=wrong.count(429), checked_401=wrong.count(401))
    for name, status in valid.items():
        ledger.record("gateway_hardening", f"auth_limit-valid_key_from_the_limited_address-{name}", "accepted",
                      "accepted" if status == 404 else f"http_{status}", 0.0)
    assert wrong.count(429) >= 24, wrong
    assert all(status == 404 for status in valid.values()), valid  # authenticated: an unknown job of theirs
    assert still_limited.status_code == 429 and int(still_limited.headers["retry-after"]) >= 1


def test_trusted_proxy_forwards_addresses_and_keys_are_limited_per_prefix(proxied, ledger):
    """Behind a trusted proxy each client counts under its own address; one wrong key tried from many
    addresses counts under its prefix; a valid key gets in from a limited address."""
    started = time.monotonic()
    with httpx.Client(base_url=proxied.url, timeout=30) as client:
        def get(key: str, address: str) -> int:
            return client.get("/v1/videos/vid_x", headers={**_bearer(key), "X-Forwarded-For": address}).status_code

        one_address = [get(_wrong_key(), "198.51.100.1") for _ in range(10)]
        neighbour = get(_wrong_key(), "198.51.100.2")
        same_key = _wrong_key()
        many_addresses = [get(same_key, f"203.0.113.{n}") for n in range(1, 11)]
        valid = get(proxied.tenants["acme"]["api_key"], "198.51.100.1")
    seen = "198.51.100.1:" in _log(proxied) and "203.0.113.10:" in _log(proxied)
    cases = {"one_address_limited": ("rate_limited", "rate_limited" if one_address.count(429) >= 4 else
                                     "not_limited"),
             "other_address_not_limited": ("http_401", f"http_{neighbour}"),
             "one_key_many_addresses_limited": ("rate_limited", "rate_limited" if many_addresses.count(429) >= 4
                                                else "not_limited"),
             "valid_key_from_limited_address": ("accepted", "accepted" if valid == 404 else f"http_{valid}"),
             "client_address_in_access_log": ("forwarded", "forwarded" if seen else "proxy_address")}
    for name, (expected, outcome) in cases.items():
        ledger.record("gateway_hardening", f"forwarded_for-trusted_proxy-{name}", expected, outcome,
                      time.monotonic() - started)
    assert one_address.count(401) <= 6 and one_address.count(429) >= 4, one_address
    assert neighbour == 401 and valid == 404 and seen
    assert many_addresses.count(401) <= 6 and many_addresses.count(429) >= 4, many_addresses


# -- item 2: the daily quota and the queue cap under concurrent submits ------------------------------------------


def _race(gateway: Gateway, tenant: str, count: int, slow: bool) -> list[httpx.Response]:
    """`count` submits at once; `slow`: each sends half its body, waits for all the others to have done the same
    (all past the check before the upload), then the rest."""
    content_type, body = _multipart()
    start, halfway = threading.Barrier(count), threading.Barrier(count)
    headers = {**gateway.headers(tenant), "Content-Type": content_type}

    def one(_: int) -> httpx.Response:
        def pieces():
            yield body[: len(body) // 2]
            if slow:
                halfway.wait(timeout=30)
            yield body[len(body) // 2:]

        start.wait(timeout=30)
        return httpx.post(f"{gateway.url}/v1/videos", headers=headers, content=pieces() if slow else body,
                          timeout=60)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_quota_and_queue_cap_hold_under_concurrent_submits(database, request, ledger):
    gateway = request.getfixturevalue("plain" if database == "sqlite" else "on_postgres")
    cases = (("quota2", 10, True, 2, "quota_exceeded"), ("quota3", 12, False, 3, "quota_exceeded"),
             ("queue", 10, True, MAX_QUEUED, "queue_full"))
    for tenant, count, slow, limit, code in cases:
        started = time.monotonic()
        responses = _race(gateway, tenant, count, slow)
        accepted = [r.json()["id"] for r in responses if r.status_code == 202]
        refused = [_error(r)[0] for r in responses if r.status_code != 202]
        name = f"quota_race-{database}-{tenant}-{count}_{'slow' if slow else 'concurrent'}_submits"
        ledger.record("gateway_hardening", name, f"{limit}_accepted", f"{len(accepted)}_accepted",
                      time.monotonic() - started, refused=len(refused), codes=sorted(set(refused)))
        assert len(accepted) == limit and len(set(accepted)) == limit, (tenant, responses)
        assert refused == [code] * (count - limit), (tenant, refused)
        with httpx.Client(base_url=gateway.url, headers=gateway.headers(tenant), timeout=30) as client:
            assert all(client.get(f"/v1/videos/{job_id}").json()["status"] == "queued" for job_id in accepted)


# -- items 6 and 8: submits that must be 422s ---------------------------------------------------------------------

MALFORMED_PARAMETERS = {
    "nested_10000_deep": "[" * 10_000,
    "nested_5000_deep_in_a_value": '{"seed": ' + "[" * 5_000 + "]" * 5_000 + "}",
    "integer_of_5000_digits": '{"seed": ' + "9" * 5_000 + "}",
    "lone_surrogate_escape": '{"prompt": "\\ud800 hello"}',
    "huge_exponent": '{"guidance": 1e999999}',
    "nan": '{"fps": NaN}',
    "engine_path_traversal": '{"engine": "../../etc/passwd"}',
    "engine_absolute_path": '{"engine": "/etc/passwd"}',
    "engine_unknown": '{"engine": "wan-2.3"}',
}
REFUSED_WEBHOOKS = {"crlf": "https://hooks.example.com/a\r\nX-Injected: 1", "lf": "https://hooks.example.com/\nx",
                    "nul": "https://hooks.example.com/\x00", "tab": "https://hooks.example.com/a\tb",
                    "port_0": "https://hooks.example.com:0/hook", "space": "https://hooks.example.com/a b"}


def test_malformed_submits_are_422s_that_use_no_quota(plain, ledger):
    """Each would have been a 500 with a traceback, or a 202 that used the day's only job and failed later."""
    outcomes = {}
    for name, parameters in MALFORMED_PARAMETERS.items():
        started = time.monotonic()
        response = _submit(plain, "once", parameters=parameters)
        code, message = _error(response)
        outcomes[f"parameters-{name}"] = (response.status_code, code, message, time.monotonic() - started)
    for name, url in REFUSED_WEBHOOKS.items():
        started = time.monotonic()
        response = _submit(plain, "once", webhook_url=url)
        code, message = _error(response)
        outcomes[f"webhook_url-{name}"] = (response.status_code, code, message, time.monotonic() - started)
    content_type, body = _multipart(boundary="b" * 300)
    started = time.monotonic()
    response = httpx.post(f"{plain.url}/v1/videos", headers={**plain.headers("once"), "Content-Type": content_type},
                          content=body, timeout=60)
    outcomes["multipart_boundary_of_300_characters"] = (response.status_code, *_error(response),
                                                        time.monotonic() - started)
    for name, (status, code, message, seconds) in outcomes.items():
        ledger.record("gateway_hardening", f"submit-{name}", "http_422", f"http_{status}", seconds, code=code,
                      message=message[:200])
    for name, (status, _, message, _) in outcomes.items():
        assert status == 422, (name, status, message)
        assert_clear(message)
    assert all(outcomes[f"webhook_url-{name}"][1] == "webhook_url_refused" for name in REFUSED_WEBHOOKS)
    assert "unknown engine" in outcomes["parameters-engine_path_traversal"][2]
    # None of them used the tenant's one job a day.
    last = _submit(plain, "once")
    ledger.record("gateway_hardening", "submit-quota_left_after_the_refusals", "accepted",
                  "accepted" if last.status_code == 202 else f"http_{last.status_code}", 0.0)
    assert last.status_code == 202, last.text


# -- item 10: slow clients ----------------------------------------------------------------------------------------


def _slow_client(port: int, head: bytes, drip: bytes, every_s: float = 1.0,
                 limit_s: float = 30.0) -> tuple[float, bytes]:
    """Send `head` at once, then `drip` a byte every `every_s`; (seconds until the server closed, its answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        started = time.monotonic()
        sock.sendall(head)
        sock.settimeout(every_s)
        answer, position = b"", 0
        while time.monotonic() - started < limit_s:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                continue
            except TimeoutError:
                pass
            except ConnectionResetError:  # closed on us (the answer, if any, was read before)
                break
            if position < len(drip):
                try:
                    sock.sendall(drip[position:position + 1])
                except OSError:
                    break
                position += 1
        return time.monotonic() - started, answer


def test_slow_clients_are_cut_off(plain, ledger):
    """A byte a second in the headers or the body, an idle connection, a paused body: each gets 408 and loses its
    connection within its limit and a check interval; an upload that is merely slow (over 4 s) is accepted."""
    key = plain.tenants["acme"]["api_key"]
    content_type, body = _multipart()
    post = (f"POST /v1/videos HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    cases = {
        "headers_1_byte_per_s": (b"", b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n", HEADER_TIMEOUT_S),
        "connection_sending_nothing": (b"", b"", HEADER_TIMEOUT_S),
        "body_1_byte_per_s": (post, body, BODY_TIMEOUT_S),
        "body_paused_halfway": (post + body[: len(body) // 2], b"", BODY_TIMEOUT_S),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(lambda case: _slow_client(plain.process.port, *case[:2]), cases.values())))
    for name, (seconds, answer) in results.items():
        limit = cases[name][2]
        cut = answer.startswith(b"HTTP/1.1 408") and seconds < limit + 3.0
        ledger.record("gateway_hardening", f"slow_client-{name}", "cut_off", "cut_off" if cut else "kept",
                      seconds, hung=seconds >= 30.0, limit_s=limit, answer=answer[:60].decode(errors="replace"))
    for name, (seconds, answer) in results.items():
        assert answer.startswith(b"HTTP/1.1 408"), (name, answer[:200])
        assert cases[name][2] - 0.1 <= seconds < cases[name][2] + 3.0, (name, seconds)

    def steady():  # in 40 pieces over 4 s: longer than the body limit, far above the minimum rate
        piece = len(body) // 40 + 1
        for start in range(0, len(body), piece):
            yield body[start:start + piece]
            time.sleep(0.1)

    started = time.monotonic()
    response = httpx.post(f"{plain.url}/v1/videos", headers={**plain.headers("acme"), "Content-Type": content_type},
                          content=steady(), timeout=120)
    seconds = time.monotonic() - started
    ledger.record("gateway_hardening", "slow_client-upload_taking_4_s", "accepted",
                  "accepted" if response.status_code == 202 else f"http_{response.status_code}", seconds)
    assert response.status_code == 202 and seconds > BODY_TIMEOUT_S, (response.text, seconds)


# -- item 10: the access log ----------------------------------------------------------------------------------


def test_api_keys_in_the_query_string_are_not_logged(plain, ledger):
    key = plain.tenants["rival"]["api_key"]
    with httpx.Client(base_url=plain.url, timeout=30) as client:
        client.get(f"/v1/videos/vid_x?api_key={key}&token=s3cr3t-t0ken", headers=plain.headers("rival"))
        client.get(f"/v1/videos/{key}", headers=plain.headers("rival"))
    log = _log(plain)
    leaked = [secret for secret in (key, key[4:], "s3cr3t-t0ken") if secret in log]
    ledger.record("gateway_hardening", "access_log-api_key_in_query_and_path", "redacted",
                  "leaked" if leaked else "redacted", 0.0)
    assert not leaked and "api_key=[redacted]&token=[redacted]" in log and "/v1/videos/thk_[redacted]" in log


# -- items 4 and 5: webhook receivers that are slow or answer too much ---------------------------------------------


class _SlowReceiver(BaseHTTPRequestHandler):
    """Sends its status line, then a byte of a header every 0.5 s, forever: a per-read timeout never fires."""

    protocol_version = "HTTP/1.1"
    arrivals: list = []

    def do_POST(self):  # noqa: N802
        type(self).arrivals.append(time.monotonic())
        try:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(600):
                self.wfile.write(b"z")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args):
        pass


class _FastReceiver(BaseHTTPRequestHandler):
    """Answers 200 at once; with `body_bytes`, a body that size, streamed as fast as the client takes it."""

    protocol_version = "HTTP/1.1"
    body_bytes = 0
    sent = 0
    received: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Length", str(self.body_bytes))
        self.end_headers()
        block = b"x" * 65536
        try:
            while type(self).sent < self.body_bytes:
                self.wfile.write(block)
                type(self).sent += len(block)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _enqueue(store: JobStore, tenant_id: str, url: str) -> str:
    now = time.time()
    job = Job(id=new_id("vid"), tenant_id=tenant_id, state="queued", parameters={}, inputs={}, request_hash="h",
              webhook_url=url, next_attempt_at=now, created_at=now, updated_at=now)
    store.create_job(job)
    claimed = store.claim_job("w", 30)
    store.finish_job(claimed.id, "w", "succeeded", webhook=WebhookEvent("video.succeeded", url, {"id": job.id}))
    return job.id


def test_a_slow_webhook_receiver_holds_up_only_its_own_tenant(tmp_path, ledger):
    """Tenant A's receiver drips its answer forever, for 6 deliveries; tenant B's answers at once. B's webhook
    arrives within a second; A's attempts end at the deadline (2 s here), at most 2 at a time."""
    slow, fast = _serve(_SlowReceiver), _serve(_FastReceiver)
    _SlowReceiver.arrivals = []
    _FastReceiver.received, _FastReceiver.body_bytes, _FastReceiver.sent = [], 0, 0
    store = JobStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    patient, other = (store.create_tenant(name, 100, 10, 10.0, 10) for name in ("patient", "other"))
    settings = WebhookSettings(allow=("127.0.0.1/32",), timeout_s=2.0, per_tenant=2, concurrency=8)
    slow_jobs = [_enqueue(store, patient.id, f"http://127.0.0.1:{slow.server_address[1]}/hook") for _ in range(6)]
    fast_job = _enqueue(store, other.id, f"http://127.0.0.1:{fast.server_address[1]}/hook")
    enqueued = time.monotonic()

    async def run():
        sender = WebhookSender(settings, TargetGuard(settings))
        dispatcher = WebhookDispatcher(store, sender, settings, lambda tenant_id: "whsec_test", "d1")
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop, idle_s=0.1))
        await asyncio.sleep(5.0)
        stop.set()
        await task
        await sender.close()

    try:
        asyncio.run(run())
    finally:
        slow.shutdown()
        fast.shutdown()
    (delivery,) = store.deliveries(other.id, fast_job)
    delivered_after_s = _FastReceiver.received[0] - enqueued if _FastReceiver.received else None
    attempts = [a for job in slow_jobs for d in store.deliveries(patient.id, job) for a in d["attempts"]]
    store.close()
    longest_ms = max(a["duration_ms"] for a in attempts)
    # Attempts start in rounds, one per deadline: never more than per_tenant of them within a second.
    most_at_once = max(sum(0 <= t - start < 1.0 for t in _SlowReceiver.arrivals)
                       for start in _SlowReceiver.arrivals)
    ledger.record("gateway_fault", "webhook_slow_receiver-other_tenant_delivered", "delivered", delivery["state"],
                  delivered_after_s or 99.0, delivered_after_s=delivered_after_s)
    ledger.record("gateway_fault", "webhook_slow_receiver-attempt_deadline", "deadline",
                  "deadline" if all(a["error"] and "deadline" in a["error"] for a in attempts) and longest_ms < 3000
                  else "no_deadline", longest_ms / 1000, attempts=len(attempts),
                  most_at_once=most_at_once)
    assert delivery["state"] == DELIVERED and delivered_after_s is not None and delivered_after_s < 1.5
    assert attempts and all("deadline" in a["error"] for a in attempts), attempts
    assert 1900 <= longest_ms < 3000, longest_ms
    assert most_at_once == settings.per_tenant, _SlowReceiver.arrivals
    # 6 deliveries, 2 at a time, 2 s each: two rounds end within the 5 s the dispatcher ran (a third is cut off).
    assert 2 <= len(attempts) <= 4, attempts


def test_a_huge_webhook_answer_is_not_read(tmp_path, ledger):
    """A receiver answering 200 with 400 MB: the attempt counts as delivered, the gateway reads a few KB of it
    (its memory does not grow with the answer) and closes the connection."""
    huge = 400 << 20
    receiver = _serve(_FastReceiver)
    _FastReceiver.received, _FastReceiver.body_bytes, _FastReceiver.sent = [], huge, 0
    store = JobStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    tenant = store.create_tenant("acme", 100, 1, 10.0, 10)
    job_id = _enqueue(store, tenant.id, f"http://127.0.0.1:{receiver.server_address[1]}/hook")
    settings = WebhookSettings(allow=("127.0.0.1/32",))

    async def run() -> bool:
        sender = WebhookSender(settings, TargetGuard(settings))
        dispatcher = WebhookDispatcher(store, sender, settings, lambda tenant_id: "whsec_test", "d1")
        try:
            return await dispatcher.run_once()
        finally:
            await sender.close()

    tracemalloc.start()
    started = time.monotonic()
    try:
        assert asyncio.run(run())
        seconds = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        time.sleep(0.2)  # let the receiver notice the closed connection
        receiver.shutdown()
    (delivery,) = store.deliveries(tenant.id, job_id)
    store.close()
    ledger.record("gateway_fault", "webhook_answer_of_400_MB", "delivered", delivery["state"], seconds,
                  peak_python_memory_mb=round(peak / 2**20, 2),
                  sent_by_receiver_mb=round(_FastReceiver.sent / 2**20, 1))
    assert delivery["state"] == DELIVERED
    assert peak < 4 << 20, peak  # Python allocations during the attempt, the 400 MB answer included
    assert _FastReceiver.sent < 64 << 20, _FastReceiver.sent  # what the socket buffers took before the close


# -- items 7, 9, 10: the CLI ------------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def _audit_log(folder: Path) -> Path:
    log = folder / "audit.log"
    audit = AuditLog(log)
    for n in range(3):
        audit.append({"event": "video.delivered", "job_id": f"job-{n}", "parameters": {"prompt": "hello"}})
    return log


def test_audit_verify_names_the_first_bad_record_of_any_garbage(tmp_path, ledger):
    base = _audit_log(tmp_path)
    lines = base.read_bytes().splitlines(keepends=True)
    damaged = {
        "binary_garbage": lines[0] + b"\xff\xfe\x00\x01garbage\x80\n" + b"".join(lines[1:]),
        "nested_100000_deep": lines[0] + b"[" * 100_000 + b"\n" + b"".join(lines[1:]),
        "huge_exponent": lines[0] + b'{"hash":"x","seq":2,"v":1e999999}\n' + b"".join(lines[2:]),
        "integer_of_5000_digits": lines[0] + b'{"hash":"x","seq":' + b"9" * 5000 + b"}\n" + b"".join(lines[2:]),
        "byte_order_mark_prepended": b"\xef\xbb\xbf" + b"".join(lines),
    }
    for name, data in damaged.items():
        log = tmp_path / f"{name}.log"
        log.write_bytes(data)
        head_path(log).write_bytes(head_path(base).read_bytes())
        for extra in ((), ("--json",)):
            result, seconds = _cli("audit", "verify", str(log), *extra)
            output = result.stdout + result.stderr
            first_line = 1 if name == "byte_order_mark_prepended" else 2
            if extra:
                report = json.loads(result.stdout)
                named = report["first_problem"]["line"] == first_line and not report["ok"]
            else:
                named = f"line {first_line} is not a valid record" in result.stdout.splitlines()[0]
            outcome = "tampered_named" if result.returncode == 1 and named and "Traceback" not in output else \
                f"exit_{result.returncode}"
            ledger.record("cli_hardening", f"audit_verify{'_json' if extra else ''}-{name}", "tampered_named",
                          outcome, seconds, note=output.strip().splitlines()[0][:200] if output.strip() else "")
            assert outcome == "tampered_named", (name, extra, output)
    assert verify_log(base).ok


def test_bidi_and_control_characters_are_escaped_in_the_audit_log(tmp_path, ledger):
    """A prompt with a right-to-left override, an ANSI escape and a line separator: the log's line shows them as
    \\u escapes (cat or less cannot be made to show another text), and the record still verifies."""
    log = tmp_path / "audit.log"
    prompt = "invoice\u202efdp.exe \u2066x\u2069 \x1b[31mred\x1b[0m \u2028 zero\u200bwidth"
    AuditLog(log).append({"event": "video.delivered", "job_id": "job-1", "parameters": {"prompt": prompt}})
    raw = log.read_text(encoding="utf-8")
    unsafe = [char for char in "\u202e\u2066\u2069\x1b\u2028\u200b" if char in raw]
    intact = verify_log(log).ok and json.loads(raw)["parameters"]["prompt"] == prompt
    ledger.record("cli_hardening", "audit_log-bidi_and_control_characters_in_a_prompt", "escaped",
                  "escaped" if not unsafe and intact else "raw", 0.0)
    assert not unsafe and intact and "\\u202e" in raw
    assert printable(f"job {prompt}") == "job invoice\\u202efdp.exe \\u2066x\\u2069 \\u001b[31mred\\u001b[0m " \
                                         "\\u2028 zero\\u200bwidth"


IMPOSSIBLE_TENANTS = {"concurrent_0": ("--concurrent", "0"), "jobs_per_day_negative": ("--jobs-per-day", "-3"),
                      "jobs_per_day_0": ("--jobs-per-day", "0"), "rate_negative": ("--rate", "-1"),
                      "rate_nan": ("--rate", "nan"), "rate_inf": ("--rate", "inf"), "burst_0": ("--burst", "0")}


def test_impossible_tenant_limits_are_refused(tmp_path, ledger):
    config = write_config(tmp_path / "gateway.toml", tmp_path / "data", "127.0.0.1:1", None)
    for name, options in IMPOSSIBLE_TENANTS.items():
        result, seconds = _cli("gateway", "add-tenant", f"t-{name}", "--config", str(config), *options)
        clear = result.returncode == 1 and result.stderr.startswith("error: ") and options[0] in result.stderr
        ledger.record("cli_hardening", f"add_tenant-{name}", "refused", "refused" if clear else
                      f"exit_{result.returncode}", seconds, note=result.stderr.strip()[:200])
        assert clear, (name, result.stderr)
        assert_clear(result.stderr)
    # Nothing was created: the same names with possible limits are new tenants.
    assert add_tenant(config, "t-concurrent_0", "--concurrent", "1")["concurrent_jobs"] == 1


def test_pipes_and_folders_where_files_go_are_named(tmp_path, ledger):
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    base = _audit_log(tmp_path)
    log_fifo = tmp_path / "audit-fifo.log"
    os.mkfifo(log_fifo)
    cases = {"verify_fifo": (("verify", str(fifo)), "named pipe (FIFO)"),
             "verify_folder": (("verify", str(tmp_path)), "is a folder"),
             "verify_audit_log_fifo": (("verify", str(base), "--audit-log", str(log_fifo)), "named pipe (FIFO)"),
             "audit_verify_fifo": (("audit", "verify", str(log_fifo)), "named pipe (FIFO)"),
             "audit_verify_folder": (("audit", "verify", str(tmp_path)), "is a folder")}
    for name, (args, said) in cases.items():
        result, seconds = _cli(*args, timeout=30)
        named = result.returncode == 1 and said in result.stderr and "does not exist" not in result.stderr
        ledger.record("cli_hardening", f"not_a_file-{name}", "named", "named" if named else
                      f"exit_{result.returncode}", seconds, hung=seconds > 10, note=result.stderr.strip()[:200])
        assert named and seconds < 10, (name, result.stderr)
