"""Run the parity suite (tests/parity) and write every comparison with the official Wan2.2 code as JSON, with a table.

    python perf/parity.py --out perf/results/parity_cpu.json

Every figure comes from the suite's ledger (tests/parity/conftest.py): each `parity.check` is one record of a
component, a case, the largest absolute difference from the official output, the largest difference relative to
the official output's largest magnitude, and the tolerance with its reason. `--table-only` prints the table of an
existing JSON file without running anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from suite_ledger import publish  # noqa: E402

from tests.parity.conftest import REPORT_ENV, ParityLedger  # noqa: E402


def table(report: dict) -> str:
    summary = ParityLedger(report["records"]).summary()
    lines = ["| component | cases | worst case | max abs diff | max rel diff | tolerance (rel) | why that tolerance |",
             "|---|---|---|---|---|---|---|"]
    for component, worst in summary["by_component"].items():
        lines.append(f"| {component} | {worst['cases']} | {worst['case']} | {worst['max_abs']:.2e} | "
                     f"{worst['max_rel']:.2e} | {worst['tolerance']:g} | {worst['why']} |")
    lines.append(f"\n{summary['comparisons']} comparisons, {summary['failed']} over tolerance; "
                 f"ledger open {report['wall_s']} s on {report['machine']['cpus']} CPUs.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(publish(__doc__, ROOT, "tests/parity", REPORT_ENV, ROOT / "perf" / "results" / "parity_cpu.json", table))
