"""Fixtures of the parity suite: the official Wan2.2 code as an oracle and a ledger of every comparison made.

Every parity assertion goes through the session fixture `parity`:

    parity.check("S2V DiT forward", ours, theirs, tolerance=1e-5, why="float32 on CPU", case="clip 2, t=500")

records the component, the case, the largest absolute difference, the largest difference relative to the
official output's largest magnitude (max|ours - official| / max|official|, so values near zero do not inflate it),
the tolerance on that relative difference and why it is what it is; then asserts it. The ledger is written as JSON
when TALKINGHEAD_PARITY_REPORT names a file (perf/parity.py sets it and tabulates it in perf/RESULTS.md).

`official` is the `wan` package (tests/parity/official.py says what is replaced to run it on CPU, and why).
`tiny_release(make_tiny_..._release)` writes a tiny random release folder in the official layout once per session
(keyed by the writer) for both sides to load from the same files.
"""

from __future__ import annotations

import types
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from suite_ledger import Ledger, published

from .official import official as import_official

REPORT_ENV = "TALKINGHEAD_PARITY_REPORT"
FLOAT32_TOLERANCE = 1e-5  # relative: float32 on CPU, same math in another order of operations
FLOAT32_WHY = "float32 on CPU; the same math in another order of operations"


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.double() if value.is_floating_point() else value
        return value.numpy()
    return np.asarray(value)


class ParityLedger(Ledger):
    """Our output against the official one per case; `summary()` gives the worst case per component."""

    def check(self, component: str, ours: Any, theirs: Any, tolerance: float = FLOAT32_TOLERANCE,
              why: str = FLOAT32_WHY, case: str = "") -> dict[str, Any]:
        """Record the differences of `ours` from the official `theirs` (same shape) and assert them."""
        a, b = _array(ours), _array(theirs)
        assert a.shape == b.shape, f"{component} {case}: our shape {a.shape}, the official {b.shape}"
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        assert np.isfinite(b64).all(), f"{component} {case}: the official output is not finite"
        scale = float(np.abs(b64).max()) if b64.size else 0.0
        max_abs = float(np.abs(a64 - b64).max()) if a.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        record = {"component": component, "case": case, "max_abs": max_abs, "max_rel": max_rel,
                  "official_max": scale, "elements": int(b.size), "tolerance": tolerance, "why": why,
                  "ok": bool(max_rel <= tolerance)}
        self.records.append(record)
        assert record["ok"], (f"{component} {case}: max abs diff {max_abs:.3g}, relative {max_rel:.3g} "
                              f"> {tolerance:g} ({why})")
        return record

    def summary(self) -> dict[str, Any]:
        worst: dict[str, dict[str, Any]] = {}
        cases: dict[str, int] = defaultdict(int)
        for record in self.records:
            component = record["component"]
            cases[component] += 1
            if component not in worst or record["max_rel"] > worst[component]["max_rel"]:
                worst[component] = record
        return {
            "comparisons": len(self.records), "failed": sum(not r["ok"] for r in self.records),
            "by_component": {name: {"cases": cases[name], **{k: r[k] for k in (
                "max_abs", "max_rel", "tolerance", "why", "case")}} for name, r in worst.items()},
        }


LEVEL_WHY = "uint8 truncation (save_video): a float difference of 1e-5 can cross a level boundary"


def check_job_frames(parity: ParityLedger, job: str, pixels: torch.Tensor, served: np.ndarray, video: torch.Tensor,
                     case: str, tolerance: float, why: str) -> None:
    """A whole job's frames against the official video [3, N, H, W] in [-1, 1]: our decoded float `pixels` (same
    layout) within `tolerance`, our `served` uint8 frames [N, H, W, 3] within one level of save_video's uint8
    ((x + 1) / 2 * 255, truncated) at fewer than 0.1% of the values."""
    parity.check(f"{job}: decoded frames (float)", pixels, video, tolerance=tolerance, why=why, case=case)
    official_uint8 = ((video.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    differing = float(np.mean(served != official_uint8))
    record = parity.check(f"{job}: streamed uint8 frames", served.astype(np.float64),
                          official_uint8.astype(np.float64), tolerance=1 / 255, why=LEVEL_WHY,
                          case=f"{case}; {differing:.3%} of values one level off")
    assert record["max_abs"] <= 1 and differing < 1e-3


@contextmanager
def spying(obj: Any, name: str, calls: list) -> Iterator[None]:
    """Record (args, result) of every call of `obj.name` (the result's items, for a generator) while inside."""
    method = getattr(obj, name)

    def spy(*args, **kwargs):
        result = method(*args, **kwargs)
        if isinstance(result, Generator):
            return (calls.append((args, piece.clone())) or piece for piece in result)
        calls.append((args, result))
        return result

    setattr(obj, name, spy)
    try:
        yield
    finally:
        delattr(obj, name)


@pytest.fixture(scope="session")
def parity() -> Iterator[ParityLedger]:
    yield from published(ParityLedger(), REPORT_ENV, "tests/parity")


@pytest.fixture(scope="session")
def official() -> types.ModuleType:
    return import_official()


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Callable[[Path], Path]], Path]:
    """`tiny_release(writer)`: the folder `writer(folder)` wrote, written on the first call of the session."""
    written: dict[str, Path] = {}

    def release(writer: Callable[[Path], Path]) -> Path:
        key = f"{writer.__module__}.{writer.__qualname__}"
        if key not in written:
            written[key] = Path(writer(tmp_path_factory.mktemp(writer.__name__)))
        return written[key]

    return release


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: a second intra-op thread only adds barrier waits (the machine's other core is busy too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config: pytest.Config) -> None:
    # The official modules use torch.cuda.amp decorators that torch deprecates; that is upstream's to change.
    config.addinivalue_line("filterwarnings", r"ignore:`torch\.cuda\.amp\.autocast:FutureWarning")
    # ... and autocast('cuda') blocks, which torch disables on a CPU machine: the oracle runs in float32 here.
    config.addinivalue_line("filterwarnings", "ignore:CUDA is not available or torch_xla is imported:UserWarning")
    # librosa (the oracle's audio loader) imports audioread, which imports modules Python 3.13 removes.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:audioread")
