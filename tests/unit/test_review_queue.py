"""The content policy per profile, and the review queue end to end in a gateway whose workers stream from a stand-in
for tritonserver: held jobs are not delivered, an operator approves or rejects them, webhooks and audit records."""

from __future__ import annotations

import json

import httpx
import pytest
from review_harness import live_gateway, qa_report

from client.compliance import ComplianceOptions
from client.content_policy import decide
from client.encoding import EncodeOptions
from client.gateway.caches import OUTPUT
from client.gateway.settings import load_settings
from client.gateway.storage import LocalStorage
from client.gateway.store import QUEUED, Job, JobStore
from client.gateway.worker import WorkerPool
from client.policy import policy_of
from client.provenance import verify_video


@pytest.mark.parametrize("profile, minor, verdict, action", [
    ("strict", "unavailable", "pass_with_unavailable", "hold"),
    ("strict", "pass", "pass", "deliver"),
    ("strict", "pass", "needs_review", "hold"),
    ("standard", "unavailable", "pass_with_unavailable", "deliver"),
    ("standard", "pass", "needs_review", "hold"),
    ("development", "unavailable", "needs_review", "deliver"),
    ("development", "fail", "pass", "hold"),  # a failed check is never delivered unseen, in any profile
])
def test_content_decisions_per_profile(profile, minor, verdict, action):
    decision = decide(qa_report(minor=minor, verdict=verdict), policy_of(profile), driving_video=False,
                      visible_label=True)
    assert decision.action == action
    assert decision.checks["photo.minor"] == minor and decision.checks["output.content_safety"] == "pass"
    if minor == "unavailable":
        assert any("photo.minor" in reason for reason in decision.reasons)


def test_missing_reports_are_unavailable_never_a_pass():
    report = qa_report(minor="pass", verdict="pass")
    decision = decide(report, policy_of("strict"), driving_video=True, visible_label=True)
    # A driving video sent but no report of its checks (e.g. an older server): unavailable, held.
    assert decision.checks["driving_video.content_safety"] == "unavailable" and decision.held
    assert decide(None, policy_of("strict"), False, True).checks == {"photo.content_safety": "unavailable",
                                                                      "output.content_safety": "unavailable"}
    report["post_processing"]["driving_video_safety"] = {"status": "pass", **{
        name: {"status": "pass", "reasons": []} for name in ("nsfw", "minor", "public_figure")}}
    assert not decide(report, policy_of("strict"), True, True).held


def test_strict_profiles_turn_the_label_on():
    assert policy_of("strict").visible_label and policy_of("standard").visible_label
    assert not policy_of("development").visible_label


def _op(key: str):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request) -> dict:
    return {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("postgres_database")()}


def test_held_job_waits_for_an_operator_then_is_delivered(tmp_path, monkeypatch, database):
    with live_gateway(tmp_path, monkeypatch, **database) as gw:
        tenant_id, key = gw.tenant("acme", profile="strict")
        _, other_key = gw.tenant("globex")  # the deployment's development profile: delivered
        operator = gw.operator("alice")
        held = gw.submit(key, webhook_url="http://127.0.0.1:9/hook")
        delivered = gw.submit(other_key)
        job = gw.wait(key, held, ("held", "succeeded", "failed"))
        assert job["status"] == "held" and job["output"] is None
        assert job["review"]["message"].startswith("held for an operator's review: content check unavailable")
        assert gw.wait(other_key, delivered, ("succeeded", "failed"))["status"] == "succeeded"
        tenant = {"Authorization": f"Bearer {key}"}
        refused = httpx.get(f"{gw.url}/v1/videos/{held}/content", headers=tenant)
        assert refused.status_code == 409 and "held" in refused.json()["error"]["message"]

        queue = httpx.get(f"{gw.url}/v1/review/jobs", headers=_op(operator)).json()["jobs"]
        assert [item["job_id"] for item in queue] == [held]
        assert "photo.minor" in queue[0]["reasons"][0]
        shown = httpx.get(f"{gw.url}/v1/review/jobs/{held}", headers=_op(operator)).json()
        decision = shown["job"]["content_policy"]
        assert decision["action"] == "hold" and decision["profile"] == "strict" and decision["visible_label"]
        assert shown["qa_report"]["content_policy"] == decision
        video = httpx.get(f"{gw.url}/v1/review/jobs/{held}/content", headers=_op(operator))
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        (tmp_path / "held.mp4").write_bytes(video.content)
        assert verify_video(tmp_path / "held.mp4").qa_verdict["content_policy"] == decision  # the C2PA assertion
        sheet = httpx.get(f"{gw.url}/v1/review/jobs/{held}/contact-sheet", headers=_op(operator))
        assert sheet.status_code == 200 and sheet.content[:4] == b"\x89PNG"

        approved = httpx.post(f"{gw.url}/v1/review/jobs/{held}/approve", headers=_op(operator),
                              json={"note": "adult, checked by hand"})
        assert approved.status_code == 200 and approved.json()["status"] == "succeeded"
        content = httpx.get(f"{gw.url}/v1/videos/{held}/content", headers=tenant)
        assert content.status_code == 200 and content.content == video.content
        again = httpx.post(f"{gw.url}/v1/review/jobs/{held}/reject", headers=_op(operator),
                           json={"reason": "changed my mind"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_decided"

        events = [d["event"] for d in httpx.get(f"{gw.url}/v1/videos/{held}/webhooks", headers=tenant).json()
                  ["deliveries"]]
        assert events == ["video.held", "video.approved"]
        audit = [json.loads(row["record"]) for row in
                 gw.gateway.store.db.read("SELECT record FROM audit_records ORDER BY seq")]
        held_record = next(r for r in audit if r["job_id"] == held and r["event"] == "video.held")
        assert held_record["qa_verdict"]["content_policy"] == decision
        assert held_record["disclosure"]["visible_label"] is True  # the strict tenant's label is on
        approval = next(r for r in audit if r["event"] == "video.review_approved")
        assert approval["operator"]["name"] == "alice" and approval["reason"] == "adult, checked by hand"
        other = next(r for r in audit if r["job_id"] == delivered)
        assert other["event"] == "video.delivered" and other["qa_verdict"]["content_policy"]["action"] == "deliver"


def test_rejection_needs_a_reason_and_the_tenant_reads_it(tmp_path, monkeypatch):
    with live_gateway(tmp_path, monkeypatch) as gw:
        key, operator, held = gw.held_job(operator="bob")
        url = f"{gw.url}/v1/review/jobs/{held}/reject"
        missing = httpx.post(url, headers=_op(operator), json={})
        assert missing.status_code == 422 and missing.json()["error"]["code"] == "reason_missing"
        assert httpx.post(url, headers=_op(operator), json={"reason": "  "}).status_code == 422
        rejected = httpx.post(url, headers=_op(operator), json={"reason": "the face looks under 18"})
        assert rejected.status_code == 200
        job = gw.wait(key, held, ("failed",))
        assert job["error"] == {"code": "rejected_in_review", "message": "rejected in review: the face looks under 18"}
        assert httpx.get(f"{gw.url}/v1/videos/{held}/content",
                         headers={"Authorization": f"Bearer {key}"}).status_code == 409


def test_the_tenant_may_cancel_a_held_job_and_the_operator_then_gets_409(tmp_path, monkeypatch):
    with live_gateway(tmp_path, monkeypatch) as gw:
        key, operator, held = gw.held_job(operator="carol")
        cancelled = httpx.delete(f"{gw.url}/v1/videos/{held}", headers={"Authorization": f"Bearer {key}"})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        late = httpx.post(f"{gw.url}/v1/review/jobs/{held}/approve", headers=_op(operator))
        assert late.status_code == 409 and "withdrawn" in late.json()["error"]["message"]
        assert httpx.get(f"{gw.url}/v1/review/jobs", headers=_op(operator)).json()["jobs"] == []


def test_a_cached_video_is_reused_only_under_the_profile_it_was_delivered_under(tmp_path):
    settings = load_settings(None, env={}, data_dir=str(tmp_path))
    store, storage = JobStore(settings.database), LocalStorage(settings.objects_path)
    tenant = store.create_tenant("acme", 10, 1, 1.0, 1)
    storage.put_bytes("tenants/x/jobs/vid_src/video.mp4", b"video")
    result = {"video_key": "tenants/x/jobs/vid_src/video.mp4", "bytes": 5, "sha256": "s"}
    store.cache_put(OUTPUT, "k", tenant.id, {"job_id": "vid_src", "result": result,
                                             "qa": {"content_policy": {"profile": "development"}}})
    job = Job(id="vid_new", tenant_id=tenant.id, state=QUEUED, parameters={}, inputs={}, request_hash="h")
    profile = {"now": "strict"}

    def compliance(tenant_id):
        return ComplianceOptions(None, audit_log=tmp_path / "audit.log", tenant=tenant_id)

    pool = WorkerPool(settings, store, storage, "w1", None, compliance, EncodeOptions(),
                      content_policy=lambda tenant_id: policy_of(profile["now"]))
    try:
        assert pool._from_cache(job, "k") is None  # the tenant is strict now: generate (and judge) again
        profile["now"] = "development"
        hit = pool._from_cache(job, "k")
        assert hit.state == "succeeded" and hit.result["cached_from"] == "vid_src"
    finally:
        store.close()
