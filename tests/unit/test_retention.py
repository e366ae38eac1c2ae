"""Erasure and retention: `DELETE /v1/videos/{id}?erase=inputs|all`, the tenant-wide erase and the retention sweep
remove files, cache entries and database rows; afterwards nothing of the photo or its face embedding is left in the
gateway's data folder (database files included, byte for byte) or in the store. Also on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import httpx
import pytest
from review_harness import EMBEDDING, JOB_REPORT, live_gateway

from client.cli import SAMPLE_PHOTO
from client.gateway.caches import EMBEDDING as EMBEDDING_KIND
from client.gateway.caches import photo_summary

PHOTO = SAMPLE_PHOTO.read_bytes()
PHOTO_SHA = hashlib.sha256(PHOTO).hexdigest()
# What would betray the photo or the face: pieces of the file, the embedding as JSON text and as float32 bytes.
def _varied(data: bytes, start: int) -> bytes:
    """The first 64-byte window from `start` with many distinct bytes (not a run of zeros any file may hold)."""
    return next(data[i:i + 64] for i in range(start, len(data) - 64) if len(set(data[i:i + 64])) > 40)


TRACES = [_varied(PHOTO, 1000), _varied(PHOTO, len(PHOTO) // 2), json.dumps(EMBEDDING[0]).encode(),
          json.dumps(EMBEDDING[1]).encode(), struct.pack("<4f", *EMBEDDING), b"173.125"]


def _traces_on_disk(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {trace[:12]!r}" for trace in TRACES if trace in data]
    return found


def _traces_in_store(db) -> list[str]:
    """Rows of every table holding the photo's hash or the face data, but the audit chain's (module docstring)."""
    tables = ("jobs", "cache_entries", "webhook_deliveries", "webhook_attempts", "reviews")
    found = []
    for table in tables:
        for row in db.read(f"SELECT * FROM {table}"):
            text = json.dumps(row, default=str)
            found += [f"{table}: {marker}" for marker in (PHOTO_SHA, "0.918273", "173.125") if marker in text]
    return found


def _headers(key):
    return {"Authorization": f"Bearer {key}"}


def _finished_job(gw, key, webhook_url: str | None = None) -> str:
    job_id = gw.submit(key, webhook_url=webhook_url)
    job = gw.wait(key, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    return job_id


def _cache_embedding(gw, tenant_id: str, key: str = "older-fingerprint") -> None:
    """The embedding cache entry a real face model fingerprint would have made (this stand-in server has none)."""
    gw.gateway.store.cache_put(EMBEDDING_KIND, key, tenant_id, photo_summary(JOB_REPORT))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_database")()


def test_erase_inputs_then_all_leaves_nothing_of_the_photo(tmp_path, monkeypatch, database_url):
    options = {"database_url": database_url} if database_url else {}
    with live_gateway(tmp_path, monkeypatch, **options) as gw:
        tenant_id, key = gw.tenant("acme")
        job_id = _finished_job(gw, key, webhook_url="http://127.0.0.1:9/hook")  # its payload names the inputs
        _cache_embedding(gw, tenant_id)
        if database_url is None:  # the check can see what it looks for
            assert _traces_on_disk(tmp_path)
        assert _traces_in_store(gw.gateway.store.db)

        response = httpx.delete(f"{gw.url}/v1/videos/{job_id}?erase=inputs", headers=_headers(key))
        assert response.status_code == 200, response.text
        assert response.json()["objects"] >= 2 and response.json()["cache_entries"] == 1
        job = httpx.get(f"{gw.url}/v1/videos/{job_id}", headers=_headers(key)).json()
        assert job["inputs"]["photo"] == {"sha256": None, "bytes": len(PHOTO)} and job["photo"] is None
        assert httpx.get(f"{gw.url}/v1/videos/{job_id}/content", headers=_headers(key)).status_code == 200
        report = httpx.get(f"{gw.url}/v1/videos/{job_id}/report", headers=_headers(key)).json()
        assert report["job_report"]["face_data"] == "erased" and "embedding" not in report["job_report"]
        if database_url is None:
            assert _traces_on_disk(tmp_path) == []
        assert _traces_in_store(gw.gateway.store.db) == []

        response = httpx.delete(f"{gw.url}/v1/videos/{job_id}?erase=all", headers=_headers(key))
        assert response.status_code == 200, response.text
        assert httpx.get(f"{gw.url}/v1/videos/{job_id}", headers=_headers(key)).status_code == 404
        assert not list((tmp_path / "objects").rglob(f"*{job_id}*"))
        again = httpx.delete(f"{gw.url}/v1/videos/{job_id}?erase=all", headers=_headers(key))
        assert again.status_code == 404
        audit = [json.loads(row["record"]) for row in
                 gw.gateway.store.db.read("SELECT record FROM audit_records ORDER BY seq")]
        erasures = [r for r in audit if r["event"] == "data.erased"]
        assert [r["scope"] for r in erasures] == ["inputs", "all"] and erasures[0]["jobs"] == [job_id]
        assert PHOTO_SHA not in json.dumps(erasures) and "0.918273" not in json.dumps(erasures)


def test_tenant_wide_erase_and_bad_requests(tmp_path, monkeypatch):
    with live_gateway(tmp_path, monkeypatch) as gw:
        tenant_id, key = gw.tenant("acme")
        other_id, other_key = gw.tenant("globex")
        jobs = [_finished_job(gw, key) for _ in range(2)]
        kept = _finished_job(gw, other_key)
        _cache_embedding(gw, tenant_id)
        bad = httpx.delete(f"{gw.url}/v1/videos/{jobs[0]}?erase=photo", headers=_headers(key))
        assert bad.status_code == 422 and "inputs, all" in bad.json()["error"]["message"]
        unscoped = httpx.delete(f"{gw.url}/v1/data", headers=_headers(key))
        assert unscoped.status_code == 422 and unscoped.json()["error"]["code"] == "bad_erase"
        foreign = httpx.delete(f"{gw.url}/v1/videos/{kept}?erase=all", headers=_headers(key))
        assert foreign.status_code == 404
        done = httpx.delete(f"{gw.url}/v1/data?erase=all", headers=_headers(key))
        assert done.status_code == 200 and sorted(done.json()["job_ids"]) == sorted(jobs)
        for job_id in jobs:
            assert httpx.get(f"{gw.url}/v1/videos/{job_id}", headers=_headers(key)).status_code == 404
        assert gw.gateway.store.db.read("SELECT COUNT(*) AS n FROM cache_entries WHERE tenant_id = ?",
                                        (tenant_id,))[0]["n"] == 0
        # The other tenant's job is untouched.
        assert httpx.get(f"{gw.url}/v1/videos/{kept}/content", headers=_headers(other_key)).status_code == 200


def test_retention_sweep_follows_the_tenants_periods(tmp_path, monkeypatch):
    with live_gateway(tmp_path, monkeypatch) as gw:
        _, key = gw.tenant("acme")
        short_id, short_key = gw.tenant("brief")
        gw.gateway.tenant_settings.update(short_id, retain_outputs_days=1)
        kept, gone = _finished_job(gw, key), _finished_job(gw, short_key)
        retention = gw.gateway.retention
        assert retention.periods(short_id) == {"inputs": 30.0, "embeddings": 30.0, "outputs": 1.0}
        assert retention.sweep(now=time.time() + 2 * 86400) and \
            httpx.get(f"{gw.url}/v1/videos/{gone}", headers=_headers(short_key)).status_code == 404
        job = httpx.get(f"{gw.url}/v1/videos/{kept}", headers=_headers(key)).json()
        assert job["inputs"]["photo"]["sha256"] is not None  # 2 days < the default 30
        retention.sweep(now=time.time() + 31 * 86400)
        job = httpx.get(f"{gw.url}/v1/videos/{kept}", headers=_headers(key)).json()
        assert job["inputs"]["photo"]["sha256"] is None and job["status"] == "succeeded"
        assert httpx.get(f"{gw.url}/v1/videos/{kept}/content", headers=_headers(key)).status_code == 200
