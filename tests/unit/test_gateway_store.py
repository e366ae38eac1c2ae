"""The gateway's job store on SQLite and on a real PostgreSQL server (tests/conftest.py starts one when its
binaries exist)."""

from __future__ import annotations

import threading

import pytest

from client.gateway.db import Database
from client.gateway.store import (
    CANCELLED,
    DELIVERED,
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
    WebhookEvent,
    new_id,
)


@pytest.fixture
def store(store_url):
    store = JobStore(store_url)
    yield store
    store.close()


def _job(tenant_id: str, key: str | None = None, request_hash: str = "h1", webhook: str | None = None,
         now: float = 1.0) -> Job:
    return Job(id=new_id("vid"), tenant_id=tenant_id, state=QUEUED, parameters={"fps": 10},
               inputs={"photo": {"key": "k", "sha256": "s", "bytes": 1, "filename": "p.png"}},
               request_hash=request_hash, idempotency_key=key, webhook_url=webhook, next_attempt_at=now,
               created_at=now, updated_at=now)


def _tenant(store: JobStore, name: str = "acme", concurrent: int = 1):
    return store.create_tenant(name, jobs_per_day=10, concurrent_jobs=concurrent, rate_per_s=1.0, burst=2, now=1.0)


def test_sqlite_is_in_wal_mode(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'g.db'}")
    assert store.db.read("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert store.db.read("PRAGMA synchronous")[0]["synchronous"] == 2  # FULL
    store.close()


def test_schema_is_created_once_and_reopened(store_url):
    first = JobStore(store_url)
    tenant = _tenant(first)
    first.close()
    again = JobStore(store_url)  # CREATE IF NOT EXISTS, schema version kept
    assert again.tenant(tenant.id) == tenant
    again.close()


def test_idempotency_key_returns_the_same_job_and_is_per_tenant(store):
    acme, other = _tenant(store), _tenant(store, "other")
    first, created = store.create_job(_job(acme.id, key="k1"))
    assert created
    again, created = store.create_job(_job(acme.id, key="k1", request_hash="h2"))
    assert not created and again.id == first.id and again.request_hash == "h1"
    theirs, created = store.create_job(_job(other.id, key="k1"))
    assert created and theirs.id != first.id
    # jobs without a key never collide
    assert store.create_job(_job(acme.id))[1] and store.create_job(_job(acme.id))[1]
    assert store.job(other.id, first.id) is None  # isolation: another tenant's id reads as missing
    assert store.job(acme.id, first.id).id == first.id


def test_claim_respects_per_tenant_concurrency_and_order(store):
    acme, other = _tenant(store, concurrent=1), _tenant(store, "other", concurrent=2)
    a1, _ = store.create_job(_job(acme.id, now=1.0))
    a2, _ = store.create_job(_job(acme.id, now=2.0))
    b1, _ = store.create_job(_job(other.id, now=3.0))
    first = store.claim_job("w1", 30, now=10.0)
    assert first.id == a1.id and first.state == RUNNING and first.attempts == 1 and first.lease_owner == "w1"
    second = store.claim_job("w1", 30, now=10.0)
    assert second.id == b1.id  # acme is at its limit of 1: its second job waits
    assert store.claim_job("w1", 30, now=10.0) is None
    assert store.finish_job(a1.id, "w1", SUCCEEDED, result={"sha256": "x"}, now=11.0)
    assert store.claim_job("w1", 30, now=12.0).id == a2.id


def test_only_the_lease_owner_moves_a_job_on(store):
    acme = _tenant(store)
    job, _ = store.create_job(_job(acme.id))
    store.claim_job("w1", 30, now=10.0)
    assert store.heartbeat(job.id, "w1", 30, 0.5, 10, 20, now=20.0).held
    assert not store.heartbeat(job.id, "w2", 30, 0.5, 10, 20, now=20.0).held
    assert not store.finish_job(job.id, "w2", SUCCEEDED, now=21.0)
    assert store.job(acme.id, job.id).progress == 0.5
    assert store.finish_job(job.id, "w1", FAILED, error_code="no_face", error_message="m", now=22.0)
    done = store.job(acme.id, job.id)
    assert done.state == FAILED and done.error_code == "no_face" and done.lease_owner is None
    assert not store.finish_job(job.id, "w1", SUCCEEDED, now=23.0)  # terminal stays terminal


def test_expired_lease_is_requeued_then_failed_after_max_attempts(store):
    acme = _tenant(store)
    job, _ = store.create_job(_job(acme.id, webhook="https://example.com/h"))
    store.claim_job("dead", lease_s=5, now=10.0)
    assert store.requeue_expired(max_attempts=2, now=14.0) == {}  # lease still valid
    assert store.requeue_expired(max_attempts=2, now=16.0) == {job.id: QUEUED}
    again = store.claim_job("w2", lease_s=5, now=16.0)
    assert again.id == job.id and again.attempts == 2
    events = []

    def webhook_for(job, state, code, message):
        events.append((state, code))
        return WebhookEvent(f"video.{state}", job.webhook_url, {"status": state})

    assert store.requeue_expired(max_attempts=2, webhook_for=webhook_for, now=30.0) == {job.id: FAILED}
    failed = store.job(acme.id, job.id)
    assert failed.state == FAILED and failed.error_code == "server_unavailable" and "2 runs" in failed.error_message
    assert events == [(FAILED, "server_unavailable")]
    assert [d["event"] for d in store.deliveries(acme.id, job.id)] == ["video.failed"]


def test_retry_backs_off_then_gives_up(store):
    acme = _tenant(store)
    job, _ = store.create_job(_job(acme.id))
    store.claim_job("w", 30, now=10.0)
    assert store.retry_job(job.id, "w", "triton down", delay_s=5, max_attempts=2, now=11.0) == QUEUED
    assert store.claim_job("w", 30, now=12.0) is None  # not due before next_attempt_at
    assert store.claim_job("w", 30, now=16.5).attempts == 2
    assert store.retry_job(job.id, "w", "triton down", delay_s=5, max_attempts=2, now=17.0) == FAILED
    assert store.job(acme.id, job.id).error_message.startswith("gave up after 2 runs")
    assert store.retry_job(job.id, "w", "x", 1, 2) is None  # lease gone


def test_release_at_shutdown_does_not_count_an_attempt(store):
    acme = _tenant(store)
    job, _ = store.create_job(_job(acme.id))
    store.claim_job("w", 30, now=10.0)
    assert store.release_job(job.id, "w", now=11.0)
    released = store.job(acme.id, job.id)
    assert released.state == QUEUED and released.attempts == 0 and released.lease_owner is None


def test_cancel_queued_now_running_at_next_heartbeat(store):
    acme = _tenant(store, concurrent=2)
    queued, _ = store.create_job(_job(acme.id, webhook="https://example.com/h"))
    running, _ = store.create_job(_job(acme.id, now=2000.0))
    store.claim_job("w", 30, now=1500.0)  # takes `queued` (older)
    store.claim_job("w", 30, now=2500.0)  # takes `running`
    first = store.job(acme.id, queued.id)
    assert first.state == RUNNING
    # cancel the running one -> flag only
    flagged = store.cancel_job(acme.id, running.id, now=2600.0)
    assert flagged.state == RUNNING and flagged.cancel_requested
    assert store.heartbeat(running.id, "w", 30, 0.1, 1, 10, now=2601.0).cancel_requested
    # a queued job is cancelled at once, with its webhook in the same transaction
    third, _ = store.create_job(_job(acme.id, webhook="https://example.com/h", now=2700.0))
    events = []
    cancelled = store.cancel_job(acme.id, third.id, lambda j, s, c, m: events.append(s) or
                                 WebhookEvent("video.cancelled", j.webhook_url, {}), now=2701.0)
    assert cancelled.state == CANCELLED and events == [CANCELLED]
    assert store.claim_job("w", 30, now=2800.0) is None
    assert store.cancel_job("ten_other", third.id) is None


def test_terminal_state_and_webhook_are_one_transaction(store):
    acme = _tenant(store)
    job, _ = store.create_job(_job(acme.id, webhook="https://example.com/h"))
    store.claim_job("w", 30, now=10.0)
    store.finish_job(job.id, "w", SUCCEEDED, webhook=WebhookEvent("video.succeeded", "https://example.com/h",
                                                                   {"object": {"id": job.id}}), now=11.0)
    delivery = store.claim_delivery("d", 60, now=12.0)
    assert delivery.job_id == job.id and delivery.event == "video.succeeded" and delivery.attempts == 1
    assert store.claim_delivery("d2", 60, now=12.0) is None  # leased
    assert store.record_attempt(delivery, "d", 500, "HTTP 500", 12.5, PENDING, retry_at=20.0, now=13.0)
    assert store.claim_delivery("d", 60, now=15.0) is None  # backing off
    again = store.claim_delivery("d", 60, now=21.0)
    assert again.attempts == 2
    store.record_attempt(again, "d", 200, None, 3.0, DELIVERED, now=22.0)
    (record,) = store.deliveries(acme.id, job.id)
    assert record["state"] == DELIVERED and [a["status_code"] for a in record["attempts"]] == [500, 200]
    assert store.deliveries("ten_other", job.id) == []


def test_a_crashed_dispatcher_lease_is_taken_over(store):
    acme = _tenant(store)
    job, _ = store.create_job(_job(acme.id, webhook="https://example.com/h"))
    store.claim_job("w", 30, now=10.0)
    store.finish_job(job.id, "w", FAILED, webhook=WebhookEvent("video.failed", "https://example.com/h"), now=11.0)
    store.claim_delivery("dead", lease_s=5, now=12.0)
    assert store.claim_delivery("d", 5, now=15.0) is None
    assert store.claim_delivery("d", 5, now=18.0).attempts == 2


def test_rate_bucket_refills(store):
    acme = _tenant(store)  # 1 request/s, burst 2
    assert store.take_token(acme, now=100.0) == 0.0
    assert store.take_token(acme, now=100.0) == 0.0
    wait = store.take_token(acme, now=100.0)
    assert wait == pytest.approx(1.0)
    assert store.take_token(acme, now=100.5) == pytest.approx(0.5)
    assert store.take_token(acme, now=101.1) == 0.0


def test_cache_entries_are_per_tenant(store):
    acme, other = _tenant(store), _tenant(store, "other")
    store.cache_put("output", "k", acme.id, {"v": 1})
    assert store.cache_get("output", "k", acme.id) == {"v": 1}
    assert store.cache_get("output", "k", other.id) is None
    store.cache_put("output", "k", acme.id, {"v": 2})
    assert store.cache_get("output", "k", acme.id) == {"v": 2}
    store.cache_delete("output", "k")
    assert store.cache_get("output", "k", acme.id) is None


def test_concurrent_replicas_never_claim_a_job_twice(store_url):
    replicas = [JobStore(store_url) for _ in range(3)]
    tenant = replicas[0].create_tenant("acme", 100, 100, 1.0, 1)
    ids = {replicas[0].create_job(_job(tenant.id, now=float(i)))[0].id for i in range(30)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(store: JobStore, owner: str) -> None:
        while (job := store.claim_job(owner, 30)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(replicas[i % 3], f"w{i}")) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    for replica in replicas:
        replica.close()


def test_close_leaves_a_statement_under_way_to_finish_and_its_thread_closes_the_connection(store_url):
    # At shutdown a webhook attempt's `asyncio.to_thread` write goes on after its task is cancelled; closing its
    # connection under it crashed the sqlite3 module.
    db = Database(store_url)
    db.script(["CREATE TABLE close_probe (n INTEGER)"])
    idle = db._connection()
    inside, go_on = threading.Event(), threading.Event()
    used, errors = [], []

    def write() -> None:
        try:
            with db.transaction() as cursor:
                cursor.execute("INSERT INTO close_probe (n) VALUES (?)", (1,))
                used.append(db._local.conn)
                inside.set()
                assert go_on.wait(10)
                cursor.execute("INSERT INTO close_probe (n) VALUES (?)", (2,))
        except Exception as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert inside.wait(10)
    db.close()
    with pytest.raises(Exception, match="closed"):
        idle.execute("SELECT 1")
    go_on.set()
    writer.join(10)
    assert errors == []
    with pytest.raises(Exception, match="closed"):
        used[0].execute("SELECT 1")
    assert db.read("SELECT n FROM close_probe ORDER BY n") == [{"n": 1}, {"n": 2}]  # connects again after close
    db.close()


def test_unknown_database_url_is_explained():
    from client.gateway.db import DatabaseError

    with pytest.raises(DatabaseError, match="sqlite:///"):
        Database("mysql://x")


def test_failed_authentications_are_counted_across_replicas_and_forgotten_once_refilled(store_url):
    from client.gateway.auth_limit import FailedAuthLimiter

    now = [1000.0]
    replicas = [JobStore(store_url), JobStore(store_url)]  # two gateways on one database
    first, second = (FailedAuthLimiter(s, burst=3, per_minute=6, clock=lambda: now[0]) for s in replicas)
    for limiter in (first, second, first):
        assert limiter.retry_after("198.51.100.7") == 0
        limiter.failed("198.51.100.7")
    assert second.retry_after("198.51.100.7") == pytest.approx(10.0)  # one token back per 10 s, on every replica
    assert first.retry_after("203.0.113.9") == 0  # other addresses are not affected
    now[0] += 10.0
    assert first.retry_after("198.51.100.7") == 0
    first.failed("203.0.113.9")
    now[0] += 30.0  # 198.51.100.7's bucket is full again: its row goes with the next failure anywhere
    second.failed("203.0.113.9")
    rows = replicas[0].db.read("SELECT address FROM auth_failures ORDER BY address")
    assert [row["address"] for row in rows] == ["203.0.113.9"]
    for store in replicas:
        store.close()


def test_quota_and_queue_cap_are_enforced_in_the_insert_under_concurrency(store_url):
    """12 threads (each its own connection, as gateway replicas) insert at once: exactly the limit gets in."""
    from client.gateway.store import LimitReached, SubmitLimits

    stores = [JobStore(store_url) for _ in range(4)]
    tenant = _tenant(stores[0])
    results: list[str] = []

    def submit(index: int, limits: SubmitLimits) -> None:
        try:
            stores[index % len(stores)].create_job(_job(tenant.id, now=100.0 + index), limits)
            results.append("created")
        except LimitReached as reached:
            results.append(reached.kind)

    for limits, expected, kind in ((SubmitLimits(3, 86_400.0, 100), 3, "quota_exceeded"),
                                   (SubmitLimits(100, 86_400.0, 5), 2, "queue_full")):  # 3 already queued
        results.clear()
        threads = [threading.Thread(target=submit, args=(i, limits)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count("created") == expected and results.count(kind) == 12 - expected, results
    with pytest.raises(LimitReached) as caught:
        stores[0].check_limits(tenant.id, SubmitLimits(100, 86_400.0, 5), now=200.0)
    assert caught.value.kind == "queue_full" and caught.value.counts.queued == 5
    stores[0].check_limits(tenant.id, SubmitLimits(6, 50.0, 6), now=200.0)  # only 5 queued, none in the last 50 s
    for replica in stores:
        replica.close()


def test_an_idempotent_replay_is_not_refused_by_the_quota(store):
    from client.gateway.store import SubmitLimits

    tenant = _tenant(store)
    first, created = store.create_job(_job(tenant.id, key="k1"), SubmitLimits(1, 86_400.0, 10))
    again, created_again = store.create_job(_job(tenant.id, key="k1"), SubmitLimits(1, 86_400.0, 10))
    assert created and not created_again and again.id == first.id


def test_a_tenants_first_requests_at_once_share_one_rate_bucket(store_url):
    """Concurrent first requests of a tenant: one bucket row, no duplicate-key error, no token spent twice."""
    stores = [JobStore(store_url) for _ in range(4)]
    tenant = stores[0].create_tenant("burst", jobs_per_day=10, concurrent_jobs=1, rate_per_s=0.001, burst=5)
    waits: list[float] = []
    threads = [threading.Thread(target=lambda i=i: waits.append(stores[i % 4].take_token(tenant, now=50.0)))
               for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waits) == 12 and waits.count(0.0) == 5, waits
    for replica in stores:
        replica.close()


def test_busy_tenants_are_skipped_when_claiming_deliveries(store):
    tenants = [_tenant(store, name) for name in ("busy", "idle")]
    for tenant in tenants:
        job = _job(tenant.id, webhook="https://hooks.example/x", now=10.0 if tenant.name == "busy" else 11.0)
        store.create_job(job)
        store.claim_job("w", 30, now=11.0)
        store.finish_job(job.id, "w", SUCCEEDED, webhook=WebhookEvent("video.succeeded", job.webhook_url),
                         now=11.0)
    oldest = store.claim_delivery("d", 60, now=12.0)  # the busy tenant's comes first in time ...
    store.record_attempt(oldest, "d", None, "x", 1.0, PENDING, retry_at=12.0, now=12.0)
    claimed = store.claim_delivery("d", 60, now=12.0, skip_tenants=(tenants[0].id,))  # ... unless it is skipped
    assert oldest.tenant_id == tenants[0].id and claimed.tenant_id == tenants[1].id
    assert store.claim_delivery("d", 60, now=12.0, skip_tenants=(tenants[0].id,)) is None
