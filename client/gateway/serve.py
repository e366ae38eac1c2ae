"""The gateway's HTTP server: uvicorn, told whom to believe about client addresses, with limits on how slowly a
client may send a request, and an access log that never records a secret.

- Forwarded headers (X-Forwarded-For / -Proto) are believed only from `http.trusted_proxies`; by default from
  no one (uvicorn's own default trusts 127.0.0.1, so anything on the gateway's host could pick its address).
- Slow clients (slow loris): uvicorn closes idle keep-alive connections but has no limit on a request in
  progress, so a client sending its headers or its body a byte a second held a connection forever. The protocol
  below checks every connection twice a second: the request line and headers must be complete within
  `header_timeout_s`; a body must not pause for more than `body_timeout_s` and, after its first `body_timeout_s`,
  must have come at `min_body_bytes_per_s` on average. Time in which the gateway itself is not reading (the app
  busy before it reads the body, or a `100-continue` not yet sent) does not count against the client. A client
  over a limit gets 408 and the connection is closed.
- The access log: the API takes nothing in the query string, so only the names of query parameters are logged,
  never their values (an API key sent as `?api_key=...` would otherwise be written there in full).
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import GatewaySettings, HttpSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("talkinghead.gateway")

CHECK_EVERY_S = 0.5
LINGER_S = 2.0
_QUERY_VALUE = re.compile(r"=[^&]*")
_API_KEY = re.compile(r"thk_[A-Za-z0-9_\-]+")


def redact_target(target: str) -> str:
    """A request target as the access log may show it: query values dropped, API keys in the path too."""
    path, mark, query = target.partition("?")
    return _API_KEY.sub("thk_[redacted]", path) + mark + _QUERY_VALUE.sub("=[redacted]", query)


class RedactedAccessLog(logging.Filter):
    """On uvicorn's access logger, whose records carry (client, method, target, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_target(args[2]), *args[3:])
        return True


class SlowClientGuard(H11Protocol):
    """uvicorn's h11 protocol with the header and body limits of `limits` (set on the subclass that
    `guarded_protocol` makes)."""

    limits: HttpSettings

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase: str | None = "headers"
        self._phase_since = self._last_check = self.loop.time()
        self._received = self._received_at_phase = 0
        self._active_s = self._idle_s = 0.0
        self._check_handle = self.loop.call_later(CHECK_EVERY_S, self._check)

    def data_received(self, data: bytes) -> None:
        if self._phase == "cut":  # lingering after a 408: read and drop what the client still sends
            return
        self._received += len(data)
        self._idle_s = 0.0
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._check_handle.cancel()
        super().connection_lost(exc)

    def _gateway_not_reading(self) -> bool:
        return self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)

    def _check(self) -> None:
        if self.transport.is_closing() or self._phase == "cut":
            return
        now = self.loop.time()
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        limits = self.limits
        if phase != self._phase:
            self._phase, self._phase_since, self._received_at_phase = phase, now, self._received
            self._active_s = self._idle_s = 0.0
        elif phase == "headers" and now - self._phase_since > limits.header_timeout_s:
            return self._cut(f"the request line and headers took longer than {limits.header_timeout_s:g} s")
        elif phase == "body" and not self._gateway_not_reading():
            elapsed = now - self._last_check
            self._active_s += elapsed
            self._idle_s += elapsed
            received = self._received - self._received_at_phase
            if self._idle_s > limits.body_timeout_s:
                return self._cut(f"the request body paused for more than {limits.body_timeout_s:g} s")
            if self._active_s > limits.body_timeout_s and received < limits.min_body_bytes_per_s * self._active_s:
                return self._cut(f"the request body came at {received / self._active_s:.0f} bytes/s, slower than "
                                 f"{limits.min_body_bytes_per_s:g} bytes/s")
        self._last_check = now
        self._check_handle = self.loop.call_later(CHECK_EVERY_S, self._check)

    def _cut(self, why: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        logger.warning("closed the connection of %s: %s", client, why)
        cycle = self.cycle if self._phase == "body" else None
        if cycle is None or not cycle.response_started:
            body = json.dumps({"error": {"code": "request_timeout", "message": f"{why}; send requests faster"}})
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body.encode()))
        if cycle is not None:  # the app, waiting for more of the body, sees a disconnect; nothing more is written
            cycle.disconnected = True
            cycle.message_event.set()
        # A lingering close, as web servers do: closing a socket with unread data makes the kernel reset the
        # connection, and a client that was still sending would lose the 408. So: end our side (FIN after the
        # 408), keep reading and dropping for a moment, then close.
        self._phase = "cut"
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:  # pragma: no cover - TLS transports cannot half-close
            self.transport.close()


def guarded_protocol(limits: HttpSettings) -> type[SlowClientGuard]:
    return type("GuardedH11Protocol", (SlowClientGuard,), {"limits": limits})


def serve(app: FastAPI, settings: GatewaySettings, host: str, port: int) -> None:
    """Run the gateway until SIGTERM / Ctrl-C (uvicorn's graceful shutdown: stop accepting, finish requests, then
    the app's lifespan drains running jobs for drain_timeout_s and hands the rest back to the queue)."""
    import uvicorn

    trusted = list(settings.http.trusted_proxies)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10,
                            http=guarded_protocol(settings.http), proxy_headers=bool(trusted),
                            forwarded_allow_ips=trusted or None)
    # After uvicorn.Config, which configures its loggers.
    logging.getLogger("uvicorn.access").addFilter(RedactedAccessLog())
    uvicorn.Server(config).run()
