"""Run the reliability suite (tests/reliability) and write what it tried and what came back as JSON, with a table.

    python perf/reliability.py --out perf/results/reliability.json

Every figure comes from the suite's ledger (tests/reliability/conftest.py): each bad input, malformed request,
property example, injected fault and security probe is one record with its expected and actual outcome.
`--table-only` prints the table of an existing JSON file without running anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from suite_ledger import publish  # noqa: E402

from tests.reliability.conftest import REPORT_ENV, Ledger  # noqa: E402

TITLES = {
    "bad_input": "bad inputs (corpus) through preprocess / talking_head",
    "malformed_request": "malformed Triton requests (gRPC, HTTP, raw HTTP, streams)",
    "property": "property examples through the server (hypothesis)",
    "property_in_process": "property examples in process (decoders, parameter checks)",
    "fault": "faults injected",
    "security": "security probes",
    "gateway_security": "gateway: SSRF, tenant isolation, API key brute force, server paths in reports",
    "gateway_hardening": "gateway, adversarial pass (issue 21): wrong keys vs valid keys, forwarded headers, quota "
                         "and queue-cap races (SQLite, PostgreSQL), malformed submits, slow clients, access log",
    "gateway_fault": "gateway: killed mid-job; webhook receiver outages (simulated clock), slow and huge answers",
    "cli_hardening": "CLI (issue 21): audit logs of garbage, bidi in the audit log, impossible tenant limits, "
                     "pipes and folders where files go",
    "gateway_load": "gateway: jobs accepted under load (locust)",
    "gateway_load_summary": "gateway: load run (locust), no job lost",
}


def table(report: dict) -> str:
    summary = Ledger(report["records"]).summary()
    lines = ["| what | tried | as expected | result | clear refusal | hung | jobs lost |",
             "|---|---|---|---|---|---|---|"]
    for category, counts in summary["by_category"].items():
        lines.append(f"| {TITLES.get(category, category)} | {counts['tried']} | {counts['as_expected']} | "
                     f"{counts.get('accepted', 0)} | {counts.get('refused', 0)} | {counts['hung']} | "
                     f"{counts['lost']} |")
    lines.append(f"| **all** | **{summary['tried']}** | **{summary['as_expected']}** | | | **{summary['hung']}** | "
                 f"**{summary['jobs_lost']}** |")
    faults = [r for r in report["records"] if r["category"] in ("fault", "gateway_fault")]
    lines += ["", "| fault | outcome | seconds | detail |", "|---|---|---|---|"]
    for record in faults:
        detail = {k: v for k, v in record.items() if k in ("failed_after_kill_s", "recovered_after_s", "reload_s",
                                                           "left", "stubs_alive_5s_after",
                                                           "orphans_after_launcher_stop", "triton_reports_ready",
                                                           "attempts", "window_s", "delivered_after_s", "runs",
                                                           "most_at_once", "peak_python_memory_mb",
                                                           "sent_by_receiver_mb")}
        lines.append(f"| {record['name']} | {record['outcome']} | {record['seconds']:.2f} | "
                     f"{json.dumps(detail) if detail else ''} |")
    for load in (r for r in report["records"] if r["category"] == "gateway_load_summary"):
        lines += ["", "load run: " + json.dumps({k: v for k, v in load.items() if k not in (
            "category", "name", "expected", "outcome", "ok", "seconds")})]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(publish(__doc__, ROOT, "tests/reliability", REPORT_ENV, ROOT / "perf" / "results" / "reliability.json",
                     table))
