"""Tenants: API keys (only their SHA-256 is stored), quotas, rate limits, webhook secrets.

An API key is `thk_` + 32 random bytes (base64url). With 256 bits of entropy a plain SHA-256 is the right hash:
slow password hashes exist to protect guessable secrets, and they would cost every request a few hundred ms. The
lookup is by hash; the stored hash is compared again with `hmac.compare_digest` so no code path compares secrets
byte by byte.

Webhook secrets are not stored at all: each tenant's is HMAC-SHA256(master key, tenant id + version), the master
key being a file in the secrets folder (outside the database). A copy of the database alone cannot forge webhooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .settings import TenantDefaults, tenant_limits_problem
from .store import JobStore, LimitReached, SubmitLimits, Tenant

KEY_PREFIX = "thk_"
WEBHOOK_SECRET_PREFIX = "whsec_"
MASTER_KEY_FILE = "webhook-master.key"
DAY_S = 86_400.0


class AuthError(Exception):
    """401: no key, a malformed key, or a key that is unknown or revoked. `prefix`: the presented key's first
    characters (its failures are counted under them, auth_limit.py), None without a well-formed key."""

    def __init__(self, message: str, prefix: str | None = None) -> None:
        super().__init__(message)
        self.prefix = prefix


class QuotaExceeded(Exception):
    """429: the tenant's quota or rate limit; `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: float, code: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.code = code


def master_key_help(path: Path) -> str:
    return (f"write 32 random bytes as hex there (`openssl rand -hex 32 > {path}`, mode 0600), the same file on "
            "every replica: it derives every tenant's webhook secret (docs/deployment.md, Secrets)")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def key_prefix(key: str) -> str:
    """Enough of a key to name it in listings and logs, far too little to use it."""
    return key[: len(KEY_PREFIX) + 6]


@dataclass(frozen=True)
class NewTenant:
    tenant: Tenant
    api_key: str  # shown once; only its hash is kept
    webhook_secret: str


class MasterKeyError(ValueError):
    """The webhook master key is missing or unusable; the message says how to supply one."""


class MasterKey:
    """The webhook master key file, read on every start. With `create` (the `development` policy profile) it is made
    (0600) on first use; otherwise it must be supplied, the same file on every replica (client/policy.py)."""

    def __init__(self, folder: Path, create: bool = True) -> None:
        self.path = Path(folder) / MASTER_KEY_FILE
        if not self.path.exists():
            if not create:
                raise MasterKeyError(f"no webhook master key at {self.path}: {master_key_help(self.path)}")
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
            finally:
                os.close(fd)
        try:
            self._key = bytes.fromhex(self.path.read_text().strip())
        except ValueError:
            raise MasterKeyError(f"{self.path} is not a hex key: {master_key_help(self.path)}") from None
        if len(self._key) < 32:
            raise MasterKeyError(f"{self.path} holds a key shorter than 32 bytes; delete it to make a new one")

    def webhook_secret(self, tenant: Tenant) -> str:
        digest = hmac.new(self._key, f"webhook:{tenant.id}:{tenant.webhook_secret_version}".encode(),
                          hashlib.sha256).hexdigest()
        return WEBHOOK_SECRET_PREFIX + digest


class Tenants:
    def __init__(self, store: JobStore, master: MasterKey, defaults: TenantDefaults) -> None:
        self.store, self.master, self.defaults = store, master, defaults

    def create(self, name: str, jobs_per_day: int | None = None, concurrent_jobs: int | None = None,
               rate_per_s: float | None = None, burst: int | None = None) -> NewTenant:
        d = self.defaults
        limits = (d.jobs_per_day if jobs_per_day is None else jobs_per_day,
                  d.concurrent_jobs if concurrent_jobs is None else concurrent_jobs,
                  d.rate_per_s if rate_per_s is None else rate_per_s, d.burst if burst is None else burst)
        problem = tenant_limits_problem(*limits)
        if problem:
            raise ValueError(problem)
        tenant = self.store.create_tenant(name, *limits)
        return NewTenant(tenant, self.add_key(tenant), self.master.webhook_secret(tenant))

    def add_key(self, tenant: Tenant) -> str:
        key = new_api_key()
        self.store.add_api_key(tenant.id, hash_key(key), key_prefix(key))
        return key

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of `Authorization: Bearer <key>`; AuthError otherwise (never saying which part was wrong)."""
        if not authorization:
            raise AuthError("send your API key as `Authorization: Bearer thk_...`")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX) or len(key) > 128:
            raise AuthError("the Authorization header must be `Bearer thk_...` with a talkinghead API key")
        presented = hash_key(key)
        found = self.store.key_record(presented)
        if found is None or not hmac.compare_digest(found[0], presented):
            raise AuthError("the API key is not valid (unknown or revoked)", key_prefix(key))
        return found[1]

    def check_rate(self, tenant: Tenant, now: float | None = None) -> None:
        wait = self.store.take_token(tenant, now)
        if wait > 0:
            raise QuotaExceeded(f"rate limit of {tenant.rate_per_s:g} requests/s (burst {tenant.burst}) exceeded; "
                                f"retry in {max(wait, 0.1):.1f} s", wait, "rate_limited")

    @staticmethod
    def submit_limits(tenant: Tenant, max_queued: int) -> SubmitLimits:
        return SubmitLimits(tenant.jobs_per_day, DAY_S, max_queued)

    @staticmethod
    def refusal(tenant: Tenant, reached: LimitReached) -> QuotaExceeded:
        """The 429 for a job the daily quota (rolling 24 h) or the queue cap does not admit."""
        counts = reached.counts
        if reached.kind == "quota_exceeded":
            oldest = counts.oldest_in_window or reached.now
            wait = max(1.0, oldest + DAY_S - reached.now)
            return QuotaExceeded(f"daily quota of {tenant.jobs_per_day} jobs reached (rolling 24 h); the next job "
                                 f"can be submitted in {wait / 60:.0f} min", wait, "quota_exceeded")
        return QuotaExceeded(f"{counts.queued} jobs are already waiting ({counts.running} running, at most "
                             f"{tenant.concurrent_jobs} at once); wait for some to finish", 30.0, "queue_full")

    def check_submit(self, tenant: Tenant, max_queued: int, now: float | None = None) -> None:
        """Daily quota (rolling 24 h) and the queue cap, before the upload is read: a refusal then costs the
        client no upload. The binding check is when the job is stored (JobStore.create_job with the limits)."""
        try:
            self.store.check_limits(tenant.id, self.submit_limits(tenant, max_queued), now)
        except LimitReached as reached:
            raise self.refusal(tenant, reached) from None
