"""Retention and erasure of a tenant's data: uploaded inputs, the photo's face data (embedding, landmarks) and outputs.

What each scope removes (files in storage, cache entries, database rows):
- `inputs`: the photo, audio and driving video objects; the photo's face data (below); the input hashes in the job
  row and in its webhook payloads. The signed video, its report and the job's status stay.
- embeddings (by retention only, and inside `inputs`): the identity embedding, landmarks and face boxes in the job
  row (`photo`), in the stored report (`job_report`) and in the embedding cache.
- `all`: every object of the job, its output-cache entries, webhook deliveries and attempts, review and job rows.

Each erasure appends an audit record naming the job(s), the scope and what was removed, never a hash, embedding
or any other data of the person. The audit chain itself keeps, per delivered video, the photo's SHA-256 as the
signed video's C2PA ingredient does (a one-way digest: the provenance record the EU AI Act asks for; it holds
nothing from which the photo or the face could be rebuilt).

On SQLite the database runs with `secure_delete` (db.py) and the WAL is checkpointed after an erasure, so the
bytes are gone from the database files too; on PostgreSQL rows are deleted and the tables vacuumed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..audit import AuditAppender
from .caches import EMBEDDING, OUTPUT, FingerprintSource, embedding_key
from .settings import GatewaySettings
from .storage import Storage, StorageError
from .store import QUEUED, RUNNING, Job, JobStore
from .tenant_settings import TenantSettingsStore

logger = logging.getLogger(__name__)

ERASE_SCOPES = ("inputs", "all")
BIOMETRIC_FIELDS = ("faces", "selected_face", "landmarks", "embedding")  # of the pre-processing report
DAY_S = 86400.0


class EraseRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class Erased:
    jobs: int = 0
    objects: int = 0
    cache_entries: int = 0
    rows: int = 0

    def add(self, other: Erased) -> Erased:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self


def erased_inputs(inputs: dict) -> dict:
    """A job's inputs once erased: what was sent and how large, nothing that identifies it."""
    return {name: {"key": None, "sha256": None, "filename": None, "bytes": item.get("bytes"), "erased": True}
            for name, item in inputs.items()}


def without_face_data(job_report: dict | None) -> dict | None:
    if not isinstance(job_report, dict):
        return job_report
    kept = {key: value for key, value in job_report.items() if key not in BIOMETRIC_FIELDS}
    return {**kept, "face_data": "erased"}


class Retention:
    def __init__(self, store: JobStore, storage: Storage, settings: GatewaySettings, overrides: TenantSettingsStore,
                 auditor_for: Callable[[str], AuditAppender], fingerprints: FingerprintSource | None = None) -> None:
        self.store, self.db, self.storage, self.settings = store, store.db, storage, settings
        self.overrides, self.auditor_for, self.fingerprints = overrides, auditor_for, fingerprints

    # -- requests ---------------------------------------------------------------------------------------------

    def erase_job(self, tenant_id: str, job_id: str, scope: str, requested_by: str = "tenant") -> dict:
        check_scope(scope)
        job = self.store.job(tenant_id, job_id)
        if job is None:
            raise EraseRefused(404, "not_found", f"no video {job_id} for this API key")
        if job.state in (QUEUED, RUNNING):
            raise EraseRefused(409, "job_active", f"video {job_id} is {job.state}: cancel it first (DELETE without "
                                                  "erase), then erase it once it stopped")
        erased = self._erase(job, scope)
        self._record(tenant_id, scope, [job_id], erased, requested_by)
        return {"erased": scope, "job_id": job_id, **asdict(erased)}

    def erase_tenant(self, tenant_id: str, scope: str, requested_by: str = "tenant") -> dict:
        """Every finished job of the tenant, and all of its cache entries of the erased kinds."""
        check_scope(scope)
        rows = self.db.read("SELECT * FROM jobs WHERE tenant_id = ? AND state NOT IN (?, ?)",
                            (tenant_id, QUEUED, RUNNING))
        erased, ids = Erased(), []
        for row in rows:
            job = Job.from_row(row)
            erased.add(self._erase(job, scope))
            ids.append(job.id)
        kinds = (EMBEDDING, OUTPUT)  # both kinds are keyed by hashes of the inputs
        with self.db.transaction() as cursor:
            erased.cache_entries += cursor.execute(
                f"DELETE FROM cache_entries WHERE tenant_id = ? AND kind IN ({', '.join('?' * len(kinds))})",
                (tenant_id, *kinds)).rowcount
        active = self.db.read("SELECT COUNT(*) AS n FROM jobs WHERE tenant_id = ? AND state IN (?, ?)",
                              (tenant_id, QUEUED, RUNNING))[0]["n"]
        self._record(tenant_id, scope, ids, erased, requested_by)
        return {"erased": scope, **asdict(erased), "job_ids": ids, "skipped_active_jobs": int(active)}

    # -- retention --------------------------------------------------------------------------------------------

    def periods(self, tenant_id: str) -> dict[str, float]:
        """Days kept per kind for a tenant (0: until erased)."""
        own, default = self.overrides.get(tenant_id), self.settings.retention
        return {"inputs": own.retain_inputs_days if own.retain_inputs_days is not None else default.inputs_days,
                "embeddings": own.retain_embeddings_days if own.retain_embeddings_days is not None
                else default.embeddings_days,
                "outputs": own.retain_outputs_days if own.retain_outputs_days is not None else default.outputs_days}

    def sweep(self, now: float | None = None) -> dict[str, dict]:
        """Erase what is past its tenant's periods; {tenant id: what was erased}."""
        now = time.time() if now is None else now
        done = {}
        for tenant in self.db.read("SELECT id FROM tenants"):
            tenant_id, periods = tenant["id"], self.periods(tenant["id"])
            erased, ids = Erased(), []
            for kind, scope in (("outputs", "all"), ("inputs", "inputs"), ("embeddings", "embeddings")):
                if periods[kind] <= 0:
                    continue
                cutoff = now - periods[kind] * DAY_S
                for row in self.db.read("SELECT * FROM jobs WHERE tenant_id = ? AND state NOT IN (?, ?) AND "
                                        "COALESCE(finished_at, updated_at) < ?",
                                        (tenant_id, QUEUED, RUNNING, cutoff)):
                    job = Job.from_row(row)
                    if scope == "inputs" and all(item.get("erased") for item in job.inputs.values()):
                        continue
                    if scope == "embeddings" and job.photo is None:
                        continue
                    erased.add(self._erase(job, scope))
                    ids.append(job.id)
                if kind == "embeddings":
                    with self.db.transaction() as cursor:
                        erased.cache_entries += cursor.execute(
                            "DELETE FROM cache_entries WHERE tenant_id = ? AND kind = ? AND created_at < ?",
                            (tenant_id, EMBEDDING, cutoff)).rowcount
            if ids or erased.cache_entries:
                self._record(tenant_id, "retention", sorted(set(ids)), erased, "retention")
                done[tenant_id] = {**asdict(erased), "job_ids": sorted(set(ids))}
        return done

    # -- the work ---------------------------------------------------------------------------------------------

    def _erase(self, job: Job, scope: str) -> Erased:
        if scope == "all":
            return self._erase_all(job)
        erased = self._erase_face_data(job)
        if scope == "inputs":
            erased.add(self._erase_inputs(job))
        erased.jobs = 1
        return erased

    def _erase_inputs(self, job: Job) -> Erased:
        erased = Erased()
        for item in job.inputs.values():
            if item.get("key"):
                self.storage.delete(item["key"])
                erased.objects += 1
        with self.db.transaction() as cursor:
            erased.rows += cursor.execute("UPDATE jobs SET inputs = ?, updated_at = updated_at WHERE id = ?",
                                          (json.dumps(erased_inputs(job.inputs)), job.id)).rowcount
            erased.cache_entries += self._delete_outputs_of(cursor, job)
            for delivery in cursor.execute("SELECT id, payload FROM webhook_deliveries WHERE job_id = ?",
                                           (job.id,)).all():
                payload = json.loads(delivery["payload"])
                video = (payload.get("data") or {}).get("object") or {}
                if "inputs" in video:
                    video["inputs"] = {name: {"sha256": None, "bytes": item.get("bytes"), "erased": True}
                                       for name, item in video["inputs"].items()}
                video["photo"] = None
                cursor.execute("UPDATE webhook_deliveries SET payload = ? WHERE id = ?",
                               (json.dumps(payload, sort_keys=True, separators=(",", ":")), delivery["id"]))
        return erased

    def _erase_face_data(self, job: Job) -> Erased:
        erased = Erased()
        report_key = (job.result or {}).get("report_key")
        if report_key:
            try:
                report = json.loads(self.storage.get_bytes(report_key))
            except StorageError:
                report = None
            if report is not None and report.get("job_report", {}).get("face_data") != "erased":
                report["job_report"] = without_face_data(report.get("job_report"))
                self.storage.put_bytes(report_key, json.dumps(report, indent=2).encode(), "application/json")
                erased.objects += 1
        with self.db.transaction() as cursor:
            erased.cache_entries += self._delete_embeddings_of(cursor, job)
            erased.rows += cursor.execute("UPDATE jobs SET photo = NULL WHERE id = ? AND photo IS NOT NULL",
                                          (job.id,)).rowcount
        return erased

    def _erase_all(self, job: Job) -> Erased:
        self.storage.delete_prefix(f"tenants/{job.tenant_id}/jobs/{job.id}")
        erased = Erased(jobs=1, objects=len(job.inputs) + len([k for k in (job.result or {}) if k.endswith("_key")]))
        with self.db.transaction() as cursor:
            erased.cache_entries += self._delete_embeddings_of(cursor, job) + self._delete_outputs_of(cursor, job)
            erased.rows += cursor.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN "
                "(SELECT id FROM webhook_deliveries WHERE job_id = ?)", (job.id,)).rowcount
            erased.rows += cursor.execute("DELETE FROM webhook_deliveries WHERE job_id = ?", (job.id,)).rowcount
            erased.rows += cursor.execute("DELETE FROM reviews WHERE job_id = ?", (job.id,)).rowcount
            erased.rows += cursor.execute("DELETE FROM jobs WHERE id = ?", (job.id,)).rowcount
        return erased

    def _delete_outputs_of(self, cursor, job: Job) -> int:
        """Output-cache entries made by this job: their keys are hashes of its inputs."""
        rows = cursor.execute("SELECT key, value FROM cache_entries WHERE kind = ? AND tenant_id = ?",
                              (OUTPUT, job.tenant_id)).all()
        keys = [row["key"] for row in rows if json.loads(row["value"]).get("job_id") == job.id]
        return sum(cursor.execute("DELETE FROM cache_entries WHERE kind = ? AND key = ?", (OUTPUT, key)).rowcount
                   for key in keys)

    def _delete_embeddings_of(self, cursor, job: Job) -> int:
        """Embedding-cache entries of the job's photo: under the current model fingerprint's key, and any entry
        holding the same face data (an older fingerprint's)."""
        keys = set()
        photo_sha = (job.inputs.get("photo") or {}).get("sha256")
        latest = self.fingerprints.latest if self.fingerprints is not None else None
        if photo_sha and latest is not None:
            keys.add(embedding_key(job.tenant_id, photo_sha, latest))
        vector = ((job.photo or {}).get("embedding") or {}).get("vector")
        if vector:
            for row in cursor.execute("SELECT key, value FROM cache_entries WHERE kind = ? AND tenant_id = ?",
                                      (EMBEDDING, job.tenant_id)).all():
                if (json.loads(row["value"]).get("embedding") or {}).get("vector") == vector:
                    keys.add(row["key"])
        return sum(cursor.execute("DELETE FROM cache_entries WHERE kind = ? AND key = ?", (EMBEDDING, key)).rowcount
                   for key in keys)

    def _record(self, tenant_id: str, scope: str, job_ids: list[str], erased: Erased, requested_by: str) -> None:
        self.auditor_for(tenant_id).append({"event": "data.erased", "tenant": tenant_id, "scope": scope,
                                            "requested_by": requested_by, "jobs": job_ids, "removed": asdict(erased)})
        self.db.compact()
        logger.info("erased %s of %d job(s) of tenant %s (%s)", scope, len(job_ids), tenant_id, requested_by)


def check_scope(scope: str | None) -> None:
    if scope not in ERASE_SCOPES:
        raise EraseRefused(422, "bad_erase", f"erase must be one of {', '.join(ERASE_SCOPES)}, got {scope!r}")
