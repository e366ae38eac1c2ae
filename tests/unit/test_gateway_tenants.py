"""Tenants: API keys hashed at rest, authentication, rate limits, daily quota, queue cap, webhook secrets."""

from __future__ import annotations

import hashlib
import stat

import pytest

from client.gateway.settings import TenantDefaults
from client.gateway.store import QUEUED, Job, JobStore, new_id
from client.gateway.tenants import KEY_PREFIX, AuthError, MasterKey, QuotaExceeded, Tenants, hash_key


@pytest.fixture
def tenants(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'g.db'}")
    yield Tenants(store, MasterKey(tmp_path / "secrets"), TenantDefaults(jobs_per_day=3, concurrent_jobs=1,
                                                                          rate_per_s=2.0, burst=3))
    store.close()


def test_keys_are_random_and_only_their_hash_is_stored(tenants, tmp_path):
    created = tenants.create("acme")
    key = created.api_key
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43  # 32 bytes, base64url
    assert tenants.create("other").api_key != key
    rows = tenants.store.db.read("SELECT key_hash, prefix FROM api_keys WHERE tenant_id = ?", (created.tenant.id,))
    assert rows == [{"key_hash": hashlib.sha256(key.encode()).hexdigest(), "prefix": key[:10]}]
    tenants.store.close()
    raw = (tmp_path / "g.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("g.db-*"))
    assert key.encode() not in raw and key[10:].encode() not in raw


def test_authenticate(tenants):
    created = tenants.create("acme")
    assert tenants.authenticate(f"Bearer {created.api_key}") == created.tenant
    assert tenants.authenticate(f"bearer   {created.api_key}").id == created.tenant.id
    for header, message in ((None, "send your API key"), ("Basic abc", "must be `Bearer thk_"),
                            (f"Bearer {created.api_key}x", "not valid"), ("Bearer thk_" + "A" * 43, "not valid"),
                            ("Bearer " + "x" * 500, "must be")):
        with pytest.raises(AuthError, match=message):
            tenants.authenticate(header)
    second = tenants.add_key(created.tenant)
    assert tenants.authenticate(f"Bearer {second}").id == created.tenant.id
    assert tenants.store.revoke_api_key(created.api_key[:10]) == 1
    with pytest.raises(AuthError):
        tenants.authenticate(f"Bearer {created.api_key}")
    assert tenants.authenticate(f"Bearer {second}").id == created.tenant.id  # rotation: the other key still works


def test_rate_limit_is_a_token_bucket(tenants):
    tenant = tenants.create("acme").tenant  # 2/s, burst 3
    for _ in range(3):
        tenants.check_rate(tenant, now=10.0)
    with pytest.raises(QuotaExceeded, match="rate limit of 2 requests/s") as caught:
        tenants.check_rate(tenant, now=10.0)
    assert caught.value.code == "rate_limited" and caught.value.retry_after_s == pytest.approx(0.5)
    tenants.check_rate(tenant, now=10.6)


def _queue(store: JobStore, tenant_id: str, now: float) -> Job:
    job = Job(id=new_id("vid"), tenant_id=tenant_id, state=QUEUED, parameters={}, inputs={}, request_hash="h",
              next_attempt_at=now, created_at=now, updated_at=now)
    return store.create_job(job)[0]


def test_daily_quota_is_a_rolling_window(tenants):
    tenant = tenants.create("acme").tenant  # 3 jobs a day
    for hour in range(3):
        _queue(tenants.store, tenant.id, now=1_000_000.0 + hour * 3600)
    with pytest.raises(QuotaExceeded, match="daily quota of 3 jobs") as caught:
        tenants.check_submit(tenant, max_queued=100, now=1_000_000.0 + 4 * 3600)
    assert caught.value.code == "quota_exceeded"
    assert caught.value.retry_after_s == pytest.approx(20 * 3600)  # when the first one leaves the window
    tenants.check_submit(tenant, max_queued=100, now=1_000_000.0 + 86_401)


def test_queue_cap(tenants):
    tenant = tenants.create("acme", jobs_per_day=100).tenant
    for _ in range(2):
        _queue(tenants.store, tenant.id, now=1.0)
    with pytest.raises(QuotaExceeded, match="2 jobs are already waiting") as caught:
        tenants.check_submit(tenant, max_queued=2, now=2.0)
    assert caught.value.code == "queue_full"


def test_webhook_secrets_are_derived_not_stored(tenants, tmp_path):
    acme, other = tenants.create("acme"), tenants.create("other")
    assert acme.webhook_secret.startswith("whsec_") and acme.webhook_secret != other.webhook_secret
    again = MasterKey(tmp_path / "secrets")  # a restart reads the same master key
    assert again.webhook_secret(acme.tenant) == acme.webhook_secret
    assert MasterKey(tmp_path / "elsewhere").webhook_secret(acme.tenant) != acme.webhook_secret
    mode = stat.S_IMODE((tmp_path / "secrets" / "webhook-master.key").stat().st_mode)
    assert mode == 0o600
    assert acme.webhook_secret.encode() not in (tmp_path / "g.db").read_bytes()


def test_tenant_names_are_unique(tenants):
    tenants.create("acme")
    with pytest.raises(ValueError, match="already exists"):
        tenants.create("acme")


def test_hash_key_is_sha256():
    assert hash_key("thk_x") == hashlib.sha256(b"thk_x").hexdigest()


@pytest.mark.parametrize("limits, flag", [
    ({"concurrent_jobs": 0}, "--concurrent"), ({"jobs_per_day": -1}, "--jobs-per-day"),
    ({"rate_per_s": float("nan")}, "--rate"), ({"rate_per_s": float("inf")}, "--rate"),
    ({"rate_per_s": 0.0}, "--rate"), ({"burst": 0}, "--burst"),
])
def test_impossible_limits_are_refused_before_anything_is_stored(tenants, limits, flag):
    with pytest.raises(ValueError, match=flag):
        tenants.create("acme", **limits)
    assert tenants.store.tenant_by_name("acme") is None
