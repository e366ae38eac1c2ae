"""The review queue: jobs held by the content policy wait here until an operator approves or rejects them.

A finished job whose content decision is `hold` (client/content_policy.py) goes running -> held instead of
succeeded: its video is stored but not delivered, and the tenant's webhook gets `video.held`. An operator (keys
`tho_...`, separate from tenant keys: `talkinghead gateway add-operator`) lists the held jobs, reads the QA report,
watches the video, and approves (held -> succeeded, `video.approved`) or rejects with a reason (held -> failed with
`rejected_in_review`, `video.rejected`). Each decision is one transaction with its webhook, and an audit record
names the operator and the reason. An operator made with `--tenant` sees only that tenant's jobs: any other job
reads as unknown (404), as another tenant's job does for a tenant key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..audit import AuditAppender
from .store import CANCELLED, CANCELLED_ERROR, FAILED, SUCCEEDED, Job, JobStore, WebhookEvent, new_id
from .tenants import AuthError
from .views import job_view

HELD = "held"
APPROVED, REJECTED = "approved", "rejected"
OPERATOR_KEY_PREFIX = "tho_"
REJECTED_CODE = "rejected_in_review"
MAX_REASON = 2000

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS operators (
        key_hash TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        tenant_id TEXT REFERENCES tenants(id),
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS reviews (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id),
        tenant_id TEXT NOT NULL,
        reasons TEXT NOT NULL,
        held_at DOUBLE PRECISION NOT NULL,
        decision TEXT,
        operator TEXT,
        note TEXT,
        decided_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS reviews_open ON reviews (decision, held_at)",
)


class ReviewError(Exception):
    """An operator's request that cannot be done; `status` and `code` are the HTTP answer."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    tenant_id: str | None  # None: every tenant's jobs


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def review_event(job: Job, event: str) -> WebhookEvent | None:
    return WebhookEvent(event, job.webhook_url, {"object": job_view(job)}) if job.webhook_url else None


class ReviewQueue:
    def __init__(self, store: JobStore, auditor_for: Callable[[str], AuditAppender] | None = None) -> None:
        self.store, self.db, self.auditor_for = store, store.db, auditor_for
        self.db.script(SCHEMA)

    # -- operators --------------------------------------------------------------------------------------------

    def add_operator(self, name: str, tenant_id: str | None = None, now: float | None = None) -> str:
        if not name.strip():
            raise ValueError("an operator needs a name (who approves shows in the audit log)")
        key = OPERATOR_KEY_PREFIX + secrets.token_urlsafe(32)
        with self.db.transaction() as cursor:
            cursor.execute("INSERT INTO operators (key_hash, id, name, prefix, tenant_id, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (_hash(key), new_id("op"), name, key[:10], tenant_id, now or time.time()))
        return key

    def revoke_operator(self, prefix: str, now: float | None = None) -> int:
        with self.db.transaction() as cursor:
            return cursor.execute("UPDATE operators SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                                  (now or time.time(), prefix)).rowcount

    def authenticate(self, authorization: str | None) -> Operator:
        if not authorization:
            raise AuthError("send an operator key as `Authorization: Bearer tho_...`")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or len(key) > 128:
            raise AuthError("the Authorization header must be `Bearer tho_...` with an operator key")
        if not key.startswith(OPERATOR_KEY_PREFIX):
            raise AuthError("review endpoints take operator keys (tho_...), not tenant API keys; make one with "
                            "`talkinghead gateway add-operator NAME`", key[:10])
        presented = _hash(key)
        rows = self.db.read("SELECT * FROM operators WHERE key_hash = ? AND revoked_at IS NULL", (presented,))
        if not rows or not hmac.compare_digest(rows[0]["key_hash"], presented):
            raise AuthError("the operator key is not valid (unknown or revoked)", key[:10])
        row = rows[0]
        return Operator(row["id"], row["name"], row["tenant_id"])

    # -- the queue --------------------------------------------------------------------------------------------

    def hold(self, job_id: str, owner: str, *, qa: dict | None, result: dict, reasons: list[str],
             webhook_for: Callable[[Job], WebhookEvent | None], frames: int | None = None,
             now: float | None = None) -> bool:
        """running -> held while `owner` holds the lease, with the review row and the `video.held` webhook."""
        now = time.time() if now is None else now
        message = "held for an operator's review: " + "; ".join(reasons)
        with self.db.transaction() as cursor:
            row = cursor.execute(
                "UPDATE jobs SET state = ?, qa = ?, result = ?, error_message = ?, progress = 1.0, "
                "frames_done = COALESCE(?, frames_done), total_frames = COALESCE(?, total_frames), "
                "lease_owner = NULL, lease_expires = NULL, updated_at = ? "
                "WHERE id = ? AND state = 'running' AND lease_owner = ? RETURNING *",
                (HELD, json.dumps(qa, sort_keys=True), json.dumps(result, sort_keys=True), message, frames, frames,
                 now, job_id, owner)).one()
            if row is None:
                return False
            job = Job.from_row(row)
            cursor.execute("INSERT INTO reviews (job_id, tenant_id, reasons, held_at) VALUES (?, ?, ?, ?)",
                           (job_id, job.tenant_id, json.dumps(reasons), now))
            event = webhook_for(job)
            if event is not None:
                self.store._enqueue_webhook(cursor, job_id, event, now)
        return True

    def _visible(self, operator: Operator) -> tuple[str, tuple]:
        return ("", ()) if operator.tenant_id is None else (" AND r.tenant_id = ?", (operator.tenant_id,))

    def pending(self, operator: Operator, limit: int = 200) -> list[dict]:
        scope, params = self._visible(operator)
        rows = self.db.read(
            "SELECT r.*, t.name AS tenant_name FROM reviews r JOIN tenants t ON t.id = r.tenant_id "
            f"WHERE r.decision IS NULL{scope} ORDER BY r.held_at LIMIT ?", (*params, limit))
        return [self._summary(row) for row in rows]

    @staticmethod
    def _summary(row: dict) -> dict:
        return {"job_id": row["job_id"], "tenant": row.get("tenant_name"), "tenant_id": row["tenant_id"],
                "reasons": json.loads(row["reasons"]), "held_at": row["held_at"], "decision": row["decision"],
                "operator": row["operator"], "note": row["note"], "decided_at": row["decided_at"]}

    def review(self, operator: Operator, job_id: str) -> tuple[Job, dict]:
        """The job and its review; 404 when there is no review of it this operator may see."""
        scope, params = self._visible(operator)
        rows = self.db.read(
            "SELECT r.*, t.name AS tenant_name FROM reviews r JOIN tenants t ON t.id = r.tenant_id "
            f"WHERE r.job_id = ?{scope}", (job_id, *params))
        job = self.store.job(rows[0]["tenant_id"], job_id) if rows else None
        if job is None:
            raise ReviewError(404, "not_found", f"no held video {job_id} for this operator key (unknown, never held "
                                                "for review, or another tenant's)")
        return job, self._summary(rows[0])

    def decide(self, operator: Operator, job_id: str, decision: str, note: str | None,
               now: float | None = None) -> Job:
        """Approve (held -> succeeded) or reject (held -> failed); 409 when the job was decided already."""
        assert decision in (APPROVED, REJECTED)
        note = (note or "").strip()
        if decision == REJECTED and not note:
            raise ReviewError(422, "reason_missing", 'a rejection needs a reason: send {"reason": "..."}; the '
                                                     "tenant reads it")
        if len(note) > MAX_REASON:
            raise ReviewError(422, "reason_too_long", f"the reason is {len(note)} characters; at most {MAX_REASON}")
        self.review(operator, job_id)  # 404 first, the same for unknown and foreign jobs
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            lock = " FOR UPDATE" if self.store.dialect == "postgres" else ""
            row = cursor.execute(f"SELECT * FROM reviews WHERE job_id = ?{lock}", (job_id,)).one()
            if row["decision"] is not None:
                raise ReviewError(409, "already_decided", f"video {job_id} was already {row['decision']} by "
                                                          f"{row['operator']}; a decision is final")
            job = Job.from_row(cursor.execute(f"SELECT * FROM jobs WHERE id = ?{lock}", (job_id,)).one())
            if job.state != HELD:
                raise ReviewError(409, "not_held", f"video {job_id} is {job.state}, no longer held for review")
            if decision == APPROVED:
                state, code, message = SUCCEEDED, None, None
            else:
                state, code, message = FAILED, REJECTED_CODE, f"rejected in review: {note}"
            cursor.execute("UPDATE jobs SET state = ?, error_code = ?, error_message = ?, finished_at = ?, "
                           "updated_at = ? WHERE id = ? AND state = ?",
                           (state, code, message, now, now, job_id, HELD))
            cursor.execute("UPDATE reviews SET decision = ?, operator = ?, note = ?, decided_at = ? WHERE job_id = ?",
                           (decision, operator.name, note or None, now, job_id))
            final = replace(job, state=state, error_code=code, error_message=message, finished_at=now,
                            updated_at=now)
            event = review_event(final, f"video.{decision}")
            if event is not None:
                self.store._enqueue_webhook(cursor, job_id, event, now)
        if self.auditor_for is not None:
            self.auditor_for(job.tenant_id).append({
                "event": f"video.review_{decision}", "job_id": job_id, "tenant": job.tenant_id,
                "operator": {"id": operator.id, "name": operator.name}, "reason": note or None,
                "held_for": json.loads(row["reasons"]), "output_sha256": (job.result or {}).get("sha256")})
        return final

    def withdraw(self, tenant_id: str, job_id: str, now: float | None = None) -> Job | None:
        """The tenant cancels its held job: held -> cancelled, the review closed as withdrawn. None if not held."""
        now = time.time() if now is None else now
        with self.db.transaction() as cursor:
            row = cursor.execute(
                "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND tenant_id = ? AND state = ? RETURNING *",
                (CANCELLED, *CANCELLED_ERROR, now, now, job_id, tenant_id, HELD)).one()
            if row is None:
                return None
            cursor.execute("UPDATE reviews SET decision = 'withdrawn', operator = 'tenant', decided_at = ? "
                           "WHERE job_id = ?", (now, job_id))
            job = Job.from_row(row)
            event = review_event(job, "video.cancelled")
            if event is not None:
                self.store._enqueue_webhook(cursor, job_id, event, now)
        return job


def reviewable(job: Job) -> dict[str, Any]:
    """What the review page shows of a job besides its QA report: the tenant's view with the content decision."""
    view = job_view(job)
    view["content_policy"] = (job.qa or {}).get("content_policy")
    return view
