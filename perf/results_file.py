"""Every perf script's JSON goes out the same way: its folder made, indented, one trailing newline."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
