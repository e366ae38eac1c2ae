"""Brute-force guard for API keys: failed authentications as token buckets, per client address and per presented
key prefix.

Each failed authentication spends a token from the bucket of the client's address and one from the bucket of the
key's prefix (the first characters of what was presented, enough to name one tenant's key when it matches one);
tokens come back at `per_minute`. While either bucket is empty, a wrong key from there is answered 429 with
Retry-After instead of 401. A valid key is looked at first and never refused by this limit: behind an ingress
every client can share one address (or, with `http.trusted_proxies` set, an attacker could pick the forwarded
one), and a flood of wrong keys must not lock out the tenants whose keys are right. With 256-bit keys that costs
nothing: a guess is right with probability 2^-256 whether or not it is limited; the limit is there to keep guessing
slow and visible, and the database's work per guess small. The buckets live in the job store, so every replica on
one database counts the same failures (two replicas failing one subject at the same instant may both spend the
same token: the limit is approximate by a token or two, never by a factor). Buckets that have refilled are
deleted, so a flood of addresses or keys cannot grow the table without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .store import JobStore


def key_subject(prefix: str) -> str:
    """The bucket of a presented key's prefix (addresses are their own subjects: no IP has a colon and a "key")."""
    return f"key:{prefix}"


class FailedAuthLimiter:
    def __init__(self, store: JobStore, burst: int, per_minute: float,
                 clock: Callable[[], float] = time.time) -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("burst must be at least 1 and per_minute positive")
        self.store, self.burst, self.rate, self.clock = store, burst, per_minute / 60.0, clock

    def retry_after(self, *subjects: str) -> float:
        """0 when a wrong key from these subjects (address, key prefix) may be answered 401 now, else the
        seconds until it may."""
        now = self.clock()
        tokens = min(self.store.auth_failure_tokens(subject, self.burst, self.rate, now) for subject in subjects)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def failed(self, *subjects: str) -> None:
        self.store.record_auth_failure(subjects, self.burst, self.rate, self.clock())
