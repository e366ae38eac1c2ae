"""Every perf script's JSON goes out the same way: its folder made, indented, one trailing newline; and names the
machine the same way."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def hardware() -> dict:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return {"machine": platform.machine(), "cpu": model, "cpus": os.cpu_count(), "memory_gib": memory,
            "python": platform.python_version(), "load_average_at_start": list(os.getloadavg())}
