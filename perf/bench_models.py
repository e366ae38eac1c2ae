"""Latency and throughput of each model through a real tritonserver, written as JSON.

Starts a private tritonserver over the project's repositories (or uses --url), sends the bundled sample
through each model at several client concurrencies over gRPC, and records per-request latency
percentiles, throughput and Triton's own batching statistics (inferences per execution).

    python perf/bench_models.py --out perf/results/models_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.server import ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient
from python_backends import spec


def _inputs(endpoint: Endpoint) -> dict[str, dict[str, np.ndarray]]:
    image = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))[None]
    with TalkingHeadClient(endpoint) as client:
        detected = client.infer(spec.FACE_DETECTOR, {spec.IMAGE: image})
    box = detected[spec.FACE_BOXES][:, 0].astype(np.float32)
    keypoints = detected[spec.FACE_KEYPOINTS][:, 0].astype(np.float32)
    audio = np.array([[SAMPLE_AUDIO.read_bytes()]], dtype=np.object_)
    return {
        spec.FACE_DETECTOR.name: {spec.IMAGE: image},
        spec.FACE_LANDMARKS.name: {spec.IMAGE: image, spec.FACE_BOX: box},
        spec.FACE_EMBEDDER.name: {spec.IMAGE: image, spec.FACE_BOX: box, spec.FACE_KEYPOINTS: keypoints},
        spec.AUDIO_FEATURES.name: {spec.AUDIO_BYTES: audio},
        spec.PREPROCESS.name: {
            spec.PHOTO_BYTES: np.array([SAMPLE_PHOTO.read_bytes()], dtype=np.object_),
            spec.AUDIO_BYTES: np.array([SAMPLE_AUDIO.read_bytes()], dtype=np.object_),
        },
    }


def _stats(client: TalkingHeadClient, model: str) -> tuple[int, int]:
    stats = client.model_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def measure(
    endpoint: Endpoint, model: spec.ModelSpec, inputs: dict[str, np.ndarray], concurrency: int, requests: int
) -> dict:
    def one(_: int) -> float:
        started = time.perf_counter()
        with TalkingHeadClient(endpoint) as worker:
            worker.infer(model, inputs)
        return time.perf_counter() - started

    with TalkingHeadClient(endpoint) as client:
        one(0)  # warm-up: first calls pay lazy initialisation
        before = _stats(client, model.name)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = sorted(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
        after = _stats(client, model.name)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    return {
        "concurrency": concurrency,
        "requests": requests,
        "throughput_per_s": round(requests / wall, 3),
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 1),
            "p95": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
            "max": round(1000 * latencies[-1], 1),
        },
        "inferences_per_execution": round(inferences / executions, 2) if executions else None,
    }



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("perf/results/models_cpu.json"))
    parser.add_argument("--url", default=None, help="gRPC host:port of a running server")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.url:
            endpoint = Endpoint(args.url, "grpc")
        else:
            options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
            stack.enter_context(TritonServer(options))
            endpoint = Endpoint(options.grpc_url, "grpc")
        inputs = _inputs(endpoint)
        results = []
        for model_name, model_inputs in inputs.items():
            model = spec.ALL_MODELS[model_name]
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                row = {"model": model_name, **measure(endpoint, model, model_inputs, concurrency, args.requests)}
                print(json.dumps(row), file=sys.stderr)
                results.append(row)
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    document = {
        "benchmark": "models through tritonserver (gRPC, bundled sample)",
        "command": "python perf/bench_models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                     "cpus": os.cpu_count(), "torch_threads": threads},
        "results": results,
    }
    write_json(args.out, document)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
