"""Per-frame OpenCV work spread over the cores.

OpenCV and numpy release the GIL inside their calls, so a thread per core runs independent frames (or frame
pairs) in parallel; each item is computed exactly as it would be alone, so the results do not depend on how
many threads there are.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item, Result = TypeVar("Item"), TypeVar("Result")

# Past ~8 workers the per-item work (a few ms) no longer hides the hand-off, and the orchestrator's other gates
# and the model instances share the same cores.
MAX_WORKERS = 8
THREAD_PREFIX = "quality-frames"

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def workers() -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def map_frames(work: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """`[work(item) for item in items]`, in order, on the shared pool (inline where there is one core, and inside
    a work item: a nested map waiting on the pool from the pool's own threads could wait forever)."""
    global _pool
    if workers() == 1 or threading.current_thread().name.startswith(THREAD_PREFIX):
        return [work(item) for item in items]
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix=THREAD_PREFIX)
    return list(_pool.map(work, items))
