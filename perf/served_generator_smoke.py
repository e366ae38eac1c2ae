"""Serve video_generator from a real tritonserver on the GPU (instance kind GPU) and stream a Wan2.2-S2V job.

Tiny random weights in the official release layout (speed and quality are not the point: this shows that
the path tested on CPU - checkpoint files -> engine on CUDA -> decoupled Triton stream - runs on a GPU).
Writes JSON with per-chunk timings and where the model ran.

    python perf/served_generator_smoke.py --out perf/results/served_generator_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
from PIL import Image
from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.repository import copy_repositories, set_instance_kind
from client.server import ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient
from python_backends import spec


def generator_repository(target: Path, kind: str) -> tuple[Path, ...]:
    """A repository of video_generator alone (its checked-in config.pbtxt), its instance on `kind`."""
    return copy_repositories(target, lambda _model, config: set_instance_kind(config, kind),
                             models=(spec.VIDEO_GENERATOR.name,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("perf/results/served_generator_gpu.json"))
    parser.add_argument("--kind", choices=("KIND_GPU", "KIND_CPU"), default="KIND_GPU")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="served-smoke-"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny Wan fixtures
    from wan_fixtures.tiny_release import make_tiny_s2v_release

    make_tiny_s2v_release(work / "weights" / "video_generator" / "Wan2.2-S2V-14B")
    repositories = generator_repository(work / "repo", args.kind)

    image = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))
    with wave.open(str(SAMPLE_AUDIO)) as handle:
        speech = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32) / 32768
    params = {"engine": "s2v-14B", "steps": 4, "width": 256, "height": 256, "fps": 16, "max_duration_s": 4, "seed": 3}
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            repositories=repositories, weights=work / "weights")
    started = time.perf_counter()
    with TritonServer(options) as server, TalkingHeadClient(Endpoint(options.grpc_url)) as client:
        ready_s = time.perf_counter() - started
        runs = []
        for attempt in range(2):  # the first run includes loading the engine onto the device
            t0 = time.perf_counter()
            chunks = list(client.stream(spec.VIDEO_GENERATOR, {spec.IMAGE: image, spec.WAVEFORM: speech}, params))
            frames = np.concatenate([c.frames for c in chunks])
            runs.append({"attempt": attempt, "wall_s": round(time.perf_counter() - t0, 3), "chunks": len(chunks),
                         "frames": list(frames.shape), "first_chunk_info": chunks[0].info,
                         "checksum": int(frames.astype(np.int64).sum())})
            print(json.dumps(runs[-1]), file=sys.stderr)
        log = server.log_tail(400)
    device_lines = [line[-200:] for line in log.splitlines() if "video_generator" in line and "device" in line]
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        torch_version = torch.__version__
    except ImportError:
        gpu, torch_version = None, None
    document = {
        "benchmark": "video_generator served by tritonserver, tiny Wan2.2-S2V release, decoupled stream",
        "command": "python perf/served_generator_smoke.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "instance_kind": args.kind, "gpu": gpu, "torch": torch_version, "python": platform.python_version(),
        "server_ready_s": round(ready_s, 2), "parameters": params, "runs": runs,
        "same_output_both_runs": runs[0]["checksum"] == runs[1]["checksum"],
        "server_log_device_lines": device_lines[-5:],
    }
    write_json(args.out, document)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
