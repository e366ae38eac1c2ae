"""The official WanModel_S2V against ours at real size on one GPU: one S2V denoising step, same bf16 weights.

Both models hold the same random bf16 weights of the released Wan2.2-S2V-14B size (dim 5120, 40 layers,
16.3 B parameters: ours is initialised, the official loads our state dict strictly, key for key). Both get the
same inputs of one official clip at 832x480 (80 frames = 20 latent frames, the reference latents, 19 motion
latents, 25 wav2vec2 layers of audio features, a prompt's T5 features and the negative prompt's) and take one
denoising step with classifier-free guidance 4.5 at t = 999, as WanS2V.generate makes it: the conditional and the
unconditional (negative prompt, all-zero audio) forwards, then uncond + 4.5 (cond - uncond).

* official: `wan.modules.s2v.model_s2v.WanModel_S2V` from the `wan22` package, run as WanS2V.generate runs it
  (under torch.amp.autocast('cuda', bfloat16), two forwards, int64 timestep, all-zero pose latents). Its
  `flash_attention` needs the flash-attn package, which the GPU image lacks: it is replaced by the same attention
  through torch's scaled_dot_product_attention (tests/parity/official.py `sdpa_attention`, which the CPU parity
  suite uses too), so the official time here is with SDPA's fastest kernel, not with flash-attn.
* ours eager: our WanS2VTransformer in bf16, the two forwards as the official (the accuracy comparison).
* ours fastest: what perf/bench_generator.py measured fastest: FP8 (rowwise, fast accumulation) linear layers,
  torch.compile of each block, both guidance branches in one batched forward.
All three use SDPA's default kernel choice for the same shapes.

Reported: each path's median time per step (CUDA events, after warm-up), the speed ratio official / ours, and
the difference of each of ours from the official's conditional, unconditional and guided flow: max abs, max abs
relative to the official's largest magnitude, and the relative L2 error. The tolerance bounds the relative L2 error
of each branch (the model's own outputs; guidance multiplies their difference by 4.5 in the guided flow):
* ours eager vs official: relative L2 <= 1e-2. Both round every product to bf16 (2^-8 relative) and the official
  computes more in float32 (autocast, float64 rotary tables), so they differ by bf16 round-off accumulated over
  40 blocks, not by math; the CPU suite shows the same code agreeing to 5e-7 in float32.
* ours fastest vs official: relative L2 <= 8e-2. e4m3 keeps 3 mantissa bits; perf/bench_generator.py measured 3.6 %
  between our FP8 and bf16 steps on the H100, and the FP8 unit test bounds it at 8 %.

    python perf/parity_gpu.py --out perf/results/parity_h200.json
    python perf/parity_gpu.py --tiny --out /tmp/parity_tiny.json    # CPU, tiny model in float32, seconds

Besides the GPU image's packages the official code needs WHEELS below (pure Python, carried as wheels). The
exit code is 1 when a difference is over its tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))  # the tiny Wan fixtures (tests/wan_fixtures)

from results_file import write_json  # noqa: E402  (perf/ is on sys.path)
from wan_fixtures.tiny import TINY_S2V_CONFIG  # noqa: E402

from perf.bench_generator import (  # noqa: E402
    GUIDE,
    TEXT_TOKENS,
    Clock,
    clip_shape,
    compiled_blocks,
    environment,
    free_memory,
    make_inputs,
)
from python_backends.generation.wan import S2V_14B, WanS2VTransformerConfig  # noqa: E402
from python_backends.generation.wan.common.configs import to_diffusers_config  # noqa: E402
from python_backends.generation.wan.common.fp8 import convert_to_fp8  # noqa: E402
from python_backends.generation.wan.s2v.model import build_s2v_model, cfg_forward, guide  # noqa: E402
from tests.parity.official import official  # noqa: E402

log = logging.getLogger("parity_gpu")

SCHEMA = "talkinghead.parity_gpu/1"
WHEELS = ("wan22==2.2.11", "diffusers==0.42.1", "easydict==1.14")  # pure Python; the rest is on the GPU image
TOLERANCE_REL_L2 = {"ours eager": 1e-2, "ours fastest": 8e-2}
TIMESTEP = 999
HEIGHT, WIDTH, INFER_FRAMES = 480, 832, S2V_14B.infer_frames
TINY_HEIGHT, TINY_WIDTH, TINY_INFER_FRAMES = 64, 128, 8


def official_model(config: WanS2VTransformerConfig, state: dict[str, torch.Tensor], device: torch.device,
                   dtype: torch.dtype) -> torch.nn.Module:
    """WanModel_S2V of `config` holding `state` (our weights, the official key names) on `device`.

    Built on the meta device (a 16 B float32 model would take minutes and 65 GB of host memory), given storage on
    the device and loaded strictly. The tensors its __init__ computes outside parameters and buffers (rotary
    tables, FramePack's bucket sizes) depend only on the head size: they come from a small official model of the
    same head size built normally.
    """
    official()
    from wan.modules.s2v.model_s2v import WanModel_S2V

    kwargs = {k: v for k, v in to_diffusers_config(config).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = WanModel_S2V(**kwargs).to(dtype)
    model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    head = config.dim // config.num_heads
    small = WanModel_S2V(**{**kwargs, "dim": 2 * head, "num_heads": 2, "ffn_dim": 8, "num_layers": 1,
                            "audio_inject_layers": [0], "audio_dim": 8})
    for name, module in model.named_modules():
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                replacement = getattr(small.get_submodule(name), attr)
                if replacement.shape != value.shape:
                    raise RuntimeError(f"{name}.{attr}: {tuple(replacement.shape)} != {tuple(value.shape)}")
                setattr(module, attr, replacement)
    return model.eval().requires_grad_(False)


PARTS = ("conditional", "unconditional", "guided")


def differences(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> dict[str, Any]:
    """Per part of a step's output (conditional, unconditional, guided flow): max abs, max abs relative to the
    official's largest magnitude, relative L2. The tolerance applies to the two model outputs: guidance multiplies
    their difference by 4.5, so the guided flow's relative error is larger by construction (reported)."""
    parts = {}
    for name, a, b in zip(PARTS, ours.double(), theirs.double()):
        max_abs = float((a - b).abs().max())
        parts[name] = {"max_abs": max_abs, "max_rel": max_abs / float(b.abs().max()),
                       "rel_l2": float((a - b).norm() / b.norm())}
    within = all(parts[name]["rel_l2"] <= tolerance for name in PARTS[:2])
    return {**parts["guided"], "parts": parts, "tolerance_rel_l2": tolerance,
            "worst_branch_rel_l2": max(parts[name]["rel_l2"] for name in PARTS[:2]), "within_tolerance": within}


def timed(clock: Clock, step: Callable[[], torch.Tensor], warmup: int, reps: int) -> tuple[dict, torch.Tensor]:
    first, times, out = clock.time(step, warmup=warmup, reps=reps)
    return {"first_call_s": first, "times_s": times, "median_step_s": statistics.median(times)}, out.float()


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.tiny else "cuda")
    # The official module needs CUDA autocast to run in bf16 (its float32 sections are CUDA autocast regions):
    # the CPU smoke test runs both in float32.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TINY_S2V_CONFIG if args.tiny else WanS2VTransformerConfig()
    height, width, frames = ((TINY_HEIGHT, TINY_WIDTH, TINY_INFER_FRAMES) if args.tiny
                             else (HEIGHT, WIDTH, INFER_FRAMES))
    shape = clip_shape(config, "clip", height, width, frames)
    clock = Clock(device)
    result: dict[str, Any] = {
        "schema": SCHEMA, "environment": environment(device, ["perf/parity_gpu.py", *sys.argv[1:]]),
        "model": "tiny" if args.tiny else "Wan2.2-S2V-14B size, random bf16 weights", "dtype": str(dtype),
        "resolution": f"{width}x{height}", "infer_frames": frames, "timestep": TIMESTEP, "guidance": GUIDE,
        "tokens": {"video": shape.n_video, "reference": shape.n_ref, "motion": shape.n_motion, "sequence": shape.seq},
        "attention": "official flash_attention replaced by torch SDPA (same math; flash-attn is not installed)",
        "wheels": list(WHEELS),
    }
    started = time.perf_counter()
    ours = build_s2v_model(config, device=device, dtype=dtype, seed=0)
    theirs = official_model(config, ours.state_dict(), device, dtype)
    result["build_s"] = time.perf_counter() - started

    x = make_inputs(config, shape, device, seed=3)
    null = [torch.randn(min(TEXT_TOKENS, config.text_len), config.text_dim, device=device,
                        generator=torch.Generator(device=device).manual_seed(4))]
    # WanS2V.generate draws the noise and hands over the audio features in param_dtype (the reference and motion
    # latents come from the VAE in float32): both models get those values.
    x = {**x, "latents": x["latents"].to(dtype), "audio": x["audio"].to(dtype)}
    motion = (S2V_14B.motion_frames, S2V_14B.lat_motion_frames)
    official_args = {"seq_len": shape.n_video, "ref_latents": x["ref_latents"], "motion_latents": x["motion_latents"],
                     "cond_states": torch.zeros(1, config.cond_dim, *x["latents"].shape[2:], device=device,
                                                dtype=dtype),
                     "motion_frames": list(motion), "drop_motion_frames": False}
    t_official = torch.tensor([TIMESTEP], device=device)  # int64, as the official scheduler's timesteps
    t_ours = torch.tensor([float(TIMESTEP)], device=device)

    def official_step() -> torch.Tensor:
        with torch.amp.autocast("cuda", dtype=dtype, enabled=device.type == "cuda"), torch.no_grad():  # as generate
            cond = theirs([x["latents"][0]], t=t_official, context=x["context"], audio_input=x["audio"],
                          **official_args)[0]
            uncond = theirs([x["latents"][0]], t=t_official, context=null, audio_input=0.0 * x["audio"],
                            **official_args)[0]
            return torch.stack([cond, uncond, uncond + GUIDE * (cond - uncond)])

    def eager_step() -> torch.Tensor:
        with torch.no_grad():
            cond = ours(x["latents"], t_ours, x["context"], x["ref_latents"], x["motion_latents"], x["audio"],
                        motion_frames=motion)
            uncond = ours(x["latents"], t_ours, null, x["ref_latents"], x["motion_latents"], 0.0 * x["audio"],
                          motion_frames=motion)
            return torch.stack([cond[0], uncond[0], guide(cond, uncond, GUIDE)[0]])

    def fastest_step() -> torch.Tensor:
        with torch.no_grad():
            cond, uncond = cfg_forward(ours, latents=x["latents"], timestep=t_ours, context=x["context"],
                                       context_null=null, ref_latents=x["ref_latents"],
                                       motion_latents=x["motion_latents"], audio=x["audio"], motion_frames=motion)
            return torch.stack([cond[0], uncond[0], guide(cond, uncond, GUIDE)[0]])

    paths: dict[str, Any] = {}
    paths["official"], reference = timed(clock, official_step, args.warmup, args.reps)
    log.info("official: %.3f s / step", paths["official"]["median_step_s"])
    theirs = None  # its weights (33 GB at real size) go before ours are converted
    free_memory()
    paths["ours eager"], out = timed(clock, eager_step, args.warmup, args.reps)
    paths["ours eager"].update(settings=f"{dtype}, SDPA default backend, CFG as two forwards",
                               **differences(out, reference, TOLERANCE_REL_L2["ours eager"]))
    log.info("ours bf16 eager: %.3f s / step, rel L2 %.2e", paths["ours eager"]["median_step_s"],
             paths["ours eager"]["rel_l2"])
    if args.fp8 != "none":
        convert_to_fp8(ours, args.fp8, use_fast_accum=True)
    with compiled_blocks(ours, None) if args.compile else contextlib.nullcontext():
        paths["ours fastest"], out = timed(clock, fastest_step, args.warmup + int(args.compile), args.reps)
    paths["ours fastest"].update(settings=f"FP8 {args.fp8} (fast accumulation), compile={args.compile}, "
                                         "CFG batched", **differences(out, reference,
                                                                      TOLERANCE_REL_L2["ours fastest"]))
    if args.compile and paths["ours fastest"]["first_call_s"] is not None:
        paths["ours fastest"]["compile_s"] = max(0.0, paths["ours fastest"]["first_call_s"]
                                                - paths["ours fastest"]["median_step_s"])
    result["paths"] = paths
    official_s = paths["official"]["median_step_s"]
    result["speedup_vs_official"] = {name: official_s / p["median_step_s"] for name, p in paths.items()
                                     if name != "official"}
    result["wall_s"] = time.perf_counter() - started
    return result


def table(result: dict) -> str:
    lines = ["| path | s / step | speed vs official | guided flow: max abs diff | max rel diff | rel L2 | "
             "worse branch rel L2 | tolerance (branch rel L2) |", "|---|---|---|---|---|---|---|---|"]
    for name, p in result["paths"].items():
        speed = result["speedup_vs_official"].get(name, 1.0)
        diff = (f"{p['max_abs']:.2e} | {p['max_rel']:.2e} | {p['rel_l2']:.2e} | {p['worst_branch_rel_l2']:.2e} | "
                f"{p['tolerance_rel_l2']:g}" if "rel_l2" in p else "reference | | | | ")
        lines.append(f"| {name} | {p['median_step_s']:.3f} | {speed:.2f}x | {diff} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (a smoke test)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per path (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed steps per path (default 3; tiny 1)")
    parser.add_argument("--fp8", default="rowwise", help="rowwise | tensor | none")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the blocks of our fastest path (default: on the GPU, off with --tiny)")
    args = parser.parse_args()
    args.warmup = 1 if args.warmup is None else args.warmup
    args.reps = (1 if args.tiny else 3) if args.reps is None else args.reps
    args.compile = (not args.tiny) if args.compile is None else args.compile
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for the CPU smoke test", file=sys.stderr)
        return 2
    result = run(args)
    write_json(args.out, result)
    print(table(result))
    return 0 if all(p.get("within_tolerance", True) for p in result["paths"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
