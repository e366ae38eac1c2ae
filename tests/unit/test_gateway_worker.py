"""The worker's outcomes with a stand-in for tritonserver: lost server mid-stream -> retried with backoff, then
failed with a webhook; a rejected photo -> failed with the server's message and remembered; cancel -> stopped."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from gateway_harness import TritonClientStandIn

from client.cli import SAMPLE_AUDIO
from client.compliance import ComplianceOptions
from client.encoding import EncodeOptions
from client.gateway import worker as worker_module
from client.gateway.caches import EMBEDDING, Fingerprint, embedding_key
from client.gateway.settings import load_settings
from client.gateway.storage import LocalStorage, job_key
from client.gateway.store import CANCELLED, FAILED, QUEUED, Job, JobStore, new_id
from client.gateway.worker import WorkerPool
from client.triton_client import RequestRejected, ServerUnavailable, StreamedChunk


class FakeClient(TritonClientStandIn):
    """Replaces TalkingHeadClient: streams `chunks` frames, then does what `then` says."""

    script: dict = {}
    closed_streams = 0

    def generate(self, photo, audio, video, parameters, idle_timeout_s=0.0, deadline_s=None):
        script = type(self).script

        def stream():
            try:
                for index in range(script.get("chunks", 0)):
                    if script.get("on_chunk"):
                        script["on_chunk"](index)
                    yield StreamedChunk(np.zeros((4, 32, 32, 3), np.uint8), 4 * index, 40, 10.0,
                                        {"engine": "fake", "engine_id": "preview"})
                raise script["then"]
            finally:
                type(self).closed_streams += 1

        return stream()


@pytest.fixture
def pool(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "TalkingHeadClient", FakeClient)
    FakeClient.script, FakeClient.closed_streams = {}, 0
    settings = load_settings(None, env={}, data_dir=str(tmp_path), max_attempts=2, retry_base_s=0.01,
                             retry_max_s=0.02, lease_s=10, heartbeat_s=0.05)
    store = JobStore(settings.database)
    storage = LocalStorage(settings.objects_path)

    class Fingerprints:
        latest = Fingerprint("fp", "t", {})

        def current(self, client, wait=True):
            return None  # caches of outputs off: every run goes to the (fake) server

    def compliance(tenant_id):
        return ComplianceOptions(None, audit_log=tmp_path / "audit.log", tenant=tenant_id)

    pool = WorkerPool(settings, store, storage, "w1", Fingerprints(), compliance, EncodeOptions())
    pool.staging.mkdir(parents=True)
    yield pool
    store.close()


def _queue(pool: WorkerPool, webhook: str | None = "https://example.com/hook") -> Job:
    tenant = pool.store.tenant_by_name("acme") or pool.store.create_tenant("acme", 10, 1, 1.0, 1)
    job_id = new_id("vid")
    inputs = {}
    for name, data in (("photo", b"photo-bytes"), ("audio", SAMPLE_AUDIO.read_bytes())):
        key = job_key(tenant.id, job_id, name)
        pool.storage.put_bytes(key, data)
        inputs[name] = {"key": key, "sha256": name + "-sha", "bytes": len(data), "filename": name}
    job = Job(id=job_id, tenant_id=tenant.id, state=QUEUED, parameters={"fps": 10}, inputs=inputs,
              request_hash="h", webhook_url=webhook, next_attempt_at=0.0, created_at=1.0, updated_at=1.0)
    pool.store.create_job(job)
    return job


def _run_claimed(pool: WorkerPool):
    job = pool.store.claim_job(pool.owner, pool.settings.lease_s, now=time.time() + 60)  # past any backoff
    assert job is not None
    return asyncio.run(pool.run_job(job)), job


def test_server_lost_mid_stream_is_retried_then_fails_with_a_webhook(pool, monkeypatch):
    import threading

    released, release = [], pool.store.db.release_thread

    def recording_release():
        released.append(threading.current_thread().name)
        release()

    monkeypatch.setattr(pool.store.db, "release_thread", recording_release)
    job = _queue(pool)
    FakeClient.script = {"chunks": 2, "then": ServerUnavailable("connection reset by tritonserver")}
    outcome, _ = _run_claimed(pool)
    assert outcome.state == "retry", outcome
    queued = pool.store.job(job.tenant_id, job.id)
    assert queued.state == QUEUED and queued.attempts == 1 and "connection reset" in queued.last_error
    assert queued.next_attempt_at > queued.updated_at  # backing off
    assert list(pool.staging.iterdir()) == []  # the partial video was removed
    assert FakeClient.closed_streams == 1
    outcome, _ = _run_claimed(pool)  # second and last run fails the same way
    failed = pool.store.job(job.tenant_id, job.id)
    assert failed.state == FAILED and failed.error_code == "server_unavailable"
    assert failed.error_message.startswith("gave up after 2 runs: ServerUnavailable: connection reset")
    (delivery,) = pool.store.deliveries(job.tenant_id, job.id)
    assert delivery["event"] == "video.failed"
    assert released == ["gateway-run", "gateway-run"]  # each run's short-lived thread closed its connection


def test_a_rejected_photo_fails_at_once_and_is_remembered(pool):
    job = _queue(pool, webhook=None)
    FakeClient.script = {"chunks": 0, "then": RequestRejected("no face was found in the photo: use ...", "no_face")}
    outcome, _ = _run_claimed(pool)
    failed = pool.store.job(job.tenant_id, job.id)
    assert failed.state == FAILED and failed.attempts == 1 and failed.error_code == "no_face"
    assert failed.error_message.startswith("no face was found")
    key = embedding_key(job.tenant_id, "photo-sha", pool.fingerprints.latest)
    assert pool.store.cache_get(EMBEDDING, key, job.tenant_id) == {
        "status": "rejected", "code": "no_face", "message": "no face was found in the photo: use ..."}
    assert pool.store.deliveries(job.tenant_id, job.id) == []  # no webhook_url, no delivery


def test_non_photo_rejections_are_not_remembered_per_photo(pool):
    job = _queue(pool, webhook=None)
    FakeClient.script = {"chunks": 0, "then": RequestRejected("the speech is silent", "audio_silent")}
    _run_claimed(pool)
    key = embedding_key(job.tenant_id, "photo-sha", pool.fingerprints.latest)
    assert pool.store.cache_get(EMBEDDING, key, job.tenant_id) is None


def test_cancel_stops_the_stream_at_the_next_chunk(pool):
    job = _queue(pool)

    def on_chunk(index):
        if index == 1:
            pool.store.cancel_job(job.tenant_id, job.id)
        if index >= 1:
            time.sleep(0.2)  # long enough for a heartbeat to see the request

    FakeClient.script = {"chunks": 10, "on_chunk": on_chunk, "then": ServerUnavailable("never reached")}
    outcome, _ = _run_claimed(pool)
    assert outcome.state == CANCELLED
    cancelled = pool.store.job(job.tenant_id, job.id)
    assert cancelled.state == CANCELLED and cancelled.error_code == "cancelled"
    assert FakeClient.closed_streams == 1  # the Triton request was closed (cancelled on the server)
    assert [d["event"] for d in pool.store.deliveries(job.tenant_id, job.id)] == ["video.cancelled"]
