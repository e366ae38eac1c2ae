"""A 10 s talking-head clip end to end through the Wan2.2-S2V-14B engine at real size on one GPU.

What runs is the serving code path (`WanS2VEngine.generate`: reference VAE encode, clip after clip of denoising
with motion frames re-encoded, streamed VAE decode, frame-rate resampling to the output fps), with random bf16
weights at the released size (speed does not depend on weight values), the fastest settings we have: a few-step
Euler sampler without CFG (what step-distilled checkpoints run), FP8 linear layers and torch.compile, bf16 VAE.
Each streamed chunk is then resized to 1920x1080 on the GPU (bicubic: no learned upscaler) and copied to the host
as uint8, as the pipeline hands it to the encoder.

Left out, and said so in the JSON: the umT5 prompt encoding (cached per prompt; contexts are random tensors of
the real shape) and wav2vec2 (features are given as random [25, T, 1024] at 50 Hz, the real shape), the CPU
stages (pre-processing, QA, encoding: perf/results/quality_cpu.json, encoding_cpu.json) and process hops.

`--engine liveavatar` runs LiveAvatar's path instead (`WanLiveAvatarEngine.generate`: 4-step diffusers-Euler
block-causal streaming, 48-frame clips of 3-latent-frame blocks, its 365-frame VAE history unless
`--history-frames` says fewer), at its 704x384 by default; its LoRA is not merged (random weights: the merge does
not change the speed).

    python perf/bench_e2e_gpu.py --out perf/results/e2e_h100.json
    python perf/bench_e2e_gpu.py --engine liveavatar --sizes 704x384,832x480 --out perf/results/e2e_liveavatar.json
    python perf/bench_e2e_gpu.py --tiny --out /tmp/e2e_tiny.json      # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny Wan fixtures (tests/wan_fixtures)

from wan_fixtures.tiny import TINY_S2V_CONFIG  # noqa: E402

from python_backends.generation.job import GenerationJob, GenerationParams  # noqa: E402
from python_backends.generation.wan import WanS2VTransformerConfig  # noqa: E402
from python_backends.generation.wan.common.vae import WanVAE  # noqa: E402
from python_backends.generation.wan.s2v.engine import WanS2VEngine, WanS2VOptions, _apply_speed_options  # noqa: E402
from python_backends.generation.wan.s2v.liveavatar_engine import LiveAvatarOptions, WanLiveAvatarEngine  # noqa: E402
from python_backends.generation.wan.s2v.model import build_s2v_model  # noqa: E402

PROMPT_TOKENS = 40  # a one-sentence prompt's umT5 length


def build_engine(tiny: bool, device: torch.device, options: WanS2VOptions) -> WanS2VEngine:
    config = TINY_S2V_CONFIG if tiny else WanS2VTransformerConfig()
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    transformer = build_s2v_model(config, device, dtype)
    _apply_speed_options(transformer, Path("."), options)
    vae = WanVAE(dim=8 if tiny else 96).to(device, getattr(torch, options.vae_dtype)).eval().requires_grad_(False)
    engine_class = WanLiveAvatarEngine if isinstance(options, LiveAvatarOptions) else WanS2VEngine
    engine = engine_class(transformer, vae, text_encoder=None, audio_encoder=None, options=options)
    for prompt in (options.default_prompt, engine.task.sample_neg_prompt):
        tokens = min(PROMPT_TOKENS, config.text_len)
        engine._contexts[prompt] = torch.randn(tokens, config.text_dim, device=device, dtype=dtype)
    return engine


def run_clip(engine: WanS2VEngine, seconds: float, fps: float, steps: int, size: tuple[int, int],
             output: tuple[int, int], device: torch.device) -> dict:
    width, height = size
    config = engine.transformer.config
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    features = rng.standard_normal((config.audio_layers, int(seconds * 50) + 1, config.audio_dim)).astype(np.float32)
    job = GenerationJob(photo=photo, wav2vec2_features=features, params=GenerationParams(
        seed=0, steps=steps, guidance=1.0, width=width, height=height, fps=fps, max_duration_s=seconds,
        chunk_frames=16))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    first, frames, upscale_s = None, 0, 0.0
    for chunk in engine.generate(job):
        t0 = time.perf_counter()
        pixels = torch.from_numpy(chunk.frames).to(device).permute(0, 3, 1, 2).float()
        big = F.interpolate(pixels, size=(output[1], output[0]), mode="bicubic", align_corners=False)
        big.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        upscale_s += time.perf_counter() - t0
        frames += len(chunk.frames)
        first = first if first is not None else time.perf_counter() - started
    total = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"seconds": seconds, "fps": fps, "frames": frames, "generated_size": [width, height],
            "output_size": list(output), "steps": steps, "time_to_first_chunk_s": round(first, 3),
            "total_s": round(total, 3), "upscale_and_copy_s": round(upscale_s, 3),
            "gpu_seconds_per_output_second": round(total / seconds, 3),
            "realtime_factor": round(seconds / total, 3), "peak_memory_gib": round(peak, 2) if peak else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup-seconds", type=float, default=6.0, help="long enough for two clips")
    parser.add_argument("--fp8", default="rowwise", help="rowwise | tensor | none")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--sizes", default=None, help="generated sizes to run, WxH,... (default 832x480,1280x720; "
                        "704x384 for liveavatar)")
    parser.add_argument("--engine", choices=("s2v", "liveavatar"), default="s2v")
    parser.add_argument("--history-frames", type=int, default=365, help="liveavatar: VAE history (release: 365)")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ("704x384" if args.engine == "liveavatar" else "832x480,1280x720")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    speed = {"default_steps": args.steps, "default_guidance": 1.0,
             "vae_dtype": "bfloat16" if device.type == "cuda" else "float32",
             "fp8": None if args.fp8 == "none" or device.type == "cpu" else args.fp8,
             "compile": args.compile and device.type == "cuda"}
    if args.engine == "liveavatar":
        options = LiveAvatarOptions(**speed, infer_frames=24 if args.tiny else 48,
                                    history_frames=13 if args.tiny else args.history_frames)
    else:
        options = WanS2VOptions(sampler="euler", **speed, infer_frames=16 if args.tiny else 80)
    result: dict = {"script": "perf/bench_e2e_gpu.py", "argv": sys.argv[1:], "engine": args.engine,
                    "device": str(device),
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
                    "torch": torch.__version__, "options": {k: getattr(options, k) for k in (
                        "sampler", "default_steps", "fp8", "compile", "vae_dtype", "infer_frames")},
                    "excluded": ["umT5 prompt encoding (cached per prompt)", "wav2vec2 (features given)",
                                 "CPU stages: pre-processing, QA, encoding", "process hops (BLS, gRPC)"],
                    "runs": []}
    t0 = time.perf_counter()
    engine = build_engine(args.tiny, device, options)
    result["build_s"] = round(time.perf_counter() - t0, 2)
    print(f"engine built in {result['build_s']} s", flush=True)
    for size_text in args.sizes.split(","):
        width, height = (int(v) for v in size_text.split("x"))
        if args.tiny:
            width, height = 64, 64
        t0 = time.perf_counter()
        # Warm-up over two clips: the first clip (no motion frames) and the later ones are different graphs.
        run_clip(engine, args.warmup_seconds, args.fps, args.steps, (width, height), (1920, 1080), device)
        warm = round(time.perf_counter() - t0, 2)
        print(f"{width}x{height}: warm-up ({args.warmup_seconds:g} s clip, compile) {warm} s", flush=True)
        run = run_clip(engine, args.seconds, args.fps, args.steps, (width, height), (1920, 1080), device)
        run["warmup_s"] = warm
        result["runs"].append(run)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(run), flush=True)
    return result


if __name__ == "__main__":
    main()
