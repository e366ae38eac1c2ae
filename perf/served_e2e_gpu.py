"""A 10 s clip through tritonserver on one GPU, from request to signed MP4, with every QA gate on.

The served path end to end: `talking_head` (BLS) validates and pre-processes, asks `video_generator` for each
segment over a BLS stream, judges it with the QA gates and streams it over gRPC to the client, which encodes,
discloses, signs (C2PA) and audits it (`latency_budget.run_job`, as `talkinghead generate` does). The generator
runs on the GPU with the speech engine at release size and random bf16 weights built in memory
(`benchmark_random_weights`: the speed is real, the video is noise), the fastest settings (FP8 rowwise linear
layers, per-block torch.compile, bf16 VAE; LiveAvatar's own 4-step sampler, or 4 Euler steps for S2V).

Because the video is noise, the QA gates fail it: re-rolls are switched off (`max_rerolls` 0) so one
generation per segment is measured, as a clip that passes would cost; every gate still runs. The other models
run where `--profile` puts them: `cpu` (their checked-in configs) or `gpu` (KIND_GPU for every model that has a
GPU path). A warm-up job (two clips, so both compiled graphs exist) runs first and is reported apart.

The python-backend stubs see only the interpreter's site-packages (their embedded interpreter ignores PYTHONPATH):
install what the models need there, nvidia-pytriton whole and numpy<2 included, not into a `pip install --target`
folder.

    python perf/served_e2e_gpu.py --out $OUT/served_e2e_h200.json --chart $OUT/served_e2e_h200.png
    python perf/served_e2e_gpu.py --engine preview --seconds 2 --warmup-seconds 1 --out /tmp/served.json  # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_args import frame_size  # noqa: E402
from latency_budget import run_job, stages, summarise_run  # noqa: E402
from random_weights import describe, models_of, write_random_weights  # noqa: E402
from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from client.encoding import THREAD_TYPES, EncodeOptions  # noqa: E402
from client.repository import copy_repositories, set_instance_kind, set_parameter  # noqa: E402
from client.server import ServerOptions, TritonServer, free_port  # noqa: E402


def served_repositories(work: Path, generator: dict[str, str], talking_head: dict[str, str],
                        profile: str | None, generator_on_gpu: bool) -> tuple[Path, ...]:
    """Copies of the checked-in repositories with the benchmark's parameters, set in the config each model is
    served with: `configs/<profile>.pbtxt` where the profile has one (Triton's --model-config-name), else
    config.pbtxt. Without a profile, `generator_on_gpu` moves video_generator alone to the GPU."""
    settings = {"video_generator": generator, "talking_head": talking_head}

    def edit(model: str, config: str) -> str:
        for key, value in settings.get(model, {}).items():
            config = set_parameter(config, key, value)
        if model == "video_generator" and generator_on_gpu and not profile:
            config = set_instance_kind(config, "KIND_GPU")
        return config

    return copy_repositories(work, edit, profile)


class GpuMemory:
    """Peak memory used on GPU 0 by every process (all models resident), polled with nvidia-smi."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.peak_mib, self.interval_s = 0.0, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _query(self, field: str) -> str | None:
        """GPU 0's `field` as nvidia-smi reports it (no units), or None without one."""
        if not self.available:
            return None
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
        return lines[0].strip() if lines else None

    def name(self) -> str | None:
        return self._query("name")

    def read(self) -> float | None:
        used = self._query("memory.used")
        return None if used is None else float(used)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self.read() or 0.0)

    def __enter__(self) -> GpuMemory:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def summarise(job: dict) -> dict:
    chunks = job["chunks"]
    return {
        "stages_s": stages(job), "time_to_first_chunk_s": round(job["first_chunk_s"], 3),
        "streamed_s": round(job["streamed_s"], 3), "end_to_end_s": round(job["total_s"], 3),
        "frames": job["delivery"]["encode"].get("frames"),
        "output_fps": job["delivery"]["encode"].get("fps"), "engine": chunks[0].get("engine"),
        "qa_verdict": job["qa"]["verdict"],
        # per segment, each gate's verdict beside the timings (which gate made a verdict `unavailable`)
        "qa_segments": [{"segment": s["segment"], "frames": s["frames"], "timings_ms": s["timings_ms"],
                         "gates": {g["gate"]: g["status"] for g in s.get("gates", [])},
                         "colour": s.get("post", {}).get("colour")}  # applied or not: what its timing covers
                        for s in job["qa"]["segments"]],
        "chunk_render_ms": [c.get("render_ms") for c in chunks],
        "chunk_segments": [c.get("segment") for c in chunks],
        "chunk_streams": [c.get("stream") for c in chunks],  # live streams: started or continued (None: off)
        # the tail after generation: talking_head's resize (--resize-at server), arrival, encoder hand-off
        "chunk_resize_ms": [c.get("resize_ms") for c in chunks],
        "chunk_arrived_s": [c.get("arrived_s") for c in chunks],
        "chunk_write_ms": [c.get("write_ms") for c in chunks],
        "first_chunk_timing_s": chunks[0].get("timing_s"),  # the request's start by phase (start_*_s)
        "chunk_timing_s": [c.get("timing_s") for c in chunks],  # the generator's seconds by part, per chunk
        "delivery_timings_s": job["delivery"]["timings"], "triton_stats_delta_ms": job["triton"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chart", type=Path, default=None)
    parser.add_argument("--engine", default="liveavatar-14B", help="liveavatar-14B | s2v-14B | preview (CPU smoke)")
    parser.add_argument("--size", type=frame_size, default="832x480", help="generated size WxH")
    parser.add_argument("--output-size", type=frame_size, default="1920x1080")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=6.0, help="long enough for two clips")
    parser.add_argument("--history-frames", type=int, default=365, help="LiveAvatar's VAE history (release: 365)")
    parser.add_argument("--profile", choices=("cpu", "gpu"), default="cpu", help="where the other models run")
    parser.add_argument("--fp8", default="rowwise")
    parser.add_argument("--attention", default="sdpa", help="video_generator's wan_attention (sdpa or an 8-bit kernel)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                        help="talking_head's overlap_segments: generate the next segment while this one is judged "
                             "(then the generation and QA stage sums overlap in time)")
    parser.add_argument("--first-segment-s", type=float, default=1.0,
                        help="talking_head's first_segment_s (0: segment_s; the shipped configs' 1.0 by default)")
    parser.add_argument("--segment-s", type=float, default=5.0, help="talking_head's segment_s (QA's unit)")
    parser.add_argument("--last-segment-s", type=float, default=0.0,
                        help="talking_head's last_segment_s: a short last segment leaves less QA after the last block "
                             "(0: as planned, the shipped configs')")
    parser.add_argument("--continue-streams", action=argparse.BooleanOptionalAction, default=True,
                        help="talking_head's continue_streams: a segment goes on with the stream before it")
    parser.add_argument("--resize-at", choices=("encoder", "server"), default="encoder",
                        help="where the frames reach the output size: the client's encoder scales in its colour "
                             "conversion (what talkinghead generate does), or talking_head resizes before streaming")
    parser.add_argument("--random-weights", default="", help="comma-separated QA models served from random weights in "
                        "their official layouts (perf/random_weights.py), e.g. face_embedder for ArcFace on the GPU: "
                        "speed only, their gates' verdicts mean nothing")
    parser.add_argument("--vae-memory-format", default="channels_last_3d",
                        help="channels_last_3d (the GPU profile's) | contiguous")
    parser.add_argument("--vae-compile", action=argparse.BooleanOptionalAction, default=True,
                        help="the VAE's compiled norms (on in the GPU profile)")
    parser.add_argument("--vae-cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="cuDNN times the VAE's convolution algorithms per shape (on in the GPU profile)")
    parser.add_argument("--text-encoder-cpu", action=argparse.BooleanOptionalAction, default=False,
                        help="umT5 on the CPU (wan_text_encoder_cpu): what LiveAvatar needs to fit an 80 GB card")
    parser.add_argument("--kv-cache-fp8", action=argparse.BooleanOptionalAction, default=False,
                        help="LiveAvatar's KV caches in FP8 (liveavatar_kv_cache_fp8): half their memory")
    parser.add_argument("--prepare-threads", type=int, default=0,
                        help="the client encoder's EncodeOptions.prepare_threads (1: inline, 0: by the cores)")
    parser.add_argument("--encoder-thread-type", choices=tuple(THREAD_TYPES), default="slice",
                        help="the client encoder's EncodeOptions.thread_type (slice: PyAV's default, or frame)")
    parser.add_argument("--oversize", type=frame_size, default=None,
                        help="after the timed job, ask for a clip at this WxH, too large for the GPU: its error must "
                             "reach the client, and a job at --size must run after it")
    args = parser.parse_args(argv)
    try:
        random_models = models_of(args.random_weights)
    except ValueError as exc:
        parser.error(str(exc))
    width, height = args.size
    out_w, out_h = args.output_size
    wan = args.engine != "preview"
    generator = {"engine": args.engine, "preload": str(wan).lower(), "benchmark_random_weights": str(wan).lower()}
    if wan:
        generator.update({"wan_fp8": args.fp8, "wan_attention": args.attention,
                          "wan_compile": str(args.compile).lower(),
                          "wan_vae_dtype": "bfloat16", "wan_sampler": "euler", "wan_steps": "4",
                          "liveavatar_history_frames": str(args.history_frames),
                          "wan_vae_memory_format": args.vae_memory_format,
                          "wan_vae_compile": str(args.vae_compile).lower(),
                          "wan_vae_cudnn_benchmark": str(args.vae_cudnn_benchmark).lower(),
                          "wan_text_encoder_cpu": str(args.text_encoder_cpu).lower(),
                          "liveavatar_kv_cache_fp8": str(args.kv_cache_fp8).lower()})
    talking_head = {"max_rerolls": "0", "overlap_segments": str(args.overlap).lower(),
                    "first_segment_s": str(args.first_segment_s), "segment_s": str(args.segment_s),
                    "last_segment_s": str(args.last_segment_s),
                    "continue_streams": str(args.continue_streams).lower()}
    profile = "gpu" if args.profile == "gpu" else None
    encode = EncodeOptions(prepare_threads=args.prepare_threads, thread_type=args.encoder_thread_type)
    parameters = {"fps": args.fps, "width": width, "height": height, "output_width": out_w, "output_height": out_h,
                  "seed": 1}
    result: dict = {"script": "perf/served_e2e_gpu.py", "argv": sys.argv[1:], "engine_setting": args.engine,
                    "generated_size": [width, height], "output_size": [out_w, out_h], "fps": args.fps,
                    "clip_seconds": args.seconds, "model_config_name": profile, "resize_at": args.resize_at,
                    "encoder_prepare_threads": encode.effective_prepare_threads,
                    "encoder_thread_type": encode.thread_type,
                    "video_generator_parameters": generator, "talking_head_parameters": talking_head,
                    "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),  # the stubs inherit it
                    "weights": "random, built in memory at release size (benchmark_random_weights)" if wan else
                    "none (preview engine)"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("TALKINGHEAD_HOME", str(work / "home"))
        repositories = served_repositories(work, generator, talking_head, profile, wan)
        weights = work / "weights"
        if random_models:
            result["random_weights"] = describe(write_random_weights(weights, random_models))
        options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                repositories=repositories, weights=weights, startup_timeout_s=1200,
                                model_config_name=profile)
        log = work / "tritonserver.log"
        t0 = time.perf_counter()
        # a run cut short by `timeout` (a device call's limit) still writes its JSON and keeps the server's log
        signal.signal(signal.SIGTERM, _stopped)
        print("starting tritonserver", flush=True)
        stage, began = "server start", t0
        try:
            with GpuMemory() as memory, TritonServer(options, log_path=log):
                result["server_ready_s"] = round(time.perf_counter() - t0, 2)
                result["gpu_memory_after_load_mib"] = memory.read()
                result["gpu"] = memory.name()
                print(f"server ready in {result['server_ready_s']} s", flush=True)
                stage, began = "warm-up job", time.perf_counter()
                warm = run_job(options.grpc_url, args.warmup_seconds, work / "warmup.mp4", parameters, args.resize_at,
                               encode)
                result["warmup"] = {"seconds": args.warmup_seconds, "end_to_end_s": round(warm["total_s"], 2),
                                    "time_to_first_chunk_s": round(warm["first_chunk_s"], 2)}
                print(f"warm-up: {json.dumps(result['warmup'])}", flush=True)
                stage, began = "timed job", time.perf_counter()
                job = run_job(options.grpc_url, args.seconds, work / "clip.mp4", parameters, args.resize_at, encode)
                result["run"] = summarise(job)
                result["peak_gpu_memory_mib"] = memory.peak_mib or None
                if args.oversize:
                    stage, began = "oversize job", time.perf_counter()
                    result["oversize"] = oversize_then_serve(options.grpc_url, work, parameters, args)
        except BaseException as exc:  # what failed, and after how long, is part of the result
            result["failed"] = {"stage": stage, "after_s": round(time.perf_counter() - began, 2),
                                "error": str(exc)[:2000]}
            raise
        finally:
            lines = []
            if log.exists():
                lines = log.read_text(errors="replace").splitlines()
                shutil.copyfile(log, args.out.with_suffix(".tritonserver.log"))
            result["tritonserver_log_errors"] = [line[:2000] for line in lines if line.startswith("E")][-40:]
            result["tritonserver_log_tail"] = "\n".join(lines[-30:])
            write_json(args.out, result)
    run = result["run"]
    summarise_run(run, args.chart, f"one {args.seconds:g} s clip through tritonserver: {run['engine']}",
                  where=result.get("gpu") or "CPU")
    return result


def oversize_then_serve(url: str, work: Path, parameters: dict, args: argparse.Namespace) -> dict:
    """A job at --oversize, which should fail with video_generator's out-of-memory message at the client (not hang:
    the in-band errors of triton_io), then a 2 s job at --size on the same server."""
    width, height = args.oversize
    began = time.perf_counter()
    try:
        run_job(url, args.warmup_seconds, work / "oversize.mp4", {**parameters, "width": width, "height": height},
                args.resize_at)
        outcome: dict = {"size": [width, height], "failed": False}
    except Exception as exc:  # the expected outcome on a GPU too small for the size
        outcome = {"size": [width, height], "failed": True, "error": str(exc)[:2000]}
    outcome["answered_after_s"] = round(time.perf_counter() - began, 2)
    print(f"oversize: {json.dumps(outcome)[:600]}", flush=True)
    after = run_job(url, 2.0, work / "after.mp4", parameters, args.resize_at)
    outcome["next_job"] = {"seconds": 2.0, "end_to_end_s": round(after["total_s"], 2),
                           "time_to_first_chunk_s": round(after["first_chunk_s"], 2)}
    return outcome


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


if __name__ == "__main__":
    main()
