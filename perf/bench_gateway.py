"""Gateway figures on this machine, written as JSON: submit latency, end-to-end time, jobs per minute, cache hits.

A real tritonserver (started here, CPU defaults, no weights; or --triton-url) and a real uvicorn gateway process
(SQLite, local storage, C2PA signing with the development credential) on loopback. Jobs use the bundled photo and
6 s speech at the given size / fps, each with its own seed so none is a cache hit, then one repeat that is.

    python perf/bench_gateway.py --jobs 8 --out perf/results/gateway_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.sdk import GatewayClient
from client.server import ServerOptions, TritonServer, free_port

CLI = [sys.executable, "-m", "client.cli"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_gateway(config: Path, port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(CLI + ["gateway", "--config", str(config), "--port", str(port)],
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"gateway did not start: {log.read_text()[-2000:]}")


def run(args: argparse.Namespace, triton_url: str, weights: Path, folder: Path) -> dict:
    config = folder / "gateway.toml"
    config.write_text(f'data_dir = "{folder / "data"}"\ntriton_url = "{triton_url}"\nworkers = {args.workers}\n'
                      f'poll_s = 0.1\n[tenant_defaults]\nconcurrent_jobs = {args.workers}\nrate_per_s = 100\n'
                      f'burst = 200\n[caches]\nweights_root = "{weights}"\n')
    tenant = json.loads(subprocess.run(CLI + ["gateway", "add-tenant", "bench", "--config", str(config), "--json"],
                                       check=True, capture_output=True, text=True).stdout)
    port = free_port()
    gateway = start_gateway(config, port, folder / "gateway.log")
    photo, audio = SAMPLE_PHOTO.read_bytes(), SAMPLE_AUDIO.read_bytes()
    params = {"width": args.size, "height": args.size, "fps": args.fps}
    try:
        with GatewayClient(f"http://127.0.0.1:{port}", tenant["api_key"], timeout_s=120) as client:
            warm = client.submit(photo, audio, parameters={**params, "seed": 10_000})
            client.wait(warm["id"], timeout_s=600, poll_s=0.2)

            submit_s, jobs = [], []
            started = time.perf_counter()
            for seed in range(args.jobs):
                mark = time.perf_counter()
                jobs.append(client.submit(photo, audio, parameters={**params, "seed": seed}))
                submit_s.append(time.perf_counter() - mark)

            def wait(job: dict) -> tuple[dict, float]:
                with GatewayClient(f"http://127.0.0.1:{port}", tenant["api_key"]) as own:
                    done = own.wait(job["id"], timeout_s=1800, poll_s=0.2)
                return done, time.perf_counter() - started

            with ThreadPoolExecutor(len(jobs)) as pool:
                finished = list(pool.map(wait, jobs))
            wall = max(t for _, t in finished)
            mark = time.perf_counter()
            hit = client.wait(client.submit(photo, audio, parameters={**params, "seed": 0})["id"], poll_s=0.05)
            hit_s = time.perf_counter() - mark
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=120)
    return {
        "jobs": args.jobs, "workers": args.workers, "parameters": params,
        "frames_per_job": finished[0][0]["output"]["frames"],
        "upload_bytes": len(photo) + len(audio),
        "submit_latency_ms": {"p50": round(1000 * statistics.median(submit_s), 1),
                              "p95": round(1000 * percentile(submit_s, 0.95), 1),
                              "max": round(1000 * max(submit_s), 1)},
        "wall_s": round(wall, 2),
        "jobs_per_min": round(60 * args.jobs / wall, 2),
        "end_to_end_s": {"p50": round(statistics.median(t for _, t in finished), 2), "max": round(wall, 2)},
        "all_succeeded": all(done["status"] == "succeeded" for done, _ in finished),
        "attempts": sorted({done["attempts"] for done, _ in finished}),
        "cache_hit": {"status": hit["output"]["cache"], "submit_to_succeeded_s": round(hit_s, 3)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--triton-url", default=None, help="gRPC host:port of a running tritonserver")
    parser.add_argument("--weights", type=Path, default=None, help="its --weights folder (for the cache key)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        folder = Path(tmp)
        if args.triton_url:
            result = run(args, args.triton_url, args.weights or folder, folder)
        else:
            weights = folder / "weights"
            weights.mkdir()
            options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                    weights=weights)
            with TritonServer(options, log_path=folder / "tritonserver.log"):
                result = run(args, options.grpc_url, weights, folder)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                         "loadavg_before": [round(x, 2) for x in load_before],
                         "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
