"""The audit log in the gateway's database (client/gateway/audit_store.py), on SQLite and on a real PostgreSQL server:
one hash chain for every gateway process sharing the database, exported as a log file that `talkinghead audit
verify` checks, and tampering with the tables caught in the export."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from client.audit import AuditError, canonical, find_record, verify_log
from client.cli import main
from client.gateway.audit_store import DatabaseAuditLog
from client.gateway.db import Database
from client.server import PROJECT_ROOT

_APPEND = """
import sys, time
from client.gateway.audit_store import DatabaseAuditLog
from client.gateway.db import Database
url, writer, count, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
log = DatabaseAuditLog(Database(url))
while time.time() < start:
    time.sleep(0.001)
for n in range(count):
    log.append({"event": "video.delivered", "job_id": f"{writer}-{n}", "tenant": writer})
"""


def _tamper(url: str, *statements: str) -> None:
    db = Database(url)
    try:
        db.script(statements)
    finally:
        db.close()


def test_records_chain_in_the_database_and_the_export_verifies(store_url, tmp_path):
    db = Database(store_url)
    log = DatabaseAuditLog(db)
    empty = log.export(tmp_path / "empty.log")
    assert empty.records == 0 and verify_log(empty.path).ok  # an empty chain has no head and nothing to doubt
    records = [log.append({"event": "video.delivered", "job_id": f"j{n}", "output": {"sha256": f"{n:064x}"}})
               for n in range(3)]
    assert [r["seq"] for r in records] == [1, 2, 3] and records[1]["prev_hash"] == records[0]["hash"]
    with pytest.raises(AuditError, match="api_key"):
        log.append({"event": "x", "api_key": "thk_secret"})  # the file log's rules hold here too
    exported = log.export(tmp_path / "audit.log")
    assert (exported.records, exported.last_seq, exported.last_hash) == (3, 3, records[-1]["hash"])
    assert exported.path.read_bytes() == b"".join(canonical(r) + b"\n" for r in records)
    result = verify_log(exported.path)
    assert result.ok and result.head_checked and result.records == 3
    assert find_record(exported.path, **{"output.sha256": f"{1:064x}"})["job_id"] == "j1"
    assert "password" not in log.location and "audit_records" in log.location
    # A restart (a new process on the same database) continues the same chain.
    again = DatabaseAuditLog(Database(store_url)).append({"event": "video.delivered", "job_id": "j3"})
    assert (again["seq"], again["prev_hash"]) == (4, records[-1]["hash"])
    db.close()


@pytest.mark.parametrize("tamper, kind", [
    ("UPDATE audit_records SET record = REPLACE(record, '\"j1\"', '\"jX\"') WHERE seq = 2", "edited"),
    ("DELETE FROM audit_records WHERE seq = 2", "removed"),
    ("DELETE FROM audit_records WHERE seq = 3", "truncated"),  # the head row still says 3
])
def test_tampering_with_the_tables_is_caught_in_the_export(store_url, tmp_path, tamper, kind):
    log = DatabaseAuditLog(Database(store_url))
    for n in range(3):
        log.append({"event": "video.delivered", "job_id": f"j{n}"})
    _tamper(store_url, tamper)
    result = verify_log(log.export(tmp_path / "audit.log").path)
    assert not result.ok and result.problems[0].kind == kind


def test_two_gateway_processes_append_to_one_chain(store_url, tmp_path):
    """Two processes appending at the same moment: no fork, no reused seq, nothing lost."""
    count = 40
    DatabaseAuditLog(Database(store_url))  # the tables exist before both start, as after a gateway's first start
    start = time.time() + 2.0  # both processes import and connect first, then append at the same moment
    writers = [subprocess.Popen([sys.executable, "-c", _APPEND, store_url, name, str(count), str(start)],
                                cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True) for name in ("gw-a", "gw-b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    exported = DatabaseAuditLog(Database(store_url)).export(tmp_path / "audit.log")
    result = verify_log(exported.path)
    assert result.ok, result.problems[:3]
    records = [json.loads(line) for line in exported.path.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, 2 * count + 1))
    by_writer = {name: [r["job_id"] for r in records if r["tenant"] == name] for name in ("gw-a", "gw-b")}
    assert by_writer == {name: [f"{name}-{n}" for n in range(count)] for name in ("gw-a", "gw-b")}
    switches = sum(a["tenant"] != b["tenant"] for a, b in zip(records, records[1:]))
    assert switches >= 1  # the two really interleaved: this is one chain written by both


def test_export_then_verify_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n')
    log = DatabaseAuditLog(Database(f"sqlite:///{data / 'gateway.db'}"))
    for n in range(2):
        log.append({"event": "video.delivered", "job_id": f"j{n}"})
    out = tmp_path / "export" / "audit.log"
    assert main(["gateway", "export-audit", str(out), "--config", str(config)]) == 0
    assert "exported 2 audit records" in capsys.readouterr().out
    assert main(["audit", "verify", str(out)]) == 0
    assert "OK, 2 records, chain intact and ends at its head" in capsys.readouterr().out
    file_config = tmp_path / "file.toml"
    file_config.write_text(f'data_dir = "{data}"\n[delivery]\naudit_store = "file"\n')
    assert main(["gateway", "export-audit", str(out), "--config", str(file_config)]) == 1
    assert "the log is the file" in capsys.readouterr().err


def test_the_audit_file_setting_goes_with_the_file_store():
    from client.gateway.settings import SettingsError, load_settings

    assert load_settings(env={}).delivery.audit_store == "database"
    settings = load_settings(env={}, delivery={"audit_store": "file", "audit_log": "/srv/audit.log"})
    assert str(settings.audit_path) == "/srv/audit.log"
    with pytest.raises(SettingsError, match="audit_log names the file"):
        load_settings(env={}, delivery={"audit_log": "/srv/audit.log"})
    with pytest.raises(SettingsError, match="audit_store must be one of database, file"):
        load_settings(env={}, delivery={"audit_store": "s3"})
