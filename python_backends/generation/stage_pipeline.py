"""Overlapped stages: a source (the DiT's denoising loop) and the stages after it, each in its own thread.

Why: a 10 s clip spends its time in the DiT, and everything else (VAE decoding, frame interpolation, resizing,
the copy to the host, encoding) can run while the DiT denoises the next block or clip. `run_stages` connects the
source and the stages with bounded queues, so at most `depth` items wait between two stages (backpressure: a
slow consumer stops the DiT instead of piling up frames in memory) and the first decoded frames leave as soon as
they exist.

Each stage is a callable taking one item and returning the items it makes from it (a list or a generator; none
for an item that completes nothing yet; a generator may go on working after its last item, off the critical
path), plus an optional `flush` for what it still holds at the end and an optional `start` run before its first
item arrives. Stages may keep state: each runs in one thread, items in order. Running the same stages one after
another in the caller's thread (`overlap=False`) gives the same items; that is what the overlapped run is tested
against.

On a GPU every thread issues its work on its own CUDA stream; an item crosses to the next thread with an event
recorded after it was made, which the next stream waits for, and each stage waits for its own stream before it
hands an item on, so a tensor is never freed while another stream still reads it, and the stage times are real.
With `prioritise_source` the source's stream gets the device's highest priority and the stages' streams the
lowest: the GPU's block scheduler then starts the source's pending thread blocks first, and the stages get the SMs
the source leaves. For LiveAvatar on an H100 that made the DiT 8-12 % faster but decoding fell behind, and the
clip ended 7 % later (perf/RESULTS.md, "An H200 again"), so the engines leave it off by default.

Errors: an exception in the source or any stage stops the threads upstream and is raised in the consumer (the
original exception). Closing the iterator (a client that stopped reading) stops every thread too.

The threads live on between runs, one set per role (the source's name, each stage's; _Workers): PyTorch keeps
cuDNN's execution plans, and with torch.backends.cudnn.benchmark their timings, per thread (Conv_v8.cpp's
thread_local benchmark cache), so a thread per run would build or time every convolution's plan again at every
request. On an H100 with the VAE's cuDNN benchmark on, that made each request's start 3-4x slower.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a blocked thread looks at the stop flag
_END = object()  # the source is exhausted and every stage flushed
_STOPPED = object()  # a thread stopped early (the run was cancelled or a later stage failed)


class _Worker:
    """A long-lived thread running one job at a time for `_Workers`."""

    def __init__(self, role: str, workers: _Workers) -> None:
        self.role, self.workers = role, workers
        self.jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...], threading.Event]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=f"stage-{role}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            target, args, done = self.jobs.get()
            try:
                target(*args)  # the run's thread functions hand their own errors to the consumer
            except BaseException:  # noqa: BLE001 - a kept thread outlives a job's failure, or its next job would hang
                log.exception("a %s job failed outside its run's error handling", self.role)
            finally:
                self.workers.release(self)
                done.set()


class _Workers:
    """Threads per role, kept when idle: a run takes an idle one of each role it needs or starts a new one, so
    one run at a time always gets the same threads, and concurrent runs get their own."""

    def __init__(self) -> None:
        self._idle: dict[str, list[_Worker]] = {}
        self._busy: dict[int, str] = {}
        self._lock = threading.Lock()

    def start(self, role: str, target: Callable[..., None], *args: Any) -> threading.Event:
        """Run `target(*args)` on a thread of `role`; the event is set when it returned."""
        with self._lock:
            idle = self._idle.get(role)
            worker = idle.pop() if idle else _Worker(role, self)
            self._busy[id(worker)] = role
        done = threading.Event()
        worker.jobs.put((target, args, done))
        return done

    def release(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.pop(id(worker), None)
            self._idle.setdefault(worker.role, []).append(worker)

    def busy(self) -> list[str]:
        """The roles of the threads running a job now (tests: a run that ended left none working)."""
        with self._lock:
            return sorted(self._busy.values())


_WORKERS = _Workers()


def busy_stage_threads() -> list[str]:
    return _WORKERS.busy()


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Any], Iterable[Any] | None]
    flush: Callable[[], Iterable[Any] | None] | None = None
    start: Callable[[], None] | None = None  # work that needs no input, done before the first item arrives


@dataclass
class StageStats:
    """Busy time per stage (the source's included), items each made, and when the consumer got the first one."""

    busy_s: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    first_item_s: float | None = None  # from the start of the run to the first item the consumer received
    wall_s: float = 0.0
    max_waiting: int = 0  # most items ever waiting between two stages (<= depth + 1: one more may be in hand)

    def as_dict(self) -> dict:
        return {"busy_s": {k: round(v, 4) for k, v in self.busy_s.items()}, "items": dict(self.items),
                "first_item_s": None if self.first_item_s is None else round(self.first_item_s, 4),
                "wall_s": round(self.wall_s, 4), "sum_of_stages_s": round(sum(self.busy_s.values()), 4),
                "max_waiting": self.max_waiting}


@dataclass
class _Message:
    value: Any
    event: Any = None  # torch.cuda.Event recorded after `value` was made (GPU runs)
    error: BaseException | None = None


class _Channel:
    """A bounded queue between two threads. `cancel` (the consumer stopped) ends every wait; `closed` (the
    reader failed or stopped) refuses new items, so the threads before a failed stage stop one after another;
    a thread's last message (an error) always gets through."""

    def __init__(self, depth: int, cancel: threading.Event, stats: StageStats) -> None:
        self.queue: queue.Queue[_Message] = queue.Queue(maxsize=depth)
        self.cancel, self.closed, self.stats = cancel, threading.Event(), stats

    def put(self, message: _Message) -> bool:
        while not (self.cancel.is_set() or self.closed.is_set()):
            try:
                self.queue.put(message, timeout=_POLL_S)
                self.stats.max_waiting = max(self.stats.max_waiting, self.queue.qsize())
                return True
            except queue.Full:
                continue
        return False

    def put_last(self, message: _Message) -> None:
        """A thread's last message (an error, or that it stopped): room is made by dropping a waiting item,
        which nobody will use once the run fails."""
        while True:
            try:
                self.queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    pass

    def get(self) -> _Message | None:
        while not self.cancel.is_set():
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None


class _Device:
    """CUDA stream handling of one thread; does nothing on the CPU."""

    def __init__(self, device: Any) -> None:
        self.torch = self.device = None
        self.cuda = False
        if device is None:  # plain Python stages: no torch
            return
        import torch

        self.torch = torch
        # the caller's intra-op threads: a kept thread would otherwise go on with the count of its first run, and
        # a different count sums in another order (the same items as one thread, bit for bit, needs the same)
        self.threads = torch.get_num_threads()
        place = torch.device(device)
        self.cuda = place.type == "cuda" and torch.cuda.is_available()
        if self.cuda and place.index is None:  # "cuda": the caller's current device (set_device needs an index)
            place = torch.device("cuda", torch.cuda.current_device())
        self.device = place if self.cuda else None

    def thread_context(self, priority: bool | None = None) -> contextlib.ExitStack:
        """Entered in the thread it serves: grad mode, the current device and the intra-op thread count are per
        thread (no grad, the caller's device and count), and the thread's work goes on a stream of its own: of the
        device's highest priority (True), its lowest (False) or the default (None)."""
        stack = contextlib.ExitStack()
        if self.torch is not None:
            if self.torch.get_num_threads() != self.threads:
                self.torch.set_num_threads(self.threads)
            stack.enter_context(self.torch.no_grad())
        if self.cuda:
            self.torch.cuda.set_device(self.device)
            lowest, highest = self.torch.cuda.Stream.priority_range()
            level = 0 if priority is None else highest if priority else lowest
            stack.enter_context(self.torch.cuda.stream(self.torch.cuda.Stream(self.device, priority=level)))
        return stack

    def no_grad(self) -> Any:
        return contextlib.nullcontext() if self.torch is None else self.torch.no_grad()

    def settle_caller(self) -> None:
        """Wait for the caller's stream: what it queued before the run (an engine's references, carried frames,
        caches) is read by the threads' own streams, which would not wait for it."""
        if self.cuda:
            self.torch.cuda.current_stream(self.device).synchronize()

    def record(self) -> Any:
        """An event after what this thread's stream has queued so far (None on the CPU)."""
        return self.torch.cuda.current_stream(self.device).record_event() if self.cuda else None

    def wait(self, message: _Message) -> None:
        if message.event is not None:
            self.torch.cuda.current_stream(self.device).wait_event(message.event)

    def finish(self) -> Any:
        """Wait for this thread's stream; the event the next thread waits on (already complete, and cheap)."""
        if not self.cuda:
            return None
        stream = self.torch.cuda.current_stream(self.device)
        event = stream.record_event()
        stream.synchronize()
        return event


def _items(result: Iterable[Any] | None) -> Iterable[Any]:
    return () if result is None else result


class StageRun:
    """Iterate the last stage's items; `stats` fills in as it runs. Use as an iterator, close when done early."""

    def __init__(self, source: Iterable[Any], stages: Sequence[Stage], depth: int = 2, device: Any = None,
                 source_name: str = "source", overlap: bool = True, prioritise_source: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.source, self.stages, self.depth, self.overlap = source, list(stages), depth, overlap
        # stream priorities of the source's thread and the stages' (None: the default for both)
        self._priority = (True, False) if prioritise_source else (None, None)
        self.source_name = source_name
        self.stats = StageStats(busy_s={source_name: 0.0, **{s.name: 0.0 for s in stages}},
                                items={source_name: 0, **{s.name: 0 for s in stages}})
        self._device = _Device(device)
        self._iterator = self._overlapped() if overlap else self._sequential()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    # -- one thread ---------------------------------------------------------------------------------------------

    def _timed(self, name: str, produce: Callable[[], Iterable[Any]]) -> Iterator[Any]:
        """The items of `produce()`, with the time spent making each added to `name`'s busy time."""
        started = time.perf_counter()
        with self._device.no_grad():
            iterator = iter(_items(produce()))
        while True:
            try:
                with self._device.no_grad():  # as in the threads, so that both runs do the same work
                    item = next(iterator)
            except StopIteration:
                self.stats.busy_s[name] += time.perf_counter() - started
                return
            self.stats.busy_s[name] += time.perf_counter() - started
            self.stats.items[name] += 1
            yield item
            started = time.perf_counter()

    def _sequential(self) -> Iterator[Any]:
        started = time.perf_counter()

        def through(stage: Stage, items: Iterator[Any]) -> Iterator[Any]:
            if stage.start is not None:
                yield from self._timed(stage.name, stage.start)
            for item in items:
                yield from self._timed(stage.name, lambda item=item: stage.run(item))
            if stage.flush is not None:
                yield from self._timed(stage.name, stage.flush)

        source = iter(self.source)
        items = self._timed(self.source_name, lambda: source)
        for stage in self.stages:
            items = through(stage, items)
        try:
            for item in items:
                if self.stats.first_item_s is None:
                    self.stats.first_item_s = time.perf_counter() - started
                yield item
        finally:
            self.stats.wall_s = time.perf_counter() - started
            if hasattr(source, "close"):
                source.close()

    # -- threads ------------------------------------------------------------------------------------------------

    def _overlapped(self) -> Iterator[Any]:
        started = time.perf_counter()
        self._device.settle_caller()
        cancel = threading.Event()
        channels = [_Channel(self.depth, cancel, self.stats) for _ in range(len(self.stages) + 1)]
        finished = [_WORKERS.start(self.source_name, self._source_thread, channels[0])]
        finished += [_WORKERS.start(stage.name, self._stage_thread, stage, channels[index], channels[index + 1])
                    for index, stage in enumerate(self.stages)]
        try:
            while True:
                message = channels[-1].get()
                if message is None or message.value is _END or message.value is _STOPPED:
                    return
                if message.error is not None:
                    raise message.error
                if self.stats.first_item_s is None:
                    self.stats.first_item_s = time.perf_counter() - started
                yield message.value
        finally:
            cancel.set()
            for done in finished:
                done.wait()
            self.stats.wall_s = time.perf_counter() - started

    def _emit(self, name: str, produce: Callable[[], Iterable[Any]], out: _Channel) -> bool:
        """Hand on every item `produce()` makes; False when the run stopped meanwhile."""
        for item in self._timed(name, produce):
            if not out.put(_Message(item, self._device.finish())):
                return False
        return True

    def _source_thread(self, out: _Channel) -> None:
        source = iter(self.source)
        last = _Message(_STOPPED)
        try:
            with self._device.thread_context(self._priority[0]):
                if self._emit(self.source_name, lambda: source, out) and out.put(_Message(_END)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            last = _Message(None, error=exc)
        finally:
            if hasattr(source, "close"):
                source.close()  # the source's own cleanup, in the thread that iterated it
        out.put_last(last)

    def _stage_thread(self, stage: Stage, inbox: _Channel, out: _Channel) -> None:
        last = _Message(_STOPPED)
        try:
            with self._device.thread_context(self._priority[1]):
                if stage.start is not None:  # while the stages before this one make its first item
                    for _ in self._timed(stage.name, stage.start):
                        pass
                while True:
                    message = inbox.get()
                    if message is None or message.value is _STOPPED:
                        break
                    if message.error is not None:
                        last = message
                        break
                    if message.value is _END:
                        if (stage.flush is None or self._emit(stage.name, stage.flush, out)) and out.put(message):
                            return
                        break
                    self._device.wait(message)
                    if not self._emit(stage.name, lambda value=message.value: stage.run(value), out):
                        break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            last = _Message(None, error=exc)
        inbox.closed.set()  # the threads before this one stop: nothing will read what they make
        out.put_last(last)


def run_stages(source: Iterable[Any], stages: Sequence[Stage], depth: int = 2, device: Any = None,
               source_name: str = "source", overlap: bool = True, prioritise_source: bool = False) -> StageRun:
    """The items of `source` through `stages`, overlapped in threads (or one after another with overlap=False)."""
    return StageRun(source, stages, depth, device, source_name, overlap, prioritise_source)


def on_kept_thread(role: str, work: Callable[[], Any], device: Any = None) -> Any:
    """`work()` on a kept thread of `role` (on a GPU, on that thread's stream, ordered after what the caller queued
    and finished before this returns), for work whose per-thread cuDNN plans should outlive the calling thread: a
    request's start runs on whichever thread of a serving pool took the request."""
    place = _Device(device)
    before = place.record()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            with place.thread_context():
                place.wait(_Message(None, before))
                out["value"] = work()
                place.finish()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            out["error"] = exc

    _WORKERS.start(role, target).wait()
    if "error" in out:
        raise out["error"]
    return out["value"]
