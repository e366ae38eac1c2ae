"""`talkinghead gateway add-operator`, `tenant-settings` and `erase-tenant` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from client.gateway.review import ReviewQueue
from client.gateway.store import JobStore
from client.gateway.tenants import AuthError

CLI = [sys.executable, "-m", "client.cli", "gateway"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)


def test_operator_and_tenant_settings_commands(tmp_path):
    data = ["--data-dir", str(tmp_path)]
    assert _run("add-tenant", "acme", "--json", *data).returncode == 0
    unknown = _run("add-operator", "alice", "--tenant", "nobody", *data)
    assert unknown.returncode == 1 and "no tenant named 'nobody'" in unknown.stderr
    made = _run("add-operator", "alice", "--tenant", "acme", "--json", *data)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["operator_key"]
    store = JobStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        operator = ReviewQueue(store).authenticate(f"Bearer {key}")
        assert operator.name == "alice" and operator.tenant_id == store.tenant_by_name("acme").id
    finally:
        store.close()

    assert _run("revoke-operator", key[:10], *data).stdout.strip() == "revoked 1 operator key(s)"
    store = JobStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with pytest.raises(AuthError, match="not valid"):
            ReviewQueue(store).authenticate(f"Bearer {key}")
    finally:
        store.close()

    set_ = _run("tenant-settings", "acme", "--policy-profile", "strict", "--retain-inputs-days", "7", *data)
    assert set_.returncode == 0, set_.stderr
    assert json.loads(set_.stdout)["overrides"] == {"policy_profile": "strict", "retain_inputs_days": 7.0,
                                                    "retain_embeddings_days": None, "retain_outputs_days": None}
    cleared = json.loads(_run("tenant-settings", "acme", "--policy-profile", "default", *data).stdout)
    assert cleared["overrides"]["policy_profile"] is None and cleared["overrides"]["retain_inputs_days"] == 7.0
    for flags, message in ((("--policy-profile", "lax"), "policy profile must be one of strict, standard"),
                           (("--retain-outputs-days", "-1"), "retain_outputs_days must be a number of days >= 0"),
                           (("--retain-inputs-days", "soon"), "expected a number of days or `default`")):
        bad = _run("tenant-settings", "acme", *flags, *data)
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr

    erased = _run("erase-tenant", "acme", "--erase", "all", *data)
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout)["job_ids"] == []
