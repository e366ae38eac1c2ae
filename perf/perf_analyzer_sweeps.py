"""perf_analyzer sweeps over the served models, written as JSON (and the input-data files it needs).

Starts tritonserver (the same launcher as `talkinghead serve`) on free ports, writes perf_analyzer
`--input-data` JSON files from the bundled samples (perf/inputs/<model>.json: the astronaut photo decoded
to the UINT8 [H, W, 3] tensor, the face box and keypoints the detector finds in it, the speech file's
bytes), checks each file through the Python client, then runs the real perf_analyzer binary (from an
older tritonclient wheel, installed by `make perf-tools` into .venv-perf/) over a grid:

  * every model, gRPC, tensors on the wire, dynamic batching on: concurrency 1..4
  * every model over HTTP: concurrency 1 and 4
  * the image models with system shared memory for their tensors, gRPC and HTTP: concurrency 1 and 4
  * the batched models with dynamic batching off (a copy of the repository whose configs lack
    `dynamic_batching`, served by a second server that runs beside the first): concurrency 1..4

One perf_analyzer call per point (time windows per model, a loose stability criterion: see WINDOW_MS and
STABILITY_PERCENT; its count-based mode is not used because it measures windows in whole seconds), and
Triton's own statistics read before and after each call, so every row also says how many requests each
execution batched.

    python perf/perf_analyzer_sweeps.py --out perf/results/perf_analyzer_cpu.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from PIL import Image
from random_weights import describe, models_of, write_random_weights  # noqa: E402  (perf/ is on sys.path)
from results_file import hardware, write_json  # noqa: E402
from tritonclient.grpc import model_config_pb2

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.repository import copy_repositories, gpu_present, profile_on_cpu
from client.server import PROJECT_ROOT, ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient
from python_backends import spec

PERF_VENV = PROJECT_ROOT / ".venv-perf"
INPUTS_DIR = PROJECT_ROOT / "perf" / "inputs"
MODELS = ("face_detector", "face_landmarks", "face_embedder", "audio_features", "preprocess")
IMAGE_MODELS = ("face_detector", "face_landmarks", "face_embedder")
BATCHED_MODELS = ("face_detector", "face_landmarks", "face_embedder", "audio_features")
# perf_analyzer's time windows, per model: each holds roughly ten or more requests on the 2-core machine
# (see perf/RESULTS.md for the per-request cost), so a window's throughput is not a count of two or three.
WINDOW_MS = {"face_detector": 2000, "face_landmarks": 1000, "face_embedder": 2000, "audio_features": 2000,
             "preprocess": 4000}
# Stability: perf_analyzer reports a point once three consecutive windows agree within this many percent
# (max/min of throughput and of average latency). Its default, 10, rarely converges on CPUs that other
# work shares; a point that fails at the first value is measured again at the second.
STABILITY_PERCENT = (50, 100)
# The GPU profile (--profile gpu): requests of this many frames (its configs' max_batch_size is 160, the QA
# gates send up to that), windows sized for an H200's host, and the pipeline's job: the bundled photo with the
# first STREAM_AUDIO_S of the speech, streamed back over gRPC as `talkinghead generate` receives it.
GPU_BATCHES = (1, 4, 16, 64)
GPU_WINDOW_MS = {"face_detector": 1000, "face_landmarks": 1000, "face_embedder": 1000, "talking_head": 15000}
STREAM_AUDIO_S = 2.0
MAX_TRIALS = 6
# Largest output of the image models in shared memory (model_info JSON is the biggest, well under 64 KiB).
OUTPUT_SHM_BYTES = 65536
NUMPY_TYPES = {"UINT8": np.uint8, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64}


class PerfAnalyzerMissing(RuntimeError):
    """The perf_analyzer binary or one of its shared libraries is not installed; the message says how."""


@dataclass(frozen=True)
class Case:
    model: str
    protocol: str  # grpc | http
    memory: str  # wire | system (perf_analyzer --shared-memory)
    batching: bool  # dynamic batching on (the checked-in configs) or off (a copy without it)
    concurrency: int
    batch: int = 1  # items per request (perf_analyzer -b)
    streaming: bool = False  # a decoupled model over a gRPC stream (perf_analyzer --streaming)


def plan(concurrency: tuple[int, ...] = (1, 2, 3, 4), ends: tuple[int, ...] = (1, 4)) -> list[Case]:
    cases = [Case(m, "grpc", "wire", True, c) for m in MODELS for c in concurrency]
    cases += [Case(m, "http", "wire", True, c) for m in MODELS for c in ends]
    cases += [Case(m, p, "system", True, c) for m in IMAGE_MODELS for p in ("grpc", "http") for c in ends]
    cases += [Case(m, "grpc", "wire", False, c) for m in BATCHED_MODELS for c in concurrency]
    return cases


def plan_gpu(concurrency: tuple[int, ...] = (1, 4), batches: tuple[int, ...] = GPU_BATCHES,
             streams: tuple[int, ...] = (1, 2)) -> list[Case]:
    """The GPU profile: the face networks over batch sizes, and the whole pipeline streamed."""
    cases = [Case(m, "grpc", "wire", True, c, b) for m in IMAGE_MODELS for b in batches for c in concurrency]
    cases += [Case(spec.TALKING_HEAD.name, "grpc", "wire", True, c, 1, True) for c in streams]
    return cases


# ---------------------------------------------------------------------------------------------- tools


def perf_analyzer_command(venv: Path = PERF_VENV) -> tuple[Path, dict[str, str]]:
    """The binary and an environment whose LD_LIBRARY_PATH finds libb64 and libcudart."""
    binary = venv / "bin" / "perf_analyzer"
    if not binary.exists():
        raise PerfAnalyzerMissing(f"no {binary}: run `make perf-tools` (tritonclient 2.51.0 wheel in {venv})")
    libs = [venv / "lib" / "b64"]
    libs += sorted((venv / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"))
    missing = [name for name, pattern in (("libb64.so.0d", "libb64.so.0d"), ("libcudart.so.12", "libcudart.so.12"))
               if not any((d / pattern).exists() for d in libs)]
    if missing:
        raise PerfAnalyzerMissing(f"perf_analyzer needs {', '.join(missing)} under {venv}/lib: run `make perf-tools`")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(d) for d in libs] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return binary, env


# ---------------------------------------------------------------------------------------------- inputs


def _b64_raw(array: np.ndarray) -> dict:
    """A numeric tensor as perf_analyzer reads it: raw row-major bytes, base64, with its shape."""
    return {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(), "shape": list(array.shape)}


def _b64_bytes(*items: bytes) -> dict:
    """A BYTES tensor of shape [len(items)]: perf_analyzer sends b64 content as the already serialised
    Triton string tensor, i.e. each element as a 4-byte little-endian length followed by its bytes."""
    blob = b"".join(struct.pack("<I", len(item)) + item for item in items)
    return {"b64": base64.b64encode(blob).decode(), "shape": [len(items)]}


def _content(array: np.ndarray) -> dict:
    return {"content": np.asarray(array).ravel().tolist(), "shape": list(np.asarray(array).shape)}


def sample_tensors(endpoint: Endpoint) -> dict[str, dict[str, np.ndarray]]:
    """Per model, the batch-1 tensors (without the batch axis) made from the bundled samples."""
    image = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))
    with TalkingHeadClient(endpoint) as client:
        detected = client.infer(spec.FACE_DETECTOR, {spec.IMAGE: image[None]})
    if int(detected[spec.FACE_COUNT][0, 0]) < 1:
        raise RuntimeError(f"the detector found no face in {SAMPLE_PHOTO}")
    box = detected[spec.FACE_BOXES][0, 0].astype(np.float32)
    keypoints = detected[spec.FACE_KEYPOINTS][0, 0].astype(np.float32)
    photo, audio = SAMPLE_PHOTO.read_bytes(), SAMPLE_AUDIO.read_bytes()
    return {
        "face_detector": {spec.IMAGE: image},
        "face_landmarks": {spec.IMAGE: image, spec.FACE_BOX: box},
        "face_embedder": {spec.IMAGE: image, spec.FACE_BOX: box, spec.FACE_KEYPOINTS: keypoints},
        "audio_features": {spec.AUDIO_BYTES: np.array([audio], dtype=np.object_)},
        "preprocess": {spec.PHOTO_BYTES: np.array([photo], dtype=np.object_),
                       spec.AUDIO_BYTES: np.array([audio], dtype=np.object_)},
        spec.TALKING_HEAD.name: {spec.PHOTO_BYTES: np.array([photo], dtype=np.object_),
                                 spec.AUDIO_BYTES: np.array([speech_opening(audio)], dtype=np.object_)},
    }


def speech_opening(wav: bytes, seconds: float = STREAM_AUDIO_S) -> bytes:
    """The first `seconds` of a WAV file, as a WAV file (a short job keeps perf_analyzer's windows short)."""
    with wave.open(io.BytesIO(wav)) as source:
        params = source.getparams()
        frames = source.readframes(int(round(seconds * source.getframerate())))
    out = io.BytesIO()
    with wave.open(out, "wb") as sink:
        sink.setparams(params)
        sink.writeframes(frames)
    return out.getvalue()


def input_data_document(tensors: dict[str, np.ndarray]) -> dict:
    step = {}
    for name, array in tensors.items():
        if array.dtype == np.object_:
            step[name] = _b64_bytes(*(bytes(item) for item in array.ravel()))
        elif array.dtype == np.uint8:
            step[name] = _b64_raw(array)
        else:
            step[name] = _content(array)
    return {"data": [step]}


def check_inputs(endpoint: Endpoint, model: str, tensors: dict[str, np.ndarray]) -> str | None:
    """One request with the same tensors through the Python client: the file's data is servable, and the
    model's lazy initialisation is paid before anything is timed. The model's `model_info` (which network
    served it), where it has one."""
    model_spec = spec.ALL_MODELS[model]
    batched = {k: (v[None] if model_spec.max_batch_size > 0 else v) for k, v in tensors.items()}
    with TalkingHeadClient(endpoint) as client:
        if model_spec.decoupled:
            chunks = list(client.stream(model_spec, batched))
            if not chunks:
                raise RuntimeError(f"{model} streamed no response for the sample inputs")
            return None
        info = client.infer(model_spec, batched).get("model_info")
    if info is None:
        return None
    item = np.asarray(info).reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else str(item)


def write_inputs(endpoint: Endpoint, directory: Path = INPUTS_DIR, models: tuple[str, ...] = MODELS,
                 model_info: dict[str, str] | None = None) -> dict[str, Path]:
    """perf_analyzer's input files, each checked by one request; `model_info` gets what each model reports."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for model, tensors in sample_tensors(endpoint).items():
        if model not in models:
            continue
        info = check_inputs(endpoint, model, tensors)
        if info is not None and model_info is not None:
            model_info[model] = info
        path = directory / f"{model}.json"
        path.write_text(json.dumps(input_data_document(tensors)))
        paths[model] = path
    return paths


# ---------------------------------------------------------------------------------------------- servers


def _without_batching(_model: str, text: str) -> str:
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    if not config.HasField("dynamic_batching"):
        return text
    config.ClearField("dynamic_batching")
    return text_format.MessageToString(config)


def repository_without_batching(target: Path) -> tuple[Path, Path]:
    """Copies of model_repository/ and ensembles/ whose configs lack `dynamic_batching` (Triton's default
    scheduler then runs every request on its own). Generated, so it cannot drift from the real configs."""
    models, ensembles = copy_repositories(target, _without_batching, variants=False)
    return models, ensembles


@contextlib.contextmanager
def server(repositories: tuple[Path, ...] | None = None, model_config_name: str | None = None,
           weights: Path | None = None) -> Iterator[ServerOptions]:
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            model_config_name=model_config_name, weights=weights)
    if repositories is not None:
        options = replace(options, repositories=repositories)
    with TritonServer(options):
        yield options


# ---------------------------------------------------------------------------------------------- runs


def parse_csv(text: str) -> dict:
    """perf_analyzer's `-f` report (times in microseconds) -> one row in milliseconds."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1:
        raise ValueError(f"expected one measurement row, got {len(rows)}:\n{text}")
    row = rows[0]

    def ms(column: str) -> float:
        return round(float(row[column]) / 1000.0, 2)

    return {
        "throughput_per_s": round(float(row["Inferences/Second"]), 2),
        "latency_ms": {"p50": ms("p50 latency"), "p90": ms("p90 latency"),
                       "p95": ms("p95 latency"), "p99": ms("p99 latency")},
        "breakdown_ms": {
            "client_send": ms("Client Send"),
            "network_server_send_recv": ms("Network+Server Send/Recv"),
            "server_queue": ms("Server Queue"),
            "server_compute_input": ms("Server Compute Input"),
            "server_compute_infer": ms("Server Compute Infer"),
            "server_compute_output": ms("Server Compute Output"),
            "client_recv": ms("Client Recv"),
        },
    }


def case_command(case: Case, options: ServerOptions, input_file: Path, csv_file: Path, binary: Path,
                 stability: int = STABILITY_PERCENT[0], windows: dict[str, int] = WINDOW_MS) -> list[str]:
    url = options.grpc_url if case.protocol == "grpc" else options.http_url
    argv = [
        str(binary), "-m", case.model, "-u", url, "-i", case.protocol,
        "--input-data", str(input_file),
        "--concurrency-range", f"{case.concurrency}:{case.concurrency}",
        "--measurement-mode", "time_windows", "-p", str(windows[case.model]),
        "-s", str(stability), "-r", str(MAX_TRIALS),
        "--shared-memory", "none" if case.memory == "wire" else case.memory,
        "-f", str(csv_file),
    ]
    if case.batch > 1:
        argv += ["-b", str(case.batch)]
    if case.streaming:
        argv += ["--streaming"]
    if case.memory != "wire":
        argv += ["--output-shared-memory-size", str(OUTPUT_SHM_BYTES)]
    return argv


def readable(argv: list[str]) -> str:
    """The command as a person types it: repository-relative paths, placeholders for the ports."""
    text = shlex.join(argv)
    return text.replace(str(PROJECT_ROOT) + "/", "")


def run_case(case: Case, options: ServerOptions, input_file: Path, binary: Path, env: dict[str, str],
             timeout_s: float, windows: dict[str, int] = WINDOW_MS) -> dict:
    with tempfile.TemporaryDirectory() as scratch, TalkingHeadClient(Endpoint(options.grpc_url, "grpc")) as client:
        csv_file = Path(scratch) / "report.csv"
        before = client.batching_counts(case.model)
        started = time.monotonic()
        for stability in STABILITY_PERCENT:
            argv = case_command(case, options, input_file, csv_file, binary, stability, windows)
            try:
                done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess(argv, -1, "", f"no result within {timeout_s:.0f} s")
            if done.returncode == 0 and csv_file.exists():
                break
        wall = time.monotonic() - started
        after = client.batching_counts(case.model)
        row = {**asdict(case), "command": readable(argv), "stability_percent": stability, "wall_s": round(wall, 1)}
        if done.returncode != 0 or not csv_file.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
            return {**row, "error": "\n".join(tail) or f"exit code {done.returncode}"}
        inferences, executions = after[0] - before[0], after[1] - before[1]
        return {**row, **parse_csv(csv_file.read_text()),
                "inferences_per_execution": round(inferences / executions, 2) if executions else None}


# ---------------------------------------------------------------------------------------------- main


def _versions(binary: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True)
    site = Path(sysconfig.get_paths()["purelib"])
    server = next(iter(sorted(site.glob("nvidia_pytriton-*.dist-info"))), None)
    return {"perf_analyzer": (done.stdout + done.stderr).strip(),
            "nvidia_pytriton": server.name if server else "system tritonserver"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("perf/results/perf_analyzer_cpu.json"))
    parser.add_argument("--venv", type=Path, default=PERF_VENV, help="where `make perf-tools` put perf_analyzer")
    parser.add_argument("--models", default=None, help="comma-separated subset of the profile's models")
    parser.add_argument("--profile", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: the checked-in configs' grid; gpu: --model-config-name gpu, the face networks "
                             "over batch sizes and talking_head streamed")
    parser.add_argument("--inputs-only", action="store_true", help="write perf/inputs/*.json and stop")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per perf_analyzer call")
    parser.add_argument("--markdown", type=Path, default=None, help="print the tables of a results file and stop")
    parser.add_argument("--random-weights", default="", help="comma-separated models served from random weights in "
                        "their official layouts (perf/random_weights.py), e.g. face_embedder for ArcFace: speed "
                        "only, their outputs are noise")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    gpu = args.profile == "gpu"
    profile_cases, windows = (plan_gpu(), GPU_WINDOW_MS) if gpu else (plan(), WINDOW_MS)
    models = tuple(dict.fromkeys(c.model for c in profile_cases))
    wanted = set(args.models.split(",")) if args.models else set(models)
    unknown = wanted - set(models)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(models)}")
    try:
        random_models = models_of(args.random_weights)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        binary, env = (None, None) if args.inputs_only else perf_analyzer_command(args.venv)
    except PerfAnalyzerMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cases = [c for c in profile_cases if c.model in wanted]
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers (their own sessions) on SIGTERM too
    document = {
        "benchmark": "perf_analyzer over the served models (bundled sample inputs)",
        "command": "python perf/perf_analyzer_sweeps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": hardware(),
        "notes": "perf_analyzer and tritonserver share the machine's CPUs; latencies are per request at the "
                 "client, breakdown columns are perf_analyzer's (times in ms)",
        "profile": args.profile,
        "results": [],
    }
    if gpu:
        document["hardware"]["gpu"] = gpu_name()
        document["notes"] += (f"; GPU profile (--model-config-name gpu); throughput counts items (requests x -b); "
                              f"talking_head: the bundled photo + the first {STREAM_AUDIO_S:g} s of the speech, "
                              "streamed over gRPC, with the engine the server resolves (no Wan weights: preview)")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        repositories = None
        if gpu and not gpu_present():  # a dry run of the GPU sweep: the profile's instances moved to the CPU
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="talkinghead-gpu-profile-")))
            repositories = profile_on_cpu(scratch, "gpu")
            document["notes"] += "; NO GPU: the GPU profile's KIND_GPU instances were moved to the CPU"
        weights = None
        if random_models:
            weights = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="talkinghead-random-weights-")))
            document["random_weights"] = describe(write_random_weights(weights, random_models))
        servers = {True: stack.enter_context(server(repositories, "gpu" if gpu else None, weights))}
        document["model_info"] = {}
        inputs = write_inputs(Endpoint(servers[True].grpc_url, "grpc"), models=tuple(wanted),
                              model_info=document["model_info"])
        print(f"wrote {len(inputs)} input files to {INPUTS_DIR}", file=sys.stderr)
        if args.inputs_only:
            return 0
        document["versions"] = _versions(binary, env)
        if any(not c.batching for c in cases):
            # Both servers stay up (the idle one costs no CPU), so that every comparison below is measured
            # back to back, under the same background load of this shared machine.
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="talkinghead-nobatch-")))
            servers[False] = stack.enter_context(server(repository_without_batching(scratch), weights=weights))
            for model in {c.model for c in cases if not c.batching}:
                check_inputs(Endpoint(servers[False].grpc_url, "grpc"), model, sample_tensors_from_file(inputs[model]))
        # Grouped by (model, concurrency): all variants of one point run one after the other.
        for case in sorted(cases, key=lambda c: (models.index(c.model), c.batch, c.concurrency)):
            row = run_case(case, servers[case.batching], inputs[case.model], binary, env, args.timeout_s, windows)
            print(json.dumps({k: v for k, v in row.items() if k != "command"}), file=sys.stderr)
            document["results"].append(row)
    document["sweep_wall_s"] = round(time.monotonic() - started, 1)
    document["hardware"]["load_average_at_end"] = list(os.getloadavg())
    write_json(args.out, document)
    print(f"wrote {args.out}")
    return 0


def gpu_name() -> str | None:
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    return done.stdout.strip() if done and done.returncode == 0 else None


def _cell(row: dict | None, batched: bool = False) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "unstable"
    text = f"{row['latency_ms']['p50']:.0f} / {row['latency_ms']['p95']:.0f}, {row['throughput_per_s']:.1f}"
    if batched and row.get("inferences_per_execution"):
        text += f" (x{row['inferences_per_execution']:.1f})"
    return text


def markdown(document: dict) -> str:
    """The tables of perf/RESULTS.md: p50 / p95 latency in ms, then requests per second; (xN) = requests
    Triton merged per execution."""
    if document.get("profile") == "gpu":
        return markdown_gpu(document)
    rows = {(r["model"], r["protocol"], r["memory"], r["batching"], r["concurrency"]): r for r in document["results"]}
    levels = sorted({r["concurrency"] for r in document["results"]})
    lines = ["| model | " + " | ".join(f"concurrency {c}" for c in levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for model in MODELS:
        cells = [_cell(rows.get((model, "grpc", "wire", True, c)), batched=True) for c in levels]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "| model, concurrency | gRPC | HTTP | gRPC + system shm | HTTP + system shm |",
              "|---|---|---|---|---|"]
    for model in MODELS:
        for c in (1, 4):
            cells = [_cell(rows.get((model, p, m, True, c))) for m in ("wire", "system") for p in ("grpc", "http")]
            if any(cell != "-" for cell in cells):
                lines.append(f"| {model}, {c} | " + " | ".join(cells) + " |")
    lines += ["", "| model | " + " | ".join(f"{c}: on / off" for c in levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for model in BATCHED_MODELS:
        cells = [f"{_cell(rows.get((model, 'grpc', 'wire', True, c)), True)} / "
                 f"{_cell(rows.get((model, 'grpc', 'wire', False, c)), True)}" for c in levels]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_gpu(document: dict) -> str:
    """The GPU profile's table: per model, batch size and concurrency, p50 / p95 latency in ms and items per
    second; (xN) = requests Triton merged per execution."""
    results = document["results"]
    levels = sorted({r["concurrency"] for r in results})
    lines = ["| model, items per request | " + " | ".join(f"concurrency {c}" for c in levels) + " |",
             "|---" * (len(levels) + 1) + "|"]
    for model, batch, streaming in dict.fromkeys((r["model"], r.get("batch", 1), r.get("streaming", False))
                                                 for r in results):
        cells = [_cell(next((r for r in results if (r["model"], r.get("batch", 1), r["concurrency"])
                             == (model, batch, c)), None), batched=True) for c in levels]
        lines.append(f"| {model}, {batch}{' (streamed)' if streaming else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def sample_tensors_from_file(path: Path) -> dict[str, np.ndarray]:
    """Read a perf_analyzer input file back into the tensors it encodes (to warm a second server)."""
    step = json.loads(path.read_text())["data"][0]
    model = spec.ALL_MODELS[path.stem]
    tensors = {}
    for name, value in step.items():
        tensor = model.input(name)
        shape = tuple(value["shape"])
        if tensor.dtype == "BYTES":
            blob, items, offset = base64.b64decode(value["b64"]), [], 0
            while offset < len(blob):
                (length,) = struct.unpack_from("<I", blob, offset)
                items.append(blob[offset + 4:offset + 4 + length])
                offset += 4 + length
            tensors[name] = np.array(items, dtype=np.object_).reshape(shape)
        elif "b64" in value:
            raw = np.frombuffer(base64.b64decode(value["b64"]), dtype=NUMPY_TYPES[tensor.dtype])
            tensors[name] = raw.reshape(shape)
        else:
            tensors[name] = np.asarray(value["content"], dtype=NUMPY_TYPES[tensor.dtype]).reshape(shape)
    return tensors


if __name__ == "__main__":
    sys.exit(main())
