"""Loading a perf/ script as a module, as its tests do (perf/ is not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PERF = Path(__file__).resolve().parents[1] / "perf"


def load_perf_script(name: str) -> ModuleType:
    """perf/<name>.py, freshly executed."""
    spec = importlib.util.spec_from_file_location(name, PERF / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
