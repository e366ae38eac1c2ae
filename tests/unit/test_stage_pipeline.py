"""The overlapped stage pipeline: same items as running the stages one after another, in order, errors raised
in the consumer without a hang, bounded backpressure, early first items, clean cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from python_backends.generation.stage_pipeline import Stage, busy_stage_threads, on_kept_thread, run_stages


def _double(x: int) -> list[int]:
    return [2 * x]


class Pairs:
    """A stateful stage: emits the sum of every two items, the odd one out at the end."""

    def __init__(self) -> None:
        self.held: list[int] = []

    def run(self, x: int) -> list[int]:
        self.held.append(x)
        if len(self.held) == 2:
            out, self.held = [sum(self.held)], []
            return out
        return []

    def flush(self) -> list[int]:
        return list(self.held)


def _stages() -> list[Stage]:
    pairs = Pairs()
    return [Stage("double", _double), Stage("pairs", pairs.run, pairs.flush)]


@pytest.mark.parametrize("count", [0, 1, 7, 30])
def test_overlapped_items_equal_the_sequential_ones_in_order(count) -> None:
    sequential = list(run_stages(range(count), _stages(), overlap=False))
    overlapped = list(run_stages(range(count), _stages(), depth=1))
    assert overlapped == sequential
    assert sequential == [2 * a + 2 * b for a, b in zip(range(0, count - 1, 2), range(1, count, 2))] + (
        [2 * (count - 1)] if count % 2 else [])


@pytest.mark.parametrize("where", ["source", "first", "last"])
def test_an_error_anywhere_reaches_the_consumer_without_a_hang(where) -> None:
    def source():
        for i in range(100):
            if where == "source" and i == 5:
                raise ValueError("source broke")
            yield i

    def broken(x: int) -> list[int]:
        if x == 10:
            raise ValueError(f"{where} broke")
        return [x]

    stages = [Stage("first", broken if where == "first" else _double),
              Stage("last", broken if where == "last" else _double)]
    started = time.perf_counter()
    with pytest.raises(ValueError, match=f"{where} broke"):
        list(run_stages(source(), stages, depth=2))
    assert time.perf_counter() - started < 5.0
    assert not busy_stage_threads()


def test_backpressure_bounds_what_runs_ahead_of_a_slow_consumer() -> None:
    made = []

    def source():
        for i in range(40):
            made.append(i)
            yield i

    run = run_stages(source(), [Stage("a", _double), Stage("b", _double)], depth=2)
    consumed = 0
    for _ in run:
        consumed += 1
        time.sleep(0.01)
        # per channel at most `depth` waiting plus one in each thread's hand; three channels, three threads
        assert len(made) - consumed <= 3 * 2 + 3
    assert consumed == 40 and run.stats.max_waiting <= 2


def test_the_first_item_arrives_while_the_source_still_works() -> None:
    done = threading.Event()

    def source():
        for i in range(5):
            time.sleep(0.05)
            yield i
        done.set()

    run = run_stages(source(), [Stage("a", _double)], depth=2)
    first = next(run)
    assert first == 0 and not done.is_set()
    assert list(run) == [2, 4, 6, 8]
    assert run.stats.first_item_s < run.stats.wall_s
    assert run.stats.items == {"source": 5, "a": 5}


def test_closing_early_stops_every_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def source():
        try:
            yield from range(10_000)
        finally:
            closed.set()

    run = run_stages(source(), [Stage("a", _double)], depth=2)
    assert next(run) == 0
    run.close()
    assert closed.is_set()
    assert not busy_stage_threads()


def test_stages_overlap_in_time() -> None:
    """Three stages of 20 ms per item over 10 items: about 10 x 20 ms overlapped, not 3 x 10 x 20 ms."""
    def slow(x: int) -> list[int]:
        time.sleep(0.02)
        return [x]

    def source():
        for i in range(10):
            time.sleep(0.02)
            yield i

    run = run_stages(source(), [Stage("a", slow), Stage("b", slow)], depth=2)
    assert list(run) == list(range(10))
    assert run.stats.wall_s < 0.75 * sum(run.stats.busy_s.values())


@pytest.mark.parametrize("overlap", [False, True])
def test_start_runs_before_the_first_item_and_a_generator_stage_works_on_after_its_item(overlap) -> None:
    log: list[str] = []

    def run(x: int):
        log.append(f"run {x}")
        yield x
        log.append(f"after {x}")  # e.g. priming the next clip's decoder once this item is on its way

    stage = Stage("a", run, start=lambda: log.append("start"))
    assert list(run_stages(range(2), [stage], overlap=overlap)) == [0, 1]
    assert log == ["start", "run 0", "after 0", "run 1", "after 1"]


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        run_stages([], [], depth=0)


@pytest.mark.gpu
def test_cuda_stages_on_their_own_streams_give_the_sequential_result() -> None:
    """Each thread on its own CUDA stream, items handed on with events: the same numbers as one stream."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")

    def source():
        generator = torch.Generator(device="cuda").manual_seed(0)
        for _ in range(6):
            yield torch.randn(1024, 1024, device="cuda", generator=generator)

    def stages() -> list[Stage]:
        return [Stage("square", lambda x: [x @ x]), Stage("host", lambda y: [y.double().sum().item()])]

    sequential = list(run_stages(source(), stages(), device="cuda", overlap=False))
    run = run_stages(source(), stages(), device="cuda", depth=1)
    # (cuBLAS may pick another algorithm on another stream: equal to round-off, in order)
    assert list(run) == pytest.approx(sequential, rel=1e-4) and run.stats.items == {"source": 6, "square": 6,
                                                                                     "host": 6}


@pytest.mark.gpu
def test_a_prioritised_source_streams_before_the_stages_and_gives_the_same_result() -> None:
    """prioritise_source: the source's thread on the device's highest-priority stream, the stages' on its lowest;
    the items are those of the run without priorities."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    lowest = torch.cuda.Stream.priority_range()[0]
    seen: dict[str, int] = {}

    def source():
        seen["source"] = torch.cuda.current_stream().priority
        generator = torch.Generator(device="cuda").manual_seed(0)
        for _ in range(4):
            yield torch.randn(512, 512, device="cuda", generator=generator)

    def square(x):
        seen["square"] = torch.cuda.current_stream().priority
        return [(x @ x).double().sum().item()]

    plain = list(run_stages(source(), [Stage("square", square)], device="cuda"))
    assert seen == {"source": 0, "square": 0}
    prioritised = list(run_stages(source(), [Stage("square", square)], device="cuda", prioritise_source=True))
    assert seen["square"] == lowest and seen["source"] < seen["square"]  # (lower is more urgent)
    assert prioritised == pytest.approx(plain, rel=1e-4)


def test_runs_one_after_another_keep_their_threads_and_concurrent_runs_get_their_own() -> None:
    """cuDNN's plans (and benchmark timings) are kept per thread, so a role's thread outlives its run."""
    seen: set[tuple[str, int]] = set()

    def stage(role: str) -> Stage:
        return Stage(role, lambda x: seen.add((role, threading.get_ident())) or [threading.get_ident()])

    for _ in range(2):
        list(run_stages(iter(range(3)), [stage("a"), stage("b")]))
    assert len(seen) == 2  # one thread per role, the same in both runs
    one = run_stages(iter(range(100)), [stage("a")])  # long enough that both sources are still working
    other = run_stages(iter(range(100)), [stage("a")])
    held = next(one)  # `one`'s thread of role "a" is still working while `other` runs
    assert next(other) != held
    assert busy_stage_threads() == ["a", "a", "source", "source"]
    one.close(), other.close()
    assert not busy_stage_threads()


def test_a_kept_thread_takes_the_callers_intra_op_thread_count() -> None:
    """A count of its first run's would sum in another order than the caller's one-thread run."""
    torch = pytest.importorskip("torch")
    seen: list[int] = []
    before = torch.get_num_threads()
    try:
        for count in (2, 1):
            torch.set_num_threads(count)
            list(run_stages(iter(range(2)), [Stage("counted", lambda x: seen.append(torch.get_num_threads()) or [x])],
                            device="cpu"))
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 2, 1, 1]


def test_work_on_a_kept_thread_returns_its_value_or_raises_its_error_in_the_caller() -> None:
    ident = on_kept_thread("probe", threading.get_ident)
    assert ident != threading.get_ident() and on_kept_thread("probe", threading.get_ident) == ident
    with pytest.raises(ValueError, match="no photo"):
        on_kept_thread("probe", lambda: (_ for _ in ()).throw(ValueError("no photo")))
    assert not busy_stage_threads()


def test_a_kept_thread_outlives_a_job_that_raised_past_its_run(caplog) -> None:
    from python_backends.generation import stage_pipeline

    def broken() -> None:
        raise RuntimeError("outside the run's handling")

    stage_pipeline._WORKERS.start("fragile", broken).wait()
    assert "outside the run's handling" in caplog.text
    assert on_kept_thread("fragile", lambda: 7) == 7  # the same thread, still serving
