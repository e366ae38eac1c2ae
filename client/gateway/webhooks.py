"""Webhooks: signed, retried with backoff and jitter, every attempt recorded, and never aimed at internal hosts.

Signature (the scheme the well-known payment APIs use): the header

    Talkinghead-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Receivers recompute the HMAC over the raw body with their `whsec_...` secret, compare in constant time and reject
timestamps older than the tolerance (replay protection); `verify_signature` does exactly that. Each delivery also
carries `Talkinghead-Webhook-Id`, the same on every retry, so receivers can drop duplicates.

SSRF guard: a target must resolve to globally routable addresses only; loopback, private (RFC 1918, ULA),
link-local, CGNAT, multicast, reserved, unspecified and documentation ranges are refused, including IPv4 addresses
hidden in IPv6 (mapped, 6to4, Teredo, NAT64), unless the operator allowlisted the host or network. The check runs
twice: when the job is submitted (a clear 422 at once) and again inside the connection itself (`GuardedBackend`),
which resolves, checks and connects to the checked address in one step, so a DNS answer that changes between the
two (DNS rebinding) cannot reach an internal address. No proxies from the environment, no redirects followed.

Deliveries go out concurrently (`webhooks.concurrency` per gateway, at most `webhooks.per_tenant` of one tenant's
at once), each attempt under one deadline (`webhooks.timeout_s` for connecting, sending and the answer), and of
an answer at most `webhooks.max_response_bytes` are read: a receiver that answers a byte at a time, or forever,
costs its own tenant a slot for `timeout_s` and nobody else anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore

from .settings import WebhookSettings
from .store import DELIVERED, FAILED, PENDING, Delivery, JobStore

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Talkinghead-Signature"
ID_HEADER = "Talkinghead-Webhook-Id"
EVENT_HEADER = "Talkinghead-Event"
USER_AGENT = "talkinghead-gateway-webhooks/1"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class SignatureError(Exception):
    """The webhook's signature header is missing, malformed, stale or does not match the body."""


class WebhookTargetRefused(Exception):
    """The webhook URL is not acceptable (scheme, host, or an address the gateway must not reach)."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secrets: str | Iterable[str], header: str | None, body: bytes, tolerance_s: float = 300,
                     now: float | None = None) -> int:
    """Check a received webhook; returns its timestamp. Several secrets may be given (rotation)."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp, signatures = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: expected t=<timestamp>,v1=<hex>")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is {abs(now - timestamp):.0f} s away from now "
                             f"(tolerance {tolerance_s:g} s): a replay or a wrong clock")
    for secret in [secrets] if isinstance(secrets, str) else list(secrets):
        expected = sign(secret, body, timestamp).split(",v1=")[1]
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return timestamp
    raise SignatureError("the signature does not match the body (wrong secret, or the body was changed)")


def refusal_reason(address: Address) -> str | None:
    """Why the gateway must not connect to this address, or None for a globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = refusal_reason(embedded)
            return f"{inner} (IPv4 {embedded} inside IPv6)" if inner else None
    for reason, hit in (("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
                        ("link-local", address.is_link_local), ("multicast", address.is_multicast),
                        ("reserved", address.is_reserved), ("private", address.is_private)):
        if hit:
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class TargetGuard:
    def __init__(self, settings: WebhookSettings, resolver: Resolver = system_resolver) -> None:
        self.networks, self.hosts = settings.allowed_networks()
        self.resolver = resolver

    @staticmethod
    def parse(url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of an acceptable URL, else WebhookTargetRefused saying what is wrong."""
        if len(url) > 2048:
            raise WebhookTargetRefused("the webhook URL is longer than 2048 characters")
        if any(char.isspace() or not char.isprintable() for char in url):
            # urlsplit drops tabs and line breaks silently; the URL stored and called would still hold them.
            raise WebhookTargetRefused(f"the webhook URL must not contain spaces, line breaks or other control "
                                       f"characters, got {url!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise WebhookTargetRefused(f"the webhook URL must start with https:// (or http://), got {url!r}")
        if parts.username or parts.password:
            raise WebhookTargetRefused("the webhook URL must not carry a user name or password")
        try:
            port = parts.port
        except ValueError:
            raise WebhookTargetRefused(f"the webhook URL has an invalid port: {url!r}") from None
        if port == 0:
            raise WebhookTargetRefused(f"the webhook URL has port 0, which nothing can listen on: {url!r}")
        port = port or (443 if parts.scheme == "https" else 80)
        if not parts.hostname:
            raise WebhookTargetRefused(f"the webhook URL has no host: {url!r}")
        return parts.scheme, parts.hostname.lower().rstrip("."), port

    def _allowed(self, host: str, address: Address | None) -> bool:
        if host in self.hosts:
            return True
        return address is not None and any(address in network for network in self.networks)

    async def resolve(self, host: str, port: int) -> str:
        """The address to connect to: every address the host resolves to must be allowed (a mix is refused)."""
        host = host.lower().rstrip(".")
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise WebhookTargetRefused(f"the webhook host {host!r} cannot be resolved ({exc})") from None
            if not addresses:
                raise WebhookTargetRefused(f"the webhook host {host!r} resolves to no address")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%")[0])
            reason = refusal_reason(address)
            if reason and not self._allowed(host, address):
                shown = host if literal is not None else f"{host} resolves to {address}, which"
                raise WebhookTargetRefused(
                    f"webhook target refused: {shown} is a {reason} address; the gateway only calls public "
                    "addresses unless the operator allowlists the host or network (webhooks.allow)")
        return addresses[0].split("%")[0]

    async def check_url(self, url: str) -> None:
        _, host, port = self.parse(url)
        await self.resolve(host, port)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer with the guard inside `connect_tcp`: what is checked is what is connected to.
    TLS still verifies the certificate for the URL's host name (httpcore passes it as server_hostname)."""

    def __init__(self, guard: TargetGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        address = await self.guard.resolve(host, port)
        return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise WebhookTargetRefused("webhooks never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max_s, base_s * 2**(attempt-1)))."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)


def webhook_retry_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": uniform(ceiling / 2, ceiling). Unlike full jitter, the sum of the
    delays has a floor, so the retry window is known: with the defaults (16 attempts, 2 s doubling to 900 s) a
    receiver down for 53 minutes still gets the event; one down for more than 107 minutes does not (measured in
    tests/reliability/test_gateway_reliability.py)."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(ceiling / 2.0, ceiling)


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    def __init__(self, settings: WebhookSettings, guard: TargetGuard) -> None:
        self.settings = settings
        self.pool = httpcore.AsyncConnectionPool(network_backend=GuardedBackend(guard), max_connections=20,
                                                 retries=0)

    async def send(self, delivery: Delivery, secret: str, now: float | None = None) -> AttemptResult:
        body = delivery.payload.encode()
        timestamp = int(time.time() if now is None else now)
        headers = [(b"Content-Type", b"application/json"), (b"User-Agent", USER_AGENT.encode()),
                   (SIGNATURE_HEADER.encode(), sign(secret, body, timestamp).encode()),
                   (ID_HEADER.encode(), delivery.id.encode()), (EVENT_HEADER.encode(), delivery.event.encode())]
        timeout = self.settings.timeout_s
        started = time.perf_counter()
        try:
            # One deadline for the whole attempt: httpcore's timeouts are per read, and a receiver sending a byte
            # now and then would hold the attempt for as long as it liked.
            status = await asyncio.wait_for(self._post(delivery.url, headers, body, timeout), timeout)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except asyncio.TimeoutError:
            status, error = None, f"no complete answer within {timeout:g} s (the attempt's deadline)"
        except WebhookTargetRefused as exc:
            status, error = None, str(exc)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptResult(status, error, (time.perf_counter() - started) * 1000.0)

    async def _post(self, url: str, headers: list, body: bytes, timeout: float) -> int:
        """The status of the answer, after reading at most max_response_bytes of its body (leaving the rest
        unread closes the connection instead of returning it to the pool)."""
        limit = self.settings.max_response_bytes
        async with self.pool.stream(
                "POST", url, headers=headers, content=body,
                extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
        ) as response:
            received = 0
            async for chunk in response.aiter_stream():
                received += len(chunk)
                if received >= limit:
                    break
            return response.status

    async def close(self) -> None:
        await self.pool.aclose()


class WebhookDispatcher:
    """Sends due deliveries; one attempt each, then delivered, retried later, or failed after max_attempts."""

    def __init__(self, store: JobStore, sender: WebhookSender, settings: WebhookSettings,
                 secret_for: Callable[[str], str], owner: str, lease_s: float = 60.0) -> None:
        self.store, self.sender, self.settings = store, sender, settings
        self.secret_for, self.owner, self.lease_s = secret_for, owner, lease_s
        self.rng = random.Random()
        self.in_flight: Counter[str] = Counter()  # tenant id -> attempts under way

    async def run_once(self) -> bool:
        """Deliver one due webhook; False when none was due."""
        delivery = await asyncio.to_thread(self.store.claim_delivery, self.owner, self.lease_s)
        if delivery is None:
            return False
        await self.attempt(delivery)
        return True

    async def attempt(self, delivery: Delivery) -> None:
        result = await self.sender.send(delivery, self.secret_for(delivery.tenant_id))
        if result.ok:
            state, retry_at = DELIVERED, None
        elif delivery.attempts >= self.settings.max_attempts:
            state, retry_at = FAILED, None
            logger.warning("webhook %s for job %s failed after %d attempts: %s", delivery.id, delivery.job_id,
                           delivery.attempts, result.error)
        else:
            state = PENDING
            retry_at = time.time() + webhook_retry_delay(delivery.attempts, self.settings.backoff_base_s,
                                                         self.settings.backoff_max_s, self.rng)
        await asyncio.to_thread(self.store.record_attempt, delivery, self.owner, result.status_code, result.error,
                                result.duration_ms, state, retry_at)

    async def _attempt_counted(self, delivery: Delivery) -> None:
        try:
            await self.attempt(delivery)
        except Exception:  # a database hiccup: the delivery's lease runs out and it is claimed again
            logger.exception("webhook %s", delivery.id)
        finally:
            self.in_flight[delivery.tenant_id] -= 1
            if self.in_flight[delivery.tenant_id] <= 0:
                del self.in_flight[delivery.tenant_id]

    async def run(self, stop: asyncio.Event, idle_s: float = 0.5) -> None:
        """Claim due deliveries while fewer than `concurrency` are under way, skipping tenants with `per_tenant`
        under way; each attempt runs as its own task. Cancelled (shutdown), the attempts under way are cancelled
        too: their leases run out and they are sent again."""
        running: set[asyncio.Task] = set()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                delivery = None
                if len(running) < self.settings.concurrency:
                    busy = tuple(tenant for tenant, count in self.in_flight.items()
                                 if count >= self.settings.per_tenant)
                    try:
                        delivery = await asyncio.to_thread(self.store.claim_delivery, self.owner, self.lease_s,
                                                           None, busy)
                    except Exception:  # a database hiccup must not end deliveries for the gateway's lifetime
                        logger.exception("webhook dispatcher")
                if delivery is not None:
                    self.in_flight[delivery.tenant_id] += 1
                    task = asyncio.create_task(self._attempt_counted(delivery))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    continue
                # Nothing due, or no free slot: wait for an attempt to end, the idle interval, or shutdown.
                await asyncio.wait({stopped, *running}, timeout=idle_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            for task in running:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*running, return_exceptions=True)
