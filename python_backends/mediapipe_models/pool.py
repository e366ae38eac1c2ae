"""The items of one request (frames, face boxes) run in parallel, each thread on its own interpreter.

ai-edge-litert's `Interpreter.invoke()` releases the GIL (`perf/bench_mediapipe.py --only pool` measures it), so
threads run their interpreters at the same time; an interpreter holds its tensors, so it runs one call at a time.
Every item is computed by the same code on an interpreter built the same way, with a batch of one: the results do
not depend on the pool's size, nor on which worker took the item.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Generic, TypeVar

Worker, Item, Result = TypeVar("Worker"), TypeVar("Item"), TypeVar("Result")

MAX_SIZE = 64


class InterpreterPool(Generic[Worker]):
    """`size` workers (each its own interpreters, made by `build`) and as many threads. A task must not map on its
    own pool (it holds one of the workers the nested items would wait for); mapping on another pool is fine."""

    def __init__(self, build: Callable[[], Worker], size: int, name: str) -> None:
        if not 1 <= size <= MAX_SIZE:
            raise ValueError(f"{name}: a pool of 1 to {MAX_SIZE} interpreters, got {size}")
        self.workers = [build() for _ in range(size)]
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        for worker in self.workers:
            self._idle.put(worker)
        # One worker: the caller's own thread runs the items, one after another, as before the pool.
        self._executor = ThreadPoolExecutor(size, thread_name_prefix=f"mediapipe-{name}") if size > 1 else None

    @property
    def size(self) -> int:
        return len(self.workers)

    def map(self, task: Callable[[Worker, Item], Result], items: Sequence[Item]) -> list[Result]:
        """`[task(worker, item) for item in items]` in the items' order; the first failing item's error is raised
        (the items not yet started are dropped, those running are waited for)."""
        if self._executor is None or len(items) < 2:
            return [self._run(task, item) for item in items]
        futures = [self._executor.submit(self._run, task, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)  # the items already running finish before the error leaves: none outlives its request
            raise

    def _run(self, task: Callable[[Worker, Item], Result], item: Item) -> Result:
        # A free worker always exists for a pool thread (as many workers as threads); concurrent callers of a
        # one-worker pool wait here for it in turn.
        worker = self._idle.get()
        try:
            return task(worker, item)
        finally:
            self._idle.put(worker)
