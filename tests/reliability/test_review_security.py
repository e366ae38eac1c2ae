"""The review queue's auth and isolation cases: operator keys and tenant keys never stand in for each other, an
operator scoped to one tenant sees nothing of another's jobs, and every bad review action gets a clear 4xx. The
gateway runs in-process with a stand-in for tritonserver (tests/review_harness.py): these are HTTP cases, fast."""

from __future__ import annotations

import httpx
import pytest
from review_harness import live_gateway


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture
def queue(tmp_path, monkeypatch):
    with live_gateway(tmp_path, monkeypatch, limits={"failed_auth_burst": 8, "failed_auth_per_minute": 1}) as gw:
        acme_id, acme = gw.tenant("acme", profile="strict")
        rival_id, rival = gw.tenant("rival", profile="strict")
        held = gw.submit(acme)
        gw.wait(acme, held, ("held",))
        yield gw, {"acme": acme, "rival": rival, "global": gw.operator("root"),
                   "rival_operator": gw.operator("rival-reviewer", rival_id), "held": held}


def test_keys_of_one_kind_never_open_the_other_api(queue, ledger):
    gw, keys = queue
    held = keys["held"]
    cases = {
        "review_without_key": ("GET", "/v1/review/jobs", None),
        "review_with_tenant_key": ("GET", "/v1/review/jobs", keys["acme"]),
        "review_with_unknown_operator_key": ("GET", "/v1/review/jobs", "tho_" + "x" * 40),
        "approve_with_tenant_key": ("POST", f"/v1/review/jobs/{held}/approve", keys["acme"]),
        "tenant_api_with_operator_key": ("GET", f"/v1/videos/{held}", keys["global"]),
        "tenant_content_with_operator_key": ("GET", f"/v1/videos/{held}/content", keys["global"]),
    }
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for name, (method, path, key) in cases.items():
            response = client.request(method, path, headers=_bearer(key))
            ledger.record("gateway_security", f"review_auth-{name}", "http_401", f"http_{response.status_code}", 0.0)
            assert response.status_code == 401, (name, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
        tenant_key = client.get("/v1/review/jobs", headers=_bearer(keys["acme"])).json()["error"]["message"]
        assert "operator keys" in tenant_key and "add-operator" in tenant_key
        # Wrong operator keys are rate limited like wrong tenant keys (per address and per key prefix).
        codes = [client.get("/v1/review/jobs", headers=_bearer("tho_guess" + str(i) * 30)).status_code
                 for i in range(6)]
        ledger.record("gateway_security", "review_auth-brute_force", "http_429", f"http_{codes[-1]}", 0.0)
        assert codes[-1] == 429, codes
        assert int(client.get("/v1/review/jobs", headers=_bearer("tho_guess" * 5)).headers["Retry-After"]) >= 1
        # The page itself is static and holds no data; everything it shows comes through the operator API.
        page = client.get("/review")
        assert page.status_code == 200 and held not in page.text and "Content-Security-Policy" in page.headers


def test_a_tenant_scoped_operator_sees_nothing_of_other_tenants(queue, ledger):
    gw, keys = queue
    held = keys["held"]
    with httpx.Client(base_url=gw.url, headers=_bearer(keys["rival_operator"]), timeout=30) as rival:
        assert rival.get("/v1/review/jobs").json() == {"jobs": []}
        probes = {"show": ("GET", f"/v1/review/jobs/{held}", None),
                  "content": ("GET", f"/v1/review/jobs/{held}/content", None),
                  "contact_sheet": ("GET", f"/v1/review/jobs/{held}/contact-sheet", None),
                  "approve": ("POST", f"/v1/review/jobs/{held}/approve", {}),
                  "reject": ("POST", f"/v1/review/jobs/{held}/reject", {"reason": "not mine"})}
        for name, (method, path, body) in probes.items():
            response = rival.request(method, path, json=body)
            ledger.record("gateway_security", f"review_isolation-{name}", "http_404", f"http_{response.status_code}",
                          0.0)
            assert response.status_code == 404, (name, response.text)
    other_tenant = httpx.get(f"{gw.url}/v1/videos/{held}", headers=_bearer(keys["rival"]))
    assert other_tenant.status_code == 404
    assert httpx.get(f"{gw.url}/v1/videos/{held}", headers=_bearer(keys["acme"])).json()["status"] == "held"


def test_bad_review_actions_get_clear_4xx(queue, ledger):
    gw, keys = queue
    held = keys["held"]
    with httpx.Client(base_url=gw.url, headers=_bearer(keys["global"]), timeout=30) as operator:
        cases = [
            ("unknown_job", "POST", "/v1/review/jobs/vid_000000000000000000000000/approve", {}, 404, "not_found"),
            ("traversal_id", "GET", "/v1/review/jobs/..%2F..%2Fetc%2Fpasswd", None, 404, None),
            ("reject_without_reason", "POST", f"/v1/review/jobs/{held}/reject", {}, 422, "reason_missing"),
            ("reject_blank_reason", "POST", f"/v1/review/jobs/{held}/reject", {"reason": " \n"}, 422,
             "reason_missing"),
            ("reject_reason_not_text", "POST", f"/v1/review/jobs/{held}/reject", {"reason": ["x"]}, 422,
             "reason_missing"),
            ("reject_huge_reason", "POST", f"/v1/review/jobs/{held}/reject", {"reason": "x" * 5000}, 422,
             "reason_too_long"),
            ("approve", "POST", f"/v1/review/jobs/{held}/approve", {"note": "ok"}, 200, None),
            ("approve_again", "POST", f"/v1/review/jobs/{held}/approve", {}, 409, "already_decided"),
            ("reject_decided", "POST", f"/v1/review/jobs/{held}/reject", {"reason": "late"}, 409, "already_decided"),
        ]
        for name, method, path, body, status, code in cases:
            response = operator.request(method, path, json=body)
            ledger.record("gateway_security", f"review_bad_input-{name}", f"http_{status}",
                          f"http_{response.status_code}", 0.0)
            assert response.status_code == status, (name, response.text)
            if code:
                error = response.json()["error"]
                assert error["code"] == code and error["message"], (name, error)
        malformed = operator.post(f"/v1/review/jobs/{held}/approve", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
        assert malformed.status_code == 422
    # A job that was never held (delivered at once) is not reviewable.
    delivered_tenant = gw.tenant("plain")[1]
    delivered = gw.submit(delivered_tenant)
    gw.wait(delivered_tenant, delivered, ("succeeded",))
    never = httpx.post(f"{gw.url}/v1/review/jobs/{delivered}/approve", headers=_bearer(keys["global"]))
    assert never.status_code == 404 and "never held" in never.json()["error"]["message"]
