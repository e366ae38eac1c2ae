"""The Triton series the autoscaler reads (deploy/kubernetes/monitoring) exist on the real server, with the
model labels the adapter rules filter on, and the pipeline's backlog gauges rise under load and fall back to zero."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from client.repository import copy_repositories, set_parameter
from client.server import PROJECT_ROOT, ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, RequestRejected, TalkingHeadClient
from python_backends.backlog import GAUGES, OLDEST_QUEUED_AGE, QUEUED_JOBS, QUEUED_SEGMENTS, RUNNING_SEGMENTS

pytestmark = pytest.mark.integration
RULES = PROJECT_ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheus-adapter-rules.yaml"


def test_metrics_endpoint_has_every_series_the_adapter_rules_read(triton_server):
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load(yaml.safe_load(RULES.read_text())["data"]["config.yaml"])["rules"]
    queries = " ".join(rule["seriesQuery"] + " " + rule["metricsQuery"] for rule in rules)
    series = set(re.findall(r"\bnv_[a-z_]+", queries))
    assert series  # the rules read Triton's nv_* series
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for name in sorted(series):
        models = set(re.findall(rf'^{name}{{[^}}]*model="([^"]+)"', text, re.M))
        assert {"talking_head", "video_generator"} <= models, f"{name}: models {sorted(models)}"


# ---------------------------------------------------------------- the backlog gauges (python_backends/backlog.py)

GAUGE_LINE = re.compile(r'^(talkinghead_[a-z_]+)\{([^}]*)\} (\S+)$', re.M)
BACKLOG_MODELS = ("talking_head", "video_generator")
SMALL = {"fps": 5, "width": 128, "height": 128, "chunk_frames": 5, "max_duration_s": 2}


def backlog_gauges(metrics_url: str) -> dict[tuple[str, str], float]:
    """(metric, model) -> value, summed over the model's instances."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values: dict[tuple[str, str], float] = {}
    for name, labels, value in GAUGE_LINE.findall(text):
        model = dict(re.findall(r'(\w+)="([^"]*)"', labels))["model"]
        values[name, model] = values.get((name, model), 0.0) + float(value)
    return values


def _wait_idle(metrics_url: str, timeout: float = 120.0) -> dict[tuple[str, str], float]:
    deadline = time.monotonic() + timeout
    while True:
        gauges = backlog_gauges(metrics_url)
        if gauges and not any(gauges.values()):
            return gauges
        assert time.monotonic() < deadline, f"the backlog did not come back to zero: {gauges}"
        time.sleep(0.2)


def test_backlog_gauges_rise_under_load_and_fall_back_to_zero(triton_server, samples):
    """Six jobs at once on talking_head's four workers (two wait), one of them rejected and one cancelled by its
    client: the gauges show the queue and the running segments while they run, and all of them are zero after."""
    url = triton_server.metrics_url
    every_gauge = {(name, model) for name in GAUGES for model in BACKLOG_MODELS}
    assert set(_wait_idle(url)) == every_gauge  # earlier tests may leave a cancelled job finishing its segment
    photo, speech = (samples / "astronaut.png").read_bytes(), (samples / "speech.wav").read_bytes()
    outcomes: dict[str, str] = {}

    def job(name: str) -> None:
        image = (samples / "no_face.png").read_bytes() if name == "rejected" else photo
        with TalkingHeadClient(Endpoint(triton_server.grpc_url, "grpc")) as client:
            try:
                for _chunk in client.generate(image, speech, parameters={**SMALL, "seed": len(outcomes)}):
                    if name == "cancelled":
                        outcomes[name] = "cancelled"
                        return  # leaving the stream cancels the job on the server
                outcomes[name] = "done"
            except RequestRejected as exc:
                outcomes[name] = f"rejected: {exc.code}"

    names = ["done_1", "done_2", "done_3", "done_4", "rejected", "cancelled"]
    threads = [threading.Thread(target=job, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    peak: dict[tuple[str, str], float] = {}
    while any(thread.is_alive() for thread in threads):
        for key, value in backlog_gauges(url).items():
            peak[key] = max(peak.get(key, 0.0), value)
        time.sleep(0.1)
    assert outcomes == {**{f"done_{i}": "done" for i in range(1, 5)}, "rejected": "rejected: no_face",
                        "cancelled": "cancelled"}
    assert peak[QUEUED_JOBS, "talking_head"] >= 1  # six jobs, four workers
    assert peak[OLDEST_QUEUED_AGE, "talking_head"] > 0
    assert peak[QUEUED_SEGMENTS, "talking_head"] >= 2
    assert peak[RUNNING_SEGMENTS, "talking_head"] >= 2
    assert peak[RUNNING_SEGMENTS, "video_generator"] >= 1
    # Back to zero once the last job ended (the cancelled one stops at its next chunk).
    assert set(_wait_idle(url, timeout=60.0)) == every_gauge



def _twice(speech_wav: bytes) -> bytes:
    """The sample speech played twice (12 s): a job of two segments."""
    import io
    import wave

    with wave.open(io.BytesIO(speech_wav)) as source:
        params, samples = source.getparams(), source.readframes(source.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setparams(params)
        target.writeframes(samples + samples)
    return out.getvalue()


@pytest.fixture(scope="module")
def overlapping_server(tmp_path_factory) -> Iterator[ServerOptions]:
    """A private server whose talking_head overlaps segments (off in the checked-in configs)."""
    root = tmp_path_factory.mktemp("overlap-segments")

    def edit(model: str, config: str) -> str:
        return set_parameter(config, "overlap_segments", "true") if model == "talking_head" else config

    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            repositories=copy_repositories(root, edit), weights=tmp_path_factory.mktemp("no-weights"))
    with TritonServer(options, log_path=root / "tritonserver.log"):
        yield options


def test_one_job_generates_its_next_segment_while_judging_this_one(overlapping_server, samples):
    """talking_head's overlap_segments through the server: segment 1 is generated (a BLS stream from the job's
    generation thread) while segment 0 is judged, so one job alone shows two running segments; it streams both
    segments in order and the gauges come back to zero."""
    triton_server = overlapping_server
    url = triton_server.metrics_url
    _wait_idle(url)
    photo, speech = (samples / "astronaut.png").read_bytes(), _twice((samples / "speech.wav").read_bytes())
    chunks, done = [], threading.Event()

    def job() -> None:
        try:
            with TalkingHeadClient(Endpoint(triton_server.grpc_url, "grpc")) as client:
                chunks.extend(client.generate(photo, speech, parameters={**SMALL, "max_duration_s": 12, "seed": 4}))
        finally:
            done.set()

    worker = threading.Thread(target=job)
    worker.start()
    peak = 0.0
    while not done.is_set():
        peak = max(peak, backlog_gauges(url).get((RUNNING_SEGMENTS, "talking_head"), 0.0))
        time.sleep(0.05)
    worker.join()
    *video, last = chunks
    assert last.qa_report is not None and [s["segment"] for s in last.qa_report["segments"]] == [0, 1]
    assert [c.start_frame for c in video] == list(range(0, video[-1].total_frames, 5))
    assert [c.info["segment"] for c in video if "qa" in c.info] == [0, 1]
    assert peak == 2  # segment 1 generating (speculatively) while segment 0 is judged, one job alone
    assert set(_wait_idle(url, timeout=60.0)) == {(name, model) for name in GAUGES for model in BACKLOG_MODELS}
