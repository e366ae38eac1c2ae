"""Fixtures of the reliability suite: a ledger of every case tried, checks that the server stays healthy and that
nothing hangs, and separate tritonservers for the destructive tests.

The ledger (tests/suite_ledger.py) is written as JSON when TALKINGHEAD_RELIABILITY_REPORT names a file
(perf/reliability.py sets it); perf/RESULTS.md quotes its counts.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from profile_repositories import served_profile
from suite_ledger import Ledger as SuiteLedger
from suite_ledger import published

from client.server import ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, RequestRejected, ServerUnavailable, TalkingHeadClient

REPORT_ENV = "TALKINGHEAD_RELIABILITY_REPORT"
# Every bad input must be answered within this; the slowest measured (a 36 MP photo decoded for real under a
# loaded 2-core machine) takes ~3 s.
ANSWER_BOUND_S = 30.0
# The models the pre-processing job needs: enough for destructive tests that do not generate video.
RESULTS = ("accepted", "succeeded", "delivered", "recovered")
PREPROCESS_MODELS = ("face_detector", "face_landmarks", "face_embedder", "audio_features", "preprocess")


class Ledger(SuiteLedger):
    """What was tried and what came back; `summary()` gives the figures of perf/RESULTS.md."""

    def record(self, category: str, name: str, expected: str, outcome: str, seconds: float, **extra: Any) -> None:
        self.records.append({"category": category, "name": name, "expected": expected, "outcome": outcome,
                             "ok": outcome == expected, "seconds": round(seconds, 3), **extra})

    def summary(self) -> dict[str, Any]:
        by_category: dict[str, Counter] = {}
        for record in self.records:
            if record["category"].endswith("_summary"):  # a run's overall figures, not a case
                continue
            counts = by_category.setdefault(record["category"], Counter())
            examples = record.get("examples", 1)  # an in-process property record stands for its examples
            counts["tried"] += examples
            counts["as_expected"] += examples if record["ok"] else 0
            if "examples" in record:
                counts["accepted"] += record.get("accepted", 0)
                counts["refused"] += record.get("refused", 0)
            else:  # a result (a job done, an event delivered, a model back) or a refusal (a clear error)
                counts["accepted" if record["outcome"] in RESULTS else "refused"] += 1
            counts["hung"] += record.get("hung", False)
            counts["lost"] += record.get("lost", False)
        slowest = max(self.records, key=lambda r: r["seconds"], default=None)
        return {
            "tried": sum(c["tried"] for c in by_category.values()),
            "as_expected": sum(c["as_expected"] for c in by_category.values()),
            "hung": sum(r.get("hung", False) for r in self.records),
            "jobs_lost": sum(r.get("lost", False) for r in self.records),
            "slowest": {k: slowest[k] for k in ("category", "name", "seconds")} if slowest else None,
            "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        }


@pytest.fixture(scope="session")
def ledger() -> Iterator[Ledger]:
    yield from published(Ledger(), REPORT_ENV, "tests/reliability")


def outcome_of(call: Callable[[], Any]) -> tuple[str, str, float]:
    """(outcome, message, seconds) of one request: "accepted", the rejection code, or "unavailable"."""
    started = time.monotonic()
    try:
        call()
        outcome, message = "accepted", ""
    except RequestRejected as exc:
        outcome, message = exc.code or "rejected_without_code", str(exc)
    except ServerUnavailable as exc:
        outcome, message = "unavailable", str(exc)
    return outcome, message, time.monotonic() - started


def assert_healthy(options: ServerOptions) -> None:
    """The server is live and ready (strict readiness: every model loaded)."""
    for probe in ("live", "ready"):
        try:
            with urllib.request.urlopen(f"http://{options.http_url}/v2/health/{probe}", timeout=10) as response:
                assert response.status == 200, f"server not {probe}: HTTP {response.status}"
        except urllib.error.URLError as exc:
            raise AssertionError(f"server not {probe}: {exc}") from None


def assert_clear(message: str) -> None:
    """A message meant for a person: no traceback, no Python internals, and it says what to do."""
    assert message and "Traceback" not in message and "File \"" not in message, message
    assert len(message) < 600, message


@pytest.fixture
def start_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Callable[..., TritonServer]]:
    """Start private tritonservers for destructive tests (the --model-config-name profile too); all are stopped at
    the end of the test."""
    started: list[TritonServer] = []
    profile = served_profile(request.config, tmp_path_factory)

    def start(models: tuple[str, ...] = (), ports: tuple[int, int, int] | None = None) -> TritonServer:
        http, grpc, metrics = ports or (free_port(), free_port(), free_port())
        options = ServerOptions(http_port=http, grpc_port=grpc, metrics_port=metrics, models=models,
                                weights=tmp_path_factory.mktemp("no-weights"), **profile)
        server = TritonServer(options, log_path=tmp_path_factory.mktemp("fault-server") / "tritonserver.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def session_client(triton_server: ServerOptions) -> Iterator[TalkingHeadClient]:
    with TalkingHeadClient(Endpoint(triton_server.grpc_url, "grpc"), timeout_s=ANSWER_BOUND_S * 2) as client:
        yield client
