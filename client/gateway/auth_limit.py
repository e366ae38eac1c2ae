"""Brute-force guard for API keys: failed authentications per client address, as a token bucket.

Each failed authentication from an address spends a token; tokens come back at `per_minute`. With none left,
every request from that address is answered 429 with Retry-After before its key is looked at, so guessing keys
costs an attacker minutes per handful of tries, and nothing tells it whether a guess during the lockout was right.
Successful requests spend nothing. The buckets live in the job store, so every replica on one database counts the
same failures (two replicas failing one address at the same instant may both spend the same token: the limit is
approximate by a token or two, never by a factor). Buckets that have refilled are deleted, so a flood of addresses
cannot grow the table without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .store import JobStore


class FailedAuthLimiter:
    def __init__(self, store: JobStore, burst: int, per_minute: float,
                 clock: Callable[[], float] = time.time) -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("burst must be at least 1 and per_minute positive")
        self.store, self.burst, self.rate, self.clock = store, burst, per_minute / 60.0, clock

    def retry_after(self, address: str) -> float:
        """0 when `address` may try a key now, else the seconds until it may."""
        tokens = self.store.auth_failure_tokens(address, self.burst, self.rate, self.clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def failed(self, address: str) -> None:
        self.store.record_auth_failure(address, self.burst, self.rate, self.clock())
