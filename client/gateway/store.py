"""The job store: tenants and API keys, jobs and their state machine, webhook deliveries, rate buckets, caches.

Job states: queued -> running -> succeeded | failed | cancelled, and running -> queued again when a run must be
repeated (tritonserver unavailable, the gateway died: its lease ran out). Every transition is one conditional
UPDATE inside a transaction (`WHERE state = ... AND lease_owner = ...`), so a worker that lost its lease can never
overwrite what another worker did since. A terminal state and its webhook delivery are written in the same
transaction: no finished job without its notification, no notification of a job that is not finished.

`JobStore` runs the same SQL on SQLite and PostgreSQL (`db.Database`); only locking differs: PostgreSQL claims with
`FOR UPDATE SKIP LOCKED` so replicas never block on each other, SQLite serialises writers anyway (`BEGIN
IMMEDIATE`). A tenant's daily quota and queue cap are checked in the transaction that inserts the job, after
locking the tenant's row on PostgreSQL, so concurrent submits can never get past them together.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .db import Cursor, Database

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
PENDING, SENDING, DELIVERED = "pending", "sending", "delivered"  # webhook delivery states (and FAILED)
SCHEMA_VERSION = 1
CANCELLED_ERROR = ("cancelled", "cancelled at the client's request")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        jobs_per_day INTEGER NOT NULL,
        concurrent_jobs INTEGER NOT NULL,
        rate_per_s DOUBLE PRECISION NOT NULL,
        burst INTEGER NOT NULL,
        webhook_secret_version INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        prefix TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        idempotency_key TEXT,
        request_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        parameters TEXT NOT NULL,
        inputs TEXT NOT NULL,
        webhook_url TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires DOUBLE PRECISION,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        progress DOUBLE PRECISION NOT NULL DEFAULT 0,
        frames_done INTEGER NOT NULL DEFAULT 0,
        total_frames INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        error_code TEXT,
        error_message TEXT,
        last_error TEXT,
        photo TEXT,
        qa TEXT,
        result TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (tenant_id, idempotency_key)",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant_id, created_at)",
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        tenant_id TEXT NOT NULL,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_expires DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS webhook_queue ON webhook_deliveries (state, next_attempt_at)",
    """CREATE TABLE IF NOT EXISTS webhook_attempts (
        delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id),
        attempt INTEGER NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        status_code INTEGER,
        error TEXT,
        duration_ms DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (delivery_id, attempt))""",
    """CREATE TABLE IF NOT EXISTS rate_buckets (
        tenant_id TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS auth_failures (
        address TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS auth_failures_age ON auth_failures (updated_at)",
    """CREATE TABLE IF NOT EXISTS cache_entries (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (kind, key))""",
    """CREATE TABLE IF NOT EXISTS schema_info (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL)""",
)

_JSON_FIELDS = ("parameters", "inputs", "photo", "qa", "result")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    jobs_per_day: int
    concurrent_jobs: int
    rate_per_s: float
    burst: int
    webhook_secret_version: int = 1
    disabled: bool = False
    created_at: float = 0.0

    @classmethod
    def from_row(cls, row: dict) -> Tenant:
        return cls(row["id"], row["name"], int(row["jobs_per_day"]), int(row["concurrent_jobs"]),
                   float(row["rate_per_s"]), int(row["burst"]), int(row["webhook_secret_version"]),
                   bool(row["disabled"]), float(row["created_at"]))


@dataclass(frozen=True)
class Job:
    id: str
    tenant_id: str
    state: str
    parameters: dict
    inputs: dict  # name -> {"key": storage key, "sha256", "bytes", "filename"}
    request_hash: str
    idempotency_key: str | None = None
    webhook_url: str | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires: float | None = None
    next_attempt_at: float = 0.0
    progress: float = 0.0
    frames_done: int = 0
    total_frames: int | None = None
    cancel_requested: bool = False
    error_code: str | None = None
    error_message: str | None = None
    last_error: str | None = None
    photo: dict | None = None  # the photo's pre-processing summary (faces, pose), once known
    qa: dict | None = None  # QA summary (client/qa_summary.py)
    result: dict | None = None  # output key, sha256, bytes, signature summary, cache hit
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def from_row(cls, row: dict) -> Job:
        values = dict(row)
        for name in _JSON_FIELDS:
            values[name] = json.loads(values[name]) if values.get(name) else None
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Delivery:
    id: str
    job_id: str
    tenant_id: str
    event: str
    url: str
    payload: str
    state: str
    attempts: int
    next_attempt_at: float
    created_at: float
    delivered_at: float | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None

    @classmethod
    def from_row(cls, row: dict) -> Delivery:
        return cls(**row)


@dataclass(frozen=True)
class SubmitLimits:
    """A tenant's limits on new jobs: at most `jobs_per_window` created in the last `window_s`, and at most
    `max_queued` waiting."""

    jobs_per_window: int
    window_s: float
    max_queued: int


@dataclass(frozen=True)
class SubmitCounts:
    in_window: int
    oldest_in_window: float | None
    queued: int
    running: int


class LimitReached(Exception):
    """A new job would pass the tenant's quota (`kind` "quota_exceeded") or queue cap ("queue_full")."""

    def __init__(self, kind: str, counts: SubmitCounts, limits: SubmitLimits, now: float) -> None:
        super().__init__(kind)
        self.kind, self.counts, self.limits, self.now = kind, counts, limits, now


@dataclass(frozen=True)
class Heartbeat:
    held: bool  # False: the lease was lost (expired and taken over, or the job was finished elsewhere)
    cancel_requested: bool = False


@dataclass(frozen=True)
class WebhookEvent:
    """A delivery to enqueue in the same transaction as the job's terminal state."""

    event: str
    url: str
    payload: dict = field(default_factory=dict)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _refilled(row: dict | None, burst: int, per_s: float, now: float) -> float:
    """Tokens of a token bucket row (tokens, updated_at) at `now`; a missing row is a full bucket."""
    if row is None:
        return float(burst)
    return min(float(burst), float(row["tokens"]) + max(0.0, now - float(row["updated_at"])) * per_s)


def _check_limits(read: Any, tenant_id: str, limits: SubmitLimits, now: float) -> None:
    """Raise LimitReached if one more job would pass `limits`; `read(sql, params)` runs in the caller's
    transaction (or alone, for the early check)."""
    since = now - limits.window_s
    # One statement, so one snapshot: two reads (PostgreSQL's READ COMMITTED takes a snapshot per statement) could
    # see a concurrent submit in the queue count but not in the window's, and call a tenant over quota "queue full".
    row = read(
        "SELECT COALESCE(SUM(CASE WHEN created_at >= ? THEN 1 ELSE 0 END), 0) AS n, "
        "MIN(CASE WHEN created_at >= ? THEN created_at END) AS oldest, "
        "COALESCE(SUM(CASE WHEN state = ? THEN 1 ELSE 0 END), 0) AS queued, "
        "COALESCE(SUM(CASE WHEN state = ? THEN 1 ELSE 0 END), 0) AS running "
        "FROM jobs WHERE tenant_id = ? AND (created_at >= ? OR state IN (?, ?))",
        (since, since, QUEUED, RUNNING, tenant_id, since, QUEUED, RUNNING))[0]
    counts = SubmitCounts(int(row["n"]), row["oldest"], int(row["queued"]), int(row["running"]))
    if counts.in_window >= limits.jobs_per_window:
        raise LimitReached("quota_exceeded", counts, limits, now)
    if counts.queued >= limits.max_queued:
        raise LimitReached("queue_full", counts, limits, now)


class JobStore:
    def __init__(self, database: Database | str) -> None:
        self.db = database if isinstance(database, Database) else Database(database)
        self.db.script(SCHEMA)
        with self.db.transaction() as cursor:
            row = cursor.execute("SELECT value FROM schema_info WHERE name = 'schema'").one()
            if row is None:
                cursor.execute("INSERT INTO schema_info (name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise RuntimeError(f"the database has schema {row['value']}, newer than this gateway's "
                                   f"{SCHEMA_VERSION}: upgrade the gateway")

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    # -- tenants and keys ---------------------------------------------------------------------------------------

    def create_tenant(self, name: str, jobs_per_day: int, concurrent_jobs: int, rate_per_s: float, burst: int,
                      now: float | None = None) -> Tenant:
        tenant = Tenant(new_id("ten"), name, jobs_per_day, concurrent_jobs, rate_per_s, burst,
                        created_at=now or time.time())
        with self.db.transaction() as cursor:
            if cursor.execute("SELECT id FROM tenants WHERE name = ?", (name,)).one():
                raise ValueError(f"a tenant named {name!r} already exists")
            cursor.execute(
                "INSERT INTO tenants (id, name, created_at, jobs_per_day, concurrent_jobs, rate_per_s, burst) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tenant.id, name, tenant.created_at, jobs_per_day, concurrent_jobs, rate_per_s, burst))
        return tenant

    def tenant(self, tenant_id: str) -> Tenant | None:
        rows = self.db.read("SELECT * FROM tenants WHERE id = ?", (tenant_id,))
        return Tenant.from_row(rows[0]) if rows else None

    def tenant_by_name(self, name: str) -> Tenant | None:
        rows = self.db.read("SELECT * FROM tenants WHERE name = ?", (name,))
        return Tenant.from_row(rows[0]) if rows else None

    def add_api_key(self, tenant_id: str, key_hash: str, prefix: str, now: float | None = None) -> None:
        with self.db.transaction() as cursor:
            cursor.execute("INSERT INTO api_keys (key_hash, tenant_id, prefix, created_at) VALUES (?, ?, ?, ?)",
                           (key_hash, tenant_id, prefix, now or time.time()))

    def revoke_api_key(self, prefix: str, now: float | None = None) -> int:
        with self.db.transaction() as cursor:
            return cursor.execute("UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                                  (now or time.time(), prefix)).rowcount

    def key_record(self, key_hash: str) -> tuple[str, Tenant] | None:
        """(stored hash, tenant) for an active key; the caller compares the hashes in constant time."""
        rows = self.db.read(
            "SELECT k.key_hash AS stored_hash, t.* FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
            "WHERE k.key_hash = ? AND k.revoked_at IS NULL AND t.disabled = 0", (key_hash,))
        if not rows:
            return None
        row = rows[0]
        return row.pop("stored_hash"), Tenant.from_row(row)

    def take_token(self, tenant: Tenant, now: float | None = None) -> float:
        """Token bucket, shared by every replica through the database: 0.0 when the request may go ahead, else
        the seconds until a token is back."""
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            # A tenant's first requests may arrive together: the row is made (full) once, then read locked, so
            # concurrent requests neither collide on the insert nor both spend the same token (PostgreSQL).
            cursor.execute("INSERT INTO rate_buckets (tenant_id, tokens, updated_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (tenant_id) DO NOTHING", (tenant.id, float(tenant.burst), now))
            row = cursor.execute("SELECT tokens, updated_at FROM rate_buckets WHERE tenant_id = ?"
                                 + (" FOR UPDATE" if self.dialect == "postgres" else ""), (tenant.id,)).one()
            tokens = _refilled(row, tenant.burst, tenant.rate_per_s, now)
            if tokens >= 1.0:
                cursor.execute("UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE tenant_id = ?",
                               (tokens - 1.0, now, tenant.id))
                return 0.0
            cursor.execute("UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE tenant_id = ?",
                           (tokens, now, tenant.id))
            return (1.0 - tokens) / tenant.rate_per_s if tenant.rate_per_s > 0 else 3600.0

    def auth_failure_tokens(self, subject: str, burst: int, per_s: float, now: float | None = None) -> float:
        """Failed authentications `subject` (a client address, a key prefix) may still make (auth_limit.py); a
        bucket every replica shares."""
        now = time.time() if now is None else now
        rows = self.db.read("SELECT tokens, updated_at FROM auth_failures WHERE address = ?", (subject,))
        return _refilled(rows[0] if rows else None, burst, per_s, now)

    def record_auth_failure(self, subjects: tuple[str, ...], burst: int, per_s: float,
                            now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            for subject in subjects:
                row = cursor.execute("SELECT tokens, updated_at FROM auth_failures WHERE address = ?",
                                     (subject,)).one()
                tokens = max(0.0, _refilled(row, burst, per_s, now) - 1.0)
                cursor.execute("INSERT INTO auth_failures (address, tokens, updated_at) VALUES (?, ?, ?) "
                               "ON CONFLICT (address) DO UPDATE SET tokens = excluded.tokens, "
                               "updated_at = excluded.updated_at", (subject, tokens, now))
            # A bucket untouched long enough to be full again is the same as none: forget it, so that a flood of
            # addresses or keys cannot grow the table without bound.
            cursor.execute("DELETE FROM auth_failures WHERE updated_at < ?", (now - burst / per_s,))

    # -- jobs -------------------------------------------------------------------------------------------------

    def create_job(self, job: Job, limits: SubmitLimits | None = None) -> tuple[Job, bool]:
        """Insert a queued job; with an idempotency key already used by this tenant, return that job instead.

        Returns (job, created). The caller compares `request_hash` to tell a replay from a conflicting reuse. With
        `limits`, a new job that would pass them raises LimitReached and nothing is written: the counts and the
        insert are one transaction, the tenant's row locked on PostgreSQL (SQLite's BEGIN IMMEDIATE already holds
        the database's write lock), so concurrent submits are admitted one after the other.
        """
        with self.db.transaction() as cursor:
            if self.dialect == "postgres":
                cursor.execute("SELECT id FROM tenants WHERE id = ? FOR UPDATE", (job.tenant_id,))
            if job.idempotency_key is not None:
                row = cursor.execute("SELECT * FROM jobs WHERE tenant_id = ? AND idempotency_key = ?",
                                     (job.tenant_id, job.idempotency_key)).one()
                if row is not None:
                    return Job.from_row(row), False
            if limits is not None:
                _check_limits(lambda sql, params: cursor.execute(sql, params).all(), job.tenant_id, limits,
                              job.created_at)
            inserted = cursor.execute(
                "INSERT INTO jobs (id, tenant_id, idempotency_key, request_hash, state, parameters, inputs, "
                "webhook_url, next_attempt_at, photo, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
                (job.id, job.tenant_id, job.idempotency_key, job.request_hash, QUEUED, _dumps(job.parameters),
                 _dumps(job.inputs), job.webhook_url, job.next_attempt_at, _dumps(job.photo), job.created_at,
                 job.created_at)).rowcount
            if inserted:
                return job, True
            row = cursor.execute("SELECT * FROM jobs WHERE tenant_id = ? AND idempotency_key = ?",
                                 (job.tenant_id, job.idempotency_key)).one()
        return Job.from_row(row), False

    def check_limits(self, tenant_id: str, limits: SubmitLimits, now: float | None = None) -> None:
        """LimitReached if a new job would pass `limits` now: the early check before an upload is read (the
        binding one is in create_job)."""
        _check_limits(self.db.read, tenant_id, limits, time.time() if now is None else now)

    def job(self, tenant_id: str, job_id: str) -> Job | None:
        """A tenant's job; another tenant's id reads as missing."""
        rows = self.db.read("SELECT * FROM jobs WHERE id = ? AND tenant_id = ?", (job_id, tenant_id))
        return Job.from_row(rows[0]) if rows else None

    def job_by_idempotency_key(self, tenant_id: str, key: str) -> Job | None:
        rows = self.db.read("SELECT * FROM jobs WHERE tenant_id = ? AND idempotency_key = ?", (tenant_id, key))
        return Job.from_row(rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        rows = self.db.read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}

    def claim_job(self, owner: str, lease_s: float, now: float | None = None) -> Job | None:
        """Take the oldest due queued job of a tenant below its concurrency limit; None when there is none."""
        now = time.time() if now is None else now
        eligible = (
            "SELECT j.id FROM jobs j JOIN tenants t ON t.id = j.tenant_id "
            "WHERE j.state = 'queued' AND j.next_attempt_at <= ? AND "
            "(SELECT COUNT(*) FROM jobs r WHERE r.tenant_id = j.tenant_id AND r.state = 'running') "
            "< t.concurrent_jobs ORDER BY j.next_attempt_at, j.created_at LIMIT 1"
        )
        with self.db.transaction() as cursor:
            if self.dialect == "postgres":
                eligible += " FOR UPDATE OF j SKIP LOCKED"
            row = cursor.execute(eligible, (now,)).one()
            if row is None:
                return None
            claimed = cursor.execute(
                "UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), updated_at = ?, progress = 0, frames_done = 0 "
                "WHERE id = ? AND state = 'queued' RETURNING *",
                (owner, now + lease_s, now, now, row["id"])).one()
        return Job.from_row(claimed) if claimed else None

    def heartbeat(self, job_id: str, owner: str, lease_s: float, progress: float, frames_done: int,
                  total_frames: int | None, now: float | None = None) -> Heartbeat:
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            row = cursor.execute(
                "UPDATE jobs SET lease_expires = ?, progress = ?, frames_done = ?, total_frames = ?, updated_at = ? "
                "WHERE id = ? AND state = 'running' AND lease_owner = ? RETURNING cancel_requested",
                (now + lease_s, progress, frames_done, total_frames, now, job_id, owner)).one()
        return Heartbeat(False) if row is None else Heartbeat(True, bool(row["cancel_requested"]))

    def set_photo(self, job_id: str, photo: dict) -> None:
        with self.db.transaction() as cursor:
            cursor.execute("UPDATE jobs SET photo = ? WHERE id = ?", (_dumps(photo), job_id))

    def finish_job(self, job_id: str, owner: str, state: str, *, error_code: str | None = None,
                   error_message: str | None = None, qa: dict | None = None, result: dict | None = None,
                   webhook: WebhookEvent | None = None, frames: int | None = None, now: float | None = None) -> bool:
        """running -> succeeded | failed | cancelled, only while `owner` holds the lease; the webhook with it."""
        assert state in TERMINAL
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            done = cursor.execute(
                "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, qa = ?, result = ?, "
                + ("progress = 1.0, " if state == SUCCEEDED else "")
                + ("frames_done = ?, total_frames = ?, " if frames is not None else "")
                + "lease_owner = NULL, lease_expires = NULL, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (state, error_code, error_message, _dumps(qa), _dumps(result),
                 *((frames, frames) if frames is not None else ()), now, now, job_id, owner),
            ).rowcount
            if done and webhook is not None:
                self._enqueue_webhook(cursor, job_id, webhook, now)
        return bool(done)

    def retry_job(self, job_id: str, owner: str, error: str, delay_s: float, max_attempts: int,
                  webhook: WebhookEvent | None = None, now: float | None = None) -> str | None:
        """running -> queued after `delay_s`, or -> failed once `max_attempts` runs were used. Returns the new
        state, None if the lease was lost."""
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            row = cursor.execute("SELECT attempts FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?",
                                 (job_id, owner)).one()
            if row is None:
                return None
            if int(row["attempts"]) >= max_attempts:
                cursor.execute(
                    "UPDATE jobs SET state = 'failed', error_code = 'server_unavailable', error_message = ?, "
                    "last_error = ?, lease_owner = NULL, lease_expires = NULL, finished_at = ?, updated_at = ? "
                    "WHERE id = ?",
                    (f"gave up after {row['attempts']} runs: {error}", error, now, now, job_id))
                if webhook is not None:
                    self._enqueue_webhook(cursor, job_id, webhook, now)
                return FAILED
            cursor.execute(
                "UPDATE jobs SET state = 'queued', last_error = ?, next_attempt_at = ?, lease_owner = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE id = ?", (error, now + delay_s, now, job_id))
            return QUEUED

    def release_job(self, job_id: str, owner: str, now: float | None = None) -> bool:
        """Hand a running job back at shutdown: queued again at once, and this run does not count as an attempt."""
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            return bool(cursor.execute(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_owner = NULL, lease_expires = NULL, "
                "next_attempt_at = ?, updated_at = ?, last_error = 'handed back at gateway shutdown' "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?", (now, now, job_id, owner)).rowcount)

    def requeue_expired(self, max_attempts: int, webhook_for: Any = None, now: float | None = None) -> dict[str, str]:
        """Running jobs whose lease ran out (their gateway died or hung): queued again, or failed when out of
        attempts, or cancelled if a cancel was asked for. Returns {job id: new state}."""
        now = time.time() if now is None else now
        changed: dict[str, str] = {}
        with self.db.transaction() as cursor:
            rows = cursor.execute("SELECT * FROM jobs WHERE state = 'running' AND lease_expires < ?", (now,)).all()
            for row in rows:
                job = Job.from_row(row)
                lost = f"the gateway running it stopped renewing its lease (owner {job.lease_owner})"
                if job.cancel_requested:
                    state, args = CANCELLED, CANCELLED_ERROR
                elif job.attempts >= max_attempts:
                    state, args = FAILED, ("server_unavailable", f"gave up after {job.attempts} runs: {lost}")
                else:
                    state, args = QUEUED, (None, None)
                if state == QUEUED:
                    cursor.execute(
                        "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires = NULL, last_error = ?, "
                        "next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                        (lost, now, now, job.id))
                else:
                    cursor.execute(
                        "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, lease_owner = NULL, "
                        "lease_expires = NULL, finished_at = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                        (state, *args, now, now, job.id))
                    event = webhook_for(job, state, *args) if webhook_for else None
                    if event is not None:
                        self._enqueue_webhook(cursor, job.id, event, now)
                changed[job.id] = state
        return changed

    def cancel_job(self, tenant_id: str, job_id: str, webhook_for: Any = None, now: float | None = None) -> Job | None:
        """queued -> cancelled now; running -> cancel requested (the worker stops at its next chunk)."""
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            row = cursor.execute("SELECT * FROM jobs WHERE id = ? AND tenant_id = ?", (job_id, tenant_id)).one()
            if row is None:
                return None
            job = Job.from_row(row)
            if job.state == QUEUED:
                cursor.execute("UPDATE jobs SET state = 'cancelled', error_code = ?, error_message = ?, "
                               "finished_at = ?, updated_at = ?, cancel_requested = 1 "
                               "WHERE id = ? AND state = 'queued'",
                               (*CANCELLED_ERROR, now, now, job_id))
                event = webhook_for(job, CANCELLED, *CANCELLED_ERROR) if webhook_for else None
                if event is not None:
                    self._enqueue_webhook(cursor, job_id, event, now)
            elif job.state == RUNNING:
                cursor.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, job_id))
            row = cursor.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).one()
        return Job.from_row(row)

    # -- webhooks ---------------------------------------------------------------------------------------------

    def _enqueue_webhook(self, cursor: Cursor, job_id: str, event: WebhookEvent, now: float) -> str:
        delivery_id = new_id("whd")
        payload = json.dumps({"id": delivery_id, "type": event.event, "created": int(now), "data": event.payload},
                             sort_keys=True, separators=(",", ":"))
        tenant_id = cursor.execute("SELECT tenant_id FROM jobs WHERE id = ?", (job_id,)).one()["tenant_id"]
        cursor.execute(
            "INSERT INTO webhook_deliveries (id, job_id, tenant_id, event, url, payload, state, next_attempt_at, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            (delivery_id, job_id, tenant_id, event.event, event.url, payload, now, now))
        return delivery_id

    def claim_delivery(self, owner: str, lease_s: float, now: float | None = None,
                       skip_tenants: tuple[str, ...] = ()) -> Delivery | None:
        """The next due delivery, leased to `owner`; none of `skip_tenants` (those with enough in flight)."""
        now = time.time() if now is None else now
        skip = f" AND tenant_id NOT IN ({', '.join('?' * len(skip_tenants))})" if skip_tenants else ""
        query = ("SELECT id FROM webhook_deliveries WHERE next_attempt_at <= ? AND (state = 'pending' OR "
                 f"(state = 'sending' AND lease_expires < ?)){skip} ORDER BY next_attempt_at LIMIT 1")
        if self.dialect == "postgres":
            query += " FOR UPDATE SKIP LOCKED"
        with self.db.transaction() as cursor:
            row = cursor.execute(query, (now, now, *skip_tenants)).one()
            if row is None:
                return None
            claimed = cursor.execute(
                "UPDATE webhook_deliveries SET state = 'sending', lease_owner = ?, lease_expires = ?, "
                "attempts = attempts + 1 WHERE id = ? RETURNING *", (owner, now + lease_s, row["id"])).one()
        return Delivery.from_row(claimed)

    def record_attempt(self, delivery: Delivery, owner: str, status_code: int | None, error: str | None,
                       duration_ms: float, next_state: str, retry_at: float | None = None,
                       now: float | None = None) -> bool:
        """Log one attempt and move the delivery on: delivered, failed, or pending again at `retry_at`."""
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)", (delivery.id, delivery.attempts, now, status_code, error, duration_ms))
            return bool(cursor.execute(
                "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, delivered_at = ?, lease_owner = NULL, "
                "lease_expires = NULL WHERE id = ? AND lease_owner = ?",
                (next_state, retry_at if retry_at is not None else now, now if next_state == DELIVERED else None,
                 delivery.id, owner)).rowcount)

    def deliveries(self, tenant_id: str, job_id: str) -> list[dict]:
        """A job's deliveries with their attempts, for the API."""
        rows = self.db.read("SELECT * FROM webhook_deliveries WHERE job_id = ? AND tenant_id = ? ORDER BY created_at",
                            (job_id, tenant_id))
        out = []
        for row in rows:
            attempts = self.db.read("SELECT attempt, at, status_code, error, duration_ms FROM webhook_attempts "
                                    "WHERE delivery_id = ? ORDER BY attempt", (row["id"],))
            out.append({"id": row["id"], "event": row["event"], "url": row["url"], "state": row["state"],
                        "attempts": attempts, "delivered_at": row["delivered_at"]})
        return out

    # -- caches -----------------------------------------------------------------------------------------------

    def cache_get(self, kind: str, key: str, tenant_id: str) -> dict | None:
        rows = self.db.read("SELECT value FROM cache_entries WHERE kind = ? AND key = ? AND tenant_id = ?",
                            (kind, key, tenant_id))
        if not rows:
            return None
        with self.db.transaction() as cursor:
            cursor.execute("UPDATE cache_entries SET hits = hits + 1 WHERE kind = ? AND key = ?", (kind, key))
        return json.loads(rows[0]["value"])

    def cache_put(self, kind: str, key: str, tenant_id: str, value: dict, now: float | None = None) -> None:
        with self.db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO cache_entries (kind, key, tenant_id, value, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
                (kind, key, tenant_id, _dumps(value), now or time.time()))

    def cache_delete(self, kind: str, key: str) -> None:
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM cache_entries WHERE kind = ? AND key = ?", (kind, key))
