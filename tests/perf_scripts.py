"""Load a perf/ script as a module, with perf/ on sys.path while it imports (the scripts import each other)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PERF = Path(__file__).resolve().parents[1] / "perf"


def load_perf_script(name: str) -> ModuleType:
    """perf/<name>.py as the module `name`."""
    sys.path.insert(0, str(PERF))
    try:
        module_spec = importlib.util.spec_from_file_location(name, PERF / f"{name}.py")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PERF))
    return module
