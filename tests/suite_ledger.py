"""A suite's ledger: one record per case tried, written as JSON when the suite's environment variable names a file.

tests/reliability and tests/parity keep one each (a session fixture `ledger` / `parity`); the perf/ scripts that
publish their figures (perf/reliability.py, perf/parity.py) run the suite through `publish` with that variable
set and tabulate the file, so every figure in perf/RESULTS.md comes from a record a test made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Ledger:
    """Records of one session; subclasses add their `record` and a `summary` of the figures they publish."""

    records: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def summary(self) -> dict[str, Any]:
        return {"records": len(self.records)}


def published(book: Ledger, report_env: str, suite: str) -> Iterator[Ledger]:
    """Body of a session fixture: yield the ledger, then write it where `report_env` says (nowhere if unset)."""
    yield book
    target = os.environ.get(report_env)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps({
            "suite": suite, "wall_s": round(time.time() - book.started, 1),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "summary": book.summary(), "records": book.records,
        }, indent=2))


def run_suite(root: Path, suite: str, report_env: str, out: Path, pytest_args: Sequence[str] = ()) -> int:
    """Run `pytest <root>/<suite>` with the ledger written to `out`; pytest's exit code."""
    started = time.monotonic()
    env = {**os.environ, report_env: str(out.resolve())}
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / suite),
                            *pytest_args], cwd=root, env=env)
    print(f"pytest exit code {code} after {time.monotonic() - started:.0f} s", file=sys.stderr)
    return code


def publish(doc: str, root: Path, suite: str, report_env: str, default_out: Path,
            table: Callable[[dict], str]) -> int:
    """Command line of a perf/ script: run the suite (or, with --table-only, not) and print its ledger's table."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--table-only", action="store_true", help="tabulate an existing --out file, run nothing")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k NAME")
    args = parser.parse_args()
    if not args.table_only:
        code = run_suite(root, suite, report_env, args.out, args.pytest_args)
        if code != 0:
            return code
    print(table(json.loads(args.out.read_text())))
    return 0
