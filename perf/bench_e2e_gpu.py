"""A 10 s talking-head clip end to end through the Wan2.2-S2V-14B engine at real size on one GPU.

What runs is the serving code path (`WanS2VEngine.generate`: reference VAE encode, clip after clip of denoising
with motion frames re-encoded, streamed VAE decode, frame-rate resampling to the output fps), with random bf16
weights at the released size (speed does not depend on weight values), the fastest settings we have: a few-step
Euler sampler without CFG (what step-distilled checkpoints run), FP8 linear layers and torch.compile, bf16 VAE.
The stages after the DiT run as the served engines run them (generation/stage_pipeline.py): VAE decoding
(LiveAvatar: beside the next block's denoising; S2V: in the DiT's thread, as the next clip's motion frames need
it), the copy to the host and 16 -> `--fps` frame interpolation (the flow interpolator: no RIFE weights here), then
each chunk encoded to H.264 on the CPU (client/encoding.py; `--no-encode` leaves it out) and scaled to
`--output-size` (1920x1080; Lanczos, no learned upscaler) in the encoder's colour conversion, as the client does
for a served job (client/delivery.py encoder_resize: the server streams the generated size). `--resize gpu` resizes
on the GPU instead (bicubic) and copies the output size to the host before the encoder. `--overlap both`
(the default) runs the clip with the stages overlapped and one after another; each run reports every stage's busy
time, their sum, the overlapped wall time, the time to the first frames and the peak GPU memory.

Left out, and said so in the JSON: the umT5 prompt encoding (cached per prompt; contexts are random tensors of
the real shape) and wav2vec2 (features are given as random [25, T, 1024] at 50 Hz, the real shape), the CPU
stages (pre-processing, QA, encoding: perf/results/quality_cpu.json, encoding_cpu.json) and process hops.

`--engine liveavatar` runs LiveAvatar's path instead (`WanLiveAvatarEngine.generate`: 4-step diffusers-Euler
block-causal streaming, 48-frame clips of 3-latent-frame blocks, its 365-frame VAE history unless
`--history-frames` says fewer), at its 704x384 by default; its LoRA is not merged (random weights: the merge does
not change the speed).

    python perf/bench_e2e_gpu.py --out perf/results/e2e_h100.json
    python perf/bench_e2e_gpu.py --engine liveavatar --sizes 704x384,832x480 --out perf/results/e2e_liveavatar.json
    python perf/bench_e2e_gpu.py --engine liveavatar --sizes 704x384 --history-frames 73 --out e2e.json
    python perf/bench_e2e_gpu.py --tiny --output-size 128x128 --out /tmp/e2e_tiny.json   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch._inductor import config as inductor_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny Wan fixtures (tests/wan_fixtures)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_file, also when loaded by path (tests)

from cli_args import frame_size, frame_sizes  # noqa: E402  (perf/ is on sys.path)
from results_file import write_json  # noqa: E402
from wan_fixtures.tiny import TINY_S2V_CONFIG  # noqa: E402

from python_backends.generation.cuda_libraries import loaded_cuda_libraries, sdpa_backend  # noqa: E402
from python_backends.generation.job import GenerationJob, GenerationParams  # noqa: E402
from python_backends.generation.stage_pipeline import Stage, run_stages  # noqa: E402
from python_backends.generation.wan import WanS2VTransformerConfig  # noqa: E402
from python_backends.generation.wan.s2v.engine import WanS2VEngine, WanS2VOptions  # noqa: E402
from python_backends.generation.wan.s2v.liveavatar_engine import LiveAvatarOptions  # noqa: E402
from python_backends.generation.wan.s2v.random_engine import build_random_engine  # noqa: E402

PROMPT_TOKENS = 40  # a one-sentence prompt's umT5 length


def build_engine(tiny: bool, device: torch.device, options: WanS2VOptions, encoders: bool = False) -> WanS2VEngine:
    """`encoders`: umT5 and wav2vec2 loaded as a served engine has them (the jobs still give their features)."""
    config = TINY_S2V_CONFIG if tiny else WanS2VTransformerConfig()
    engine = build_random_engine(options, device, config, encoders=encoders)
    dtype = engine.transformer.patch_embedding.weight.dtype
    for prompt in (options.default_prompt, engine.task.sample_neg_prompt):
        tokens = min(PROMPT_TOKENS, config.text_len)
        engine._contexts[prompt] = torch.randn(tokens, config.text_dim, device=device, dtype=dtype)
    return engine


class ResizeAndCopy:
    """Stage: a chunk's frames to the output size on the device (bicubic: no learned upscaler) and back to the host
    as uint8, as the pipeline hands them to the encoder."""

    def __init__(self, output: tuple[int, int], device: torch.device) -> None:
        self.output, self.device = output, device

    def run(self, chunk) -> list[np.ndarray]:
        pixels = torch.from_numpy(chunk.frames).to(self.device).permute(0, 3, 1, 2).float()
        big = F.interpolate(pixels, size=(self.output[1], self.output[0]), mode="bicubic", align_corners=False)
        return [big.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()]


class Encode:
    """Stage: H.264 on the CPU as the client encodes the stream (client/encoding.py, its defaults); with `size`,
    scaling the frames to it in the colour conversion, as the client does for a served job (encoder_resize)."""

    def __init__(self, path: Path, fps: float, started: float, size: tuple[int, int] | None = None) -> None:
        from client.encoding import EncodeOptions, StreamingEncoder

        self.encoder = StreamingEncoder(path, fps, options=EncodeOptions(size=size), t0=started)
        self.result: dict | None = None

    def run(self, frames: np.ndarray) -> list[int]:
        self.encoder.write(frames)
        return [len(frames)]

    def flush(self) -> list[int]:
        self.result = self.encoder.close().as_dict()
        return []


def run_clip(engine: WanS2VEngine, seconds: float, fps: float, steps: int, size: tuple[int, int],
             output: tuple[int, int], device: torch.device, overlap: bool = True, encode_to: Path | None = None,
             dit_priority: bool = False, resize_on_gpu: bool = False) -> dict:
    """One clip through the engine and the stages after it, overlapped or one after another; the wall time, time
    to the first frames and each stage's busy time. The frames reach the output size as a served job's do, in the
    encoder's colour conversion (the server streams the generated size), or with `resize_on_gpu` resized on the
    GPU and copied to the host at the output size before the encoder."""
    width, height = size
    config = engine.transformer.config
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    features = rng.standard_normal((config.audio_layers, int(seconds * 50) + 1, config.audio_dim)).astype(np.float32)
    job = GenerationJob(photo=photo, wav2vec2_features=features, params=GenerationParams(
        seed=0, steps=steps, guidance=1.0, width=width, height=height, fps=fps, max_duration_s=seconds,
        chunk_frames=16))
    engine.options = replace(engine.options, overlap=overlap, dit_priority=dit_priority)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if resize_on_gpu:
        stages = [Stage("resize+copy", ResizeAndCopy(output, device).run)]
    else:
        stages = [Stage("hand-off", lambda chunk: [chunk.frames])]  # already on the host at the generated size
    encoder = Encode(encode_to, fps, started, None if resize_on_gpu else output) if encode_to is not None else None
    if encoder is not None:
        stages.append(Stage("encode", encoder.run, encoder.flush))
    # per chunk, the engine's seconds by part; the first also holds the request's start by phase (start_*_s)
    timings: list[dict[str, float]] = []

    def chunks():
        for chunk in engine.generate(job):
            timings.append({key: round(float(value), 3) for key, value in chunk.timing.items()})
            yield chunk

    run = run_stages(chunks(), stages, device=device, source_name="engine", overlap=overlap)
    first, frames = None, 0
    for item in run:
        first = first if first is not None else time.perf_counter() - started
        frames += item if isinstance(item, int) else len(item)
    total = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    inner = engine.last_stages.as_dict()
    outer = run.stats.as_dict()
    busy = {**inner["busy_s"], **{k: v for k, v in outer["busy_s"].items() if k != "engine"}}
    result = {"seconds": seconds, "fps": fps, "frames": frames, "generated_size": [width, height],
              "output_size": list(output), "steps": steps, "overlap": overlap, "dit_priority": dit_priority,
              "time_to_first_chunk_s": round(first, 3), "total_s": round(total, 3),
              "stage_busy_s": busy, "sum_of_stages_s": round(sum(busy.values()), 3),
              "engine_wall_s": inner["wall_s"], "engine_time_to_first_chunk_s": inner["first_item_s"],
              "resize": "gpu" if resize_on_gpu else "encoder",
              "upscale_and_copy_s": busy.get("resize+copy"),
              "gpu_seconds_per_output_second": round(total / seconds, 3),
              "realtime_factor": round(seconds / total, 3), "peak_memory_gib": round(peak, 2) if peak else None,
              "first_chunk_timing_s": timings[0] if timings else {}, "chunk_timing_s": timings}
    if encoder is not None:
        # the first frame handed to the encoder and its first packet, apart: what the stages before it take
        # against what x264 holds back (its lookahead and frame threads)
        result["encode"] = {k: encoder.result[k] for k in ("codec", "width", "height", "frames", "bytes",
                                                           "time_to_first_frame_s", "time_to_first_packet_s",
                                                           "encode_s", "close_s")}
    return result


# kernel name fragments (lower case) -> what the kernel is, first match wins
KERNEL_KINDS = (
    ("attention", ("sdpa", "fmha", "flash", "attention", "attn")),
    ("fp8 gemm", ("e4m3", "f8f8", "fp8")),
    ("convolution", ("conv", "fprop", "dgrad", "implicit")),
    ("gemm", ("gemm", "xmma", "cutlass", "cublas", "nvjet", "s16816", "sm90_")),
    ("compiled (Triton)", ("triton_",)),
    ("copy", ("memcpy", "memset", "copy")),
    ("eager elementwise / reduction", ("elementwise", "vectorized", "reduce", "unrolled", "index", "cat")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in lowered for p in parts)), "other")


def kernel_profile(engine: WanS2VEngine, seconds: float, fps: float, steps: int, size: tuple[int, int],
                   output: tuple[int, int], device: torch.device, top: int = 40) -> dict:
    """One `seconds` clip, stages one after another and no encoding, under torch.profiler: the GPU's kernel time
    by kind of kernel (KERNEL_KINDS) and the `top` kernels, against the run's wall time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run = run_clip(engine, seconds, fps, steps, size, output, device, overlap=False)
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA] \
        if device.type == "cuda" else []
    total_us = sum(e.self_device_time_total for e in kernels)
    kinds: dict[str, float] = {}
    for event in kernels:
        kind = kernel_kind(event.key)
        kinds[kind] = kinds.get(kind, 0.0) + event.self_device_time_total
    ranked = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return {"seconds": seconds, "generated_size": list(size), "wall_s": run["total_s"],
            "stage_busy_s": run["stage_busy_s"], "kernel_s": round(total_us / 1e6, 3),
            "by_kind_s": {k: round(v / 1e6, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": e.key[:200], "kind": kernel_kind(e.key), "calls": e.count,
                             "total_ms": round(e.self_device_time_total / 1e3, 2)} for e in ranked]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup-seconds", type=float, default=6.0, help="long enough for two clips")
    parser.add_argument("--fp8", default="rowwise", help="rowwise | tensor | none")
    parser.add_argument("--attention", default="sdpa", help="the DiT's self-attention (wan/common/attention.py "
                        "ATTENTION_BACKENDS: sdpa, or an 8-bit Triton kernel such as triton_qk_int8_pv_fp8)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--vae-memory-format", default="contiguous", help="contiguous | channels_last_3d")
    parser.add_argument("--vae-compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--vae-cudnn-benchmark", action=argparse.BooleanOptionalAction, default=False,
                        help="cuDNN times the VAE's convolution algorithms per shape (process-wide)")
    parser.add_argument("--sizes", type=frame_sizes, default=None,
                        help="generated sizes to run, WxH,... (default 832x480,1280x720; 704x384 for liveavatar)")
    parser.add_argument("--engine", choices=("s2v", "liveavatar"), default="s2v")
    parser.add_argument("--history-frames", type=int, default=365, help="liveavatar: VAE history (release: 365)")
    parser.add_argument("--release-residual", action=argparse.BooleanOptionalAction, default=True,
                        help="liveavatar: the release's bf16 residual stream between DiT blocks (off: float32)")
    parser.add_argument("--kv-cache-fp8", action=argparse.BooleanOptionalAction, default=False,
                        help="liveavatar: its KV caches in FP8 e4m3 (half their memory; not the release's)")
    parser.add_argument("--encoders", action=argparse.BooleanOptionalAction, default=False,
                        help="load umT5 and wav2vec2 as the served engine does (the jobs still give text contexts "
                             "and audio features): the served process's state without the server")
    parser.add_argument("--text-encoder-cpu", action=argparse.BooleanOptionalAction, default=False,
                        help="with --encoders: umT5 on the CPU (wan_text_encoder_cpu)")
    parser.add_argument("--overlap", choices=("on", "off", "both"), default="both",
                        help="stages after the DiT overlapped with it, one after another, or both runs")
    parser.add_argument("--dit-priority", choices=("on", "off", "both"), default="off",
                        help="overlapped runs: the DiT's CUDA stream at the highest priority, the stages' at the "
                             "lowest (on), all at the default (off), or both runs, alternating")
    parser.add_argument("--balance-clips", action=argparse.BooleanOptionalAction, default=True,
                        help="s2v: clips only as long as the job needs (3 x 56 frames for 10 s, not 3 x 80)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each --dit-priority choice")
    parser.add_argument("--output-size", type=frame_size, default="1920x1080", help="WxH the frames are resized to")
    parser.add_argument("--resize", choices=("encoder", "gpu"), default="encoder",
                        help="where frames reach --output-size: in the encoder's colour conversion, as served jobs "
                             "do (the server streams the generated size), or on the GPU before the copy to the host")
    parser.add_argument("--encode", action=argparse.BooleanOptionalAction, default=True,
                        help="encode the 1080p stream to H.264 on the CPU as the last stage")
    parser.add_argument("--profile-seconds", type=float, default=0.0,
                        help="after the timed runs of each size, profile a clip this long (stages one after "
                             "another, no encoding): GPU kernel time by kind of kernel (0: no profile)")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or frame_sizes("704x384" if args.engine == "liveavatar" else "832x480,1280x720")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    speed = {"default_steps": args.steps, "default_guidance": 1.0,
             "vae_dtype": "bfloat16" if device.type == "cuda" else "float32",
             "fp8": None if args.fp8 == "none" or device.type == "cpu" else args.fp8,
             "compile": args.compile and device.type == "cuda", "vae_memory_format": args.vae_memory_format,
             "vae_compile": args.vae_compile and device.type == "cuda", "attention_backend": args.attention,
             "vae_cudnn_benchmark": args.vae_cudnn_benchmark and device.type == "cuda",
             "text_encoder_cpu": args.text_encoder_cpu}
    if args.engine == "liveavatar":
        options = LiveAvatarOptions(**speed, infer_frames=24 if args.tiny else 48,
                                    history_frames=13 if args.tiny else args.history_frames,
                                    release_residual=args.release_residual, kv_cache_fp8=args.kv_cache_fp8)
    else:
        options = WanS2VOptions(sampler="euler", **speed, infer_frames=16 if args.tiny else 80,
                                balance_clips=args.balance_clips)
    result: dict = {"script": "perf/bench_e2e_gpu.py", "argv": sys.argv[1:], "engine": args.engine,
                    "device": str(device),
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
                    "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                    "torch": torch.__version__, "options": {k: getattr(options, k) for k in (
                        "sampler", "default_steps", "fp8", "compile", "vae_dtype", "vae_memory_format", "vae_compile",
                        "vae_cudnn_benchmark", "infer_frames", "balance_clips", "attention_backend")},
                    "release_residual": getattr(options, "release_residual", None),
                    "kv_cache_fp8": getattr(options, "kv_cache_fp8", None),
                    "encoders": args.encoders, "text_encoder_cpu": args.text_encoder_cpu,
                    # Inductor's tuning switches (TORCHINDUCTOR_* environment variables) the compiled blocks ran with
                    "inductor": {k: getattr(inductor_config, k) for k in (
                        "coordinate_descent_tuning", "max_autotune", "max_autotune_pointwise")},
                    "excluded": ["umT5 prompt encoding (cached per prompt)", "wav2vec2 (features given)",
                                 "CPU stages: pre-processing, QA", "process hops (BLS, gRPC)"],
                    "runs": []}
    t0 = time.perf_counter()
    engine = build_engine(args.tiny, device, options, args.encoders)
    # the scaled-dot-product backends PyTorch may pick from, after everything is loaded (process-wide flags)
    result["sdp_enabled"] = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                             for name in ("cudnn", "flash", "mem_efficient", "math")}
    result["sdpa_backend"] = sdpa_backend(device.type)  # set beside video_generator's startup log line
    result["build_s"] = round(time.perf_counter() - t0, 2)
    print(f"engine built in {result['build_s']} s", flush=True)
    output = args.output_size
    result["options"]["interpolation"] = engine.interpolation.method
    choice = {"on": [True], "off": [False], "both": [False, True]}
    priorities = choice[args.dit_priority] * args.repeats  # alternating when "both"
    modes = [(overlap, priority) for overlap in choice[args.overlap]
             for priority in (priorities if overlap else [False])]
    for width, height in args.sizes:
        if args.tiny:
            width, height = 64, 64
        t0 = time.perf_counter()
        # Warm-up over two clips: the first clip (no motion frames) and the later ones are different graphs; with
        # balanced S2V clips the clip length depends on the duration, so the warm-up runs the measured one.
        warmup = args.seconds if options.balance_clips and args.engine == "s2v" else args.warmup_seconds
        run_clip(engine, warmup, args.fps, args.steps, (width, height), output, device)
        warm = round(time.perf_counter() - t0, 2)
        print(f"{width}x{height}: warm-up ({warmup:g} s clip, compile) {warm} s", flush=True)
        for overlap, priority in modes:
            with tempfile.TemporaryDirectory() as scratch:
                encode_to = Path(scratch) / "clip.mp4" if args.encode else None
                run = run_clip(engine, args.seconds, args.fps, args.steps, (width, height), output, device,
                               overlap, encode_to, priority, args.resize == "gpu")
            run["warmup_s"] = warm
            result["runs"].append(run)
            result["cuda_libraries"] = loaded_cuda_libraries()  # to set beside a served run's (video_generator's log)
            write_json(args.out, result)
            print(json.dumps(run), flush=True)
        if args.profile_seconds > 0:
            profiled = kernel_profile(engine, args.profile_seconds, args.fps, args.steps, (width, height), output,
                                      device)
            result.setdefault("kernel_profiles", []).append(profiled)
            write_json(args.out, result)
            print(json.dumps({k: profiled[k] for k in ("generated_size", "wall_s", "kernel_s", "by_kind_s")}),
                  flush=True)
    return result


if __name__ == "__main__":
    main()
