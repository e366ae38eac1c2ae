"""A bounded load run: locust users submit and poll jobs through a real gateway on loopback, in front of the
session's tritonserver; afterwards every accepted job is accounted for (completed, failed or lost: lost must be 0),
with the latency percentiles of the API and of whole jobs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gateway_harness import GatewayProcess, add_tenant, write_config

pytestmark = pytest.mark.integration

USERS, SPAWN_RATE, RUN_TIME_S = 4, 2, 45
DRAIN_TIMEOUT_S = 300
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _percentiles(histogram: dict[str, int], points=(50, 95, 99)) -> dict[str, float | None]:
    """Percentiles (ms) from locust's response-time histogram {rounded ms: count}."""
    values = sorted((float(ms), count) for ms, count in histogram.items())
    total = sum(count for _, count in values)
    out = {}
    for point in points:
        if not total:
            out[f"p{point}"] = None
            continue
        seen, rank = 0, point / 100 * total
        for ms, count in values:
            seen += count
            if seen >= rank:
                out[f"p{point}"] = ms
                break
    return out


def _seconds(start: str, end: str) -> float:
    parse = lambda text: dt.datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def test_gateway_holds_a_bounded_load_and_loses_nothing(triton_server, tmp_path_factory, ledger):
    folder = tmp_path_factory.mktemp("gateway-load")
    config = write_config(folder / "gateway.toml", folder / "data", triton_server.grpc_url, triton_server.weights)
    tenant = add_tenant(config, "load")
    gateway = GatewayProcess(config, folder / "gateway.log").start()
    jobs_file, stats_file = folder / "jobs.txt", folder / "locust.json"
    jobs_file.touch()
    try:
        locust = Path(sys.executable).with_name("locust")
        assert locust.exists(), "locust is part of the dev extra: pip install -e '.[dev]'"
        started = time.monotonic()
        run = subprocess.run(
            [str(locust), "-f", str(LOCUSTFILE), "--headless", "-u", str(USERS), "-r", str(SPAWN_RATE),
             "-t", f"{RUN_TIME_S}s", "--host", gateway.url, "--json-file", str(stats_file.with_suffix("")),
             "--only-summary", "--exit-code-on-error", "0"],
            env={**os.environ, "TALKINGHEAD_LOAD_API_KEY": tenant["api_key"], "TALKINGHEAD_LOAD_JOBS": str(jobs_file)},
            capture_output=True, text=True, timeout=RUN_TIME_S + 120)
        load_s = time.monotonic() - started
        assert run.returncode == 0, run.stderr[-2000:]
        written = stats_file if stats_file.exists() else stats_file.with_suffix("")
        stats = json.loads(written.read_text())
        lines = [line.split() for line in jobs_file.read_text().splitlines() if line.strip()]
        accepted = {job_id for job_id, status in lines if status == "202"}
        replays = sum(1 for _, status in lines if status == "200")
        # Drain: every accepted job must reach a final state.
        views: dict[str, dict] = {}
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {tenant['api_key']}"},
                          timeout=30) as client:
            pending = set(accepted)
            while pending and time.monotonic() < deadline:
                for job_id in sorted(pending):
                    response = client.get(f"/v1/videos/{job_id}")
                    if response.status_code == 429:  # the tenant's own rate limit: wait as told
                        time.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    view = response.json()
                    if view.get("status") in ("succeeded", "failed", "cancelled"):
                        views[job_id] = view
                        pending.discard(job_id)
                    time.sleep(0.15)  # under the tenant's 10 requests/s
                if pending:
                    time.sleep(1.0)
        drain_s = time.monotonic() - started - load_s
    finally:
        gateway.stop()
    states = {job_id: views[job_id]["status"] if job_id in views else "lost" for job_id in accepted}
    def job_percentiles(cached: bool) -> dict[str, float]:
        seconds = sorted(_seconds(v["created_at"], v["finished_at"]) for v in views.values()
                         if v.get("finished_at") and ((v.get("output") or {}).get("cache") == "hit") == cached)
        return {f"p{p}": round(seconds[min(len(seconds) - 1, int(p / 100 * len(seconds)))], 2)
                for p in (50, 95, 99)} if seconds else {}

    cache_hits = sum(1 for v in views.values() if (v.get("output") or {}).get("cache") == "hit")
    requests = {s["name"]: {"requests": s["num_requests"], "failures": s["num_failures"],
                            **_percentiles(s["response_times"])} for s in stats}
    refused_429 = sum(1 for _, status in lines if status == "429")
    summary = {
        "users": USERS, "run_time_s": RUN_TIME_S, "load_s": round(load_s, 1), "drain_s": round(drain_s, 1),
        "accepted": len(accepted), "idempotent_replays": replays, "refused_429": refused_429,
        "completed": sum(s == "succeeded" for s in states.values()),
        "failed": sum(s == "failed" for s in states.values()),
        "cancelled": sum(s == "cancelled" for s in states.values()),
        "lost": sum(s == "lost" for s in states.values()),
        "output_cache_hits": cache_hits,
        "generated_job_seconds": job_percentiles(cached=False),  # submit to succeeded, generation included
        "cached_job_seconds": job_percentiles(cached=True),  # answered from the output cache
        "requests": requests,
    }
    for job_id, state in states.items():
        ledger.record("gateway_load", f"job-{job_id}", "succeeded", state, 0.0, lost=state == "lost")
    ledger.record("gateway_load_summary", "locust", "no_job_lost", "no_job_lost" if summary["lost"] == 0 else "lost",
                  load_s + drain_s, **summary)
    assert accepted, f"no job was accepted: {run.stdout[-2000:]}"
    assert summary["lost"] == 0, states
    assert summary["failed"] == 0, {j: views[j].get("error") for j, s in states.items() if s == "failed"}
    assert all(r["failures"] == 0 for r in requests.values() if r["requests"]), requests
