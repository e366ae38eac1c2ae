"""Hash-chained audit log: every kind of tampering is found and named; secrets are refused."""

from __future__ import annotations

import json
import threading

import pytest

from client.audit import GENESIS, AuditError, AuditLog, head_path, record_hash, verify_log
from client.cli import main


def _event(n: int) -> dict:
    return {"event": "video.delivered", "job_id": f"job-{n}", "tenant": "acme",
            "inputs": {"photo_sha256": f"{n:064x}"}, "qa_verdict": {"status": "not_run"},
            "output": {"sha256": f"{n + 100:064x}"}}


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    for n in range(1, 6):
        audit.append(_event(n))
    return path


def _lines(path):
    return path.read_text().splitlines(keepends=True)


def _write(path, lines):
    path.write_text("".join(lines))


def test_records_chain_and_verify(log):
    records = [json.loads(line) for line in _lines(log)]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(records, records[1:]))
    assert all(record_hash(r) == r["hash"] for r in records)
    result = verify_log(log)
    assert result.ok and result.records == 5 and result.head_checked and result.last_hash == records[-1]["hash"]


def test_an_edited_record_is_found(log):
    lines = _lines(log)
    lines[2] = lines[2].replace('"tenant":"acme"', '"tenant":"evil"')
    _write(log, lines)
    result = verify_log(log)
    first = result.problems[0]
    assert not result.ok and (first.kind, first.seq, first.line) == ("edited", 3, 3)
    assert "seq 3" in first.message and "no longer matches its hash" in first.message


def test_an_edited_and_rehashed_record_breaks_the_link_to_the_next(log):
    lines = _lines(log)
    record = json.loads(lines[1])
    record["qa_verdict"] = {"status": "passed"}
    record["hash"] = record_hash(record)
    lines[1] = json.dumps(record) + "\n"
    _write(log, lines)
    first = verify_log(log).problems[0]
    assert (first.kind, first.seq) == ("edited", 3) and "seq 2 was edited and re-hashed" in first.message


def test_a_removed_record_is_found(log):
    lines = _lines(log)
    del lines[2]
    _write(log, lines)
    first = verify_log(log).problems[0]
    assert (first.kind, first.seq) == ("removed", 4) and "seq 3 removed" in first.message


def test_reordered_records_are_found(log):
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    first = verify_log(log).problems[0]
    assert (first.kind, first.seq, first.line) == ("reordered", 3, 2)


def test_a_cut_off_tail_is_found_through_the_head_file(log):
    _write(log, _lines(log)[:-2])
    first = verify_log(log).problems[0]
    assert first.kind == "truncated" and "ends at seq 3" in first.message and "seq 5" in first.message
    head_path(log).unlink()
    assert verify_log(log).problems[0].kind == "head"  # without a head, the limit is reported, not hidden


def test_anchors_kept_elsewhere_catch_a_rewritten_log(log, tmp_path):
    anchor = verify_log(log).last_hash
    assert verify_log(log, anchors=(anchor,)).ok
    # A full rewrite with recomputed hashes and head is self-consistent; only the outside anchor exposes it.
    forged = tmp_path / "forged.log"
    audit = AuditLog(forged)
    for n in range(1, 6):
        audit.append({**_event(n), "tenant": "someone-else"})
    assert verify_log(forged).ok
    problems = verify_log(forged, anchors=(anchor,)).problems
    assert [p.kind for p in problems] == ["anchor"]


def test_secrets_are_refused_and_reserved_fields_cannot_be_forged(tmp_path):
    audit = AuditLog(tmp_path / "a.log")
    with pytest.raises(AuditError, match="api_key"):
        audit.append({"parameters": {"api_key": "abc"}})
    with pytest.raises(AuditError, match="PEM private key"):
        audit.append({"signer": "-----BEGIN EC PRIVATE KEY-----\nxyz"})
    with pytest.raises(AuditError, match="seq"):
        audit.append({"seq": 99})
    assert not (tmp_path / "a.log").exists()
    audit.append({"qa_verdict": {"gates": {"lipsync": {"pass": True}}}, "parameters": {"tokens": 3}})


def test_concurrent_appends_keep_one_chain(tmp_path):
    path = tmp_path / "audit.log"

    def worker(offset: int) -> None:
        audit = AuditLog(path)  # each thread opens its own lock: flock excludes them like separate processes
        for n in range(15):
            audit.append(_event(offset + n))

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify_log(path)
    assert result.ok and result.records == 45 and result.last_seq == 45


def test_cli_audit_verify_exit_codes(log, capsys):
    assert main(["audit", "verify", str(log)]) == 0
    assert "OK, 5 records" in capsys.readouterr().out
    lines = _lines(log)
    lines[0] = lines[0].replace("job-1", "job-X")
    _write(log, lines)
    assert main(["audit", "verify", str(log), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert not summary["ok"] and summary["first_problem"]["seq"] == 1 and summary["first_problem"]["kind"] == "edited"
