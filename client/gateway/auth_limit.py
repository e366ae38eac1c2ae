"""Brute-force guard for API keys: failed authentications per client address, as a token bucket.

Each failed authentication from an address spends a token; tokens come back at `per_minute`. With none left,
every request from that address is answered 429 with Retry-After before its key is looked at, so guessing keys
costs an attacker minutes per handful of tries, and nothing tells it whether a guess during the lockout was right.
Successful requests spend nothing. The buckets live in this gateway process: with several replicas each counts
alone (N replicas allow N times the rate). At most `max_addresses` addresses are remembered, least recent first
forgotten, so a flood of addresses cannot exhaust memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class FailedAuthLimiter:
    def __init__(self, burst: int, per_minute: float, max_addresses: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("burst must be at least 1 and per_minute positive")
        self.burst, self.rate, self.max_addresses, self.clock = burst, per_minute / 60.0, max_addresses, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def retry_after(self, address: str) -> float:
        """0 when `address` may try a key now, else the seconds until it may."""
        with self._lock:
            tokens = self._tokens(address, self.clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            self._buckets[address] = (max(0.0, self._tokens(address, now) - 1.0), now)
            self._buckets.move_to_end(address)
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
