"""Wan2.2-S2V-14B at real size on one GPU: time per denoising step, TFLOP/s, peak memory, VAE, projections.

Random bf16 weights at the released size (dim 5120, 40 layers, 16.3 B parameters) make the same kernels as
the real checkpoint, so the timings hold for it. One denoising step is the transformer forward(s) of one
sampler step for one official clip: infer_frames 80 -> 20 latent frames (wan/speech2video.py:
(80 + 3 + 73) // 4 - 19), plus one reference frame and the frame-packed motion tokens (73 motion frames).

Measured, each after warm-up with CUDA events (median of the timed repetitions):
* the bf16 (and FP8) matmul ceiling of this GPU, 8192^3;
* attention alone at the clip's sequence length for SDPA's default choice and the cuDNN, flash and
  memory-efficient backends; one big linear layer in bf16 and FP8;
* full steps: eager with the default and the fastest SDPA backend, CFG as two forwards and as one batched
  forward, torch.compile of the blocks (compile time reported apart), FP8 linear layers (eager and compiled),
  at 480x832 and 1280x720; the sequence-parallel path on one rank (NCCL) to show it runs on CUDA;
* the Wan2.1 VAE: streamed decode of one 480p clip (time to first chunk, total) and the motion-frame encode.
Then `projections` turns those numbers into the time for a 10 s 1080p30 clip under several settings; every
projection names the measurements it rests on.

    python perf/bench_generator.py --out perf/results/generator_h100.json
    python perf/bench_generator.py --tiny --out /tmp/tiny.json     # CPU smoke test (tiny model, 1 step)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny Wan fixtures (tests/wan_fixtures)

from wan_fixtures.tiny import TINY_S2V_CONFIG  # noqa: E402

from python_backends.generation.wan import S2V_14B, WanS2VTransformerConfig  # noqa: E402
from python_backends.generation.wan.common.fp8 import FP8Linear, convert_to_fp8  # noqa: E402
from python_backends.generation.wan.common.vae import WanVAE  # noqa: E402
from python_backends.generation.wan.s2v.model import (  # noqa: E402
    build_s2v_model,
    cfg_forward,
    count_parameters,
    framepack_grids,
    guide,
)
from python_backends.generation.wan.s2v.sequence_parallel import SequenceParallelS2V  # noqa: E402

log = logging.getLogger("bench_generator")

SCHEMA = "talkinghead.bench_generator/1"
GIB = 1024**3
INFER_FRAMES = S2V_14B.infer_frames  # 80 video frames per clip
MOTION_FRAMES = S2V_14B.motion_frames  # 73
GEN_FPS = S2V_14B.sample_fps  # 16: the rate the model is trained to generate
GUIDE = S2V_14B.sample_guide_scale
TEXT_TOKENS = 60  # a typical prompt; the model pads every prompt to text_len (512) anyway
# Real sizes: (height, width) in pixels. 1088 rows: 1080 is not a multiple of 16 (VAE stride 8 x patch 2).
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280), "1080p": (1088, 1920)}
TINY_RESOLUTIONS = {"480p": (64, 64), "720p": (64, 128), "1080p": (128, 128)}
TARGET = {"duration_s": 10.0, "fps": 30, "height": 1080, "width": 1920, "budget_s": 30.0}

ALL_CONFIGS = (
    "attention", "linear", "480p-eager", "480p-eager-best", "480p-cfg-batched", "480p-cfg-two-forwards", "sp-n1",
    "vae", "720p-eager", "480p-compile", "720p-compile", "480p-fp8", "480p-fp8-compile", "720p-fp8-compile",
)
COMPILE_CONFIGS = ("480p-compile", "720p-compile", "480p-fp8-compile", "720p-fp8-compile")
# Settings measured at both resolutions: (480p configuration, 720p configuration), same SDPA backend.
COMPILE_GUESS_S = 120.0  # budget estimate for compiling the block (one graph for all 40) on the GPU machine
VAE_GUESS_S = 30.0
SETTINGS = {"eager": ("480p-eager-best", "720p-eager"), "compile": ("480p-compile", "720p-compile"),
            "fp8-compile": ("480p-fp8-compile", "720p-fp8-compile")}


# ---- shapes and FLOPs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipShape:
    """Token counts of one clip at one resolution (what the transformer sees)."""

    name: str
    height: int
    width: int
    infer_frames: int
    latent_frames: int
    lat_h: int
    lat_w: int
    n_video: int
    n_ref: int
    n_motion: int

    @property
    def seq(self) -> int:
        return self.n_video + self.n_ref + self.n_motion


def clip_shape(cfg: WanS2VTransformerConfig, name: str, height: int, width: int,
               infer_frames: int = INFER_FRAMES) -> ClipShape:
    lat_h, lat_w = height // 8, width // 8
    _, ph, pw = cfg.patch_size
    per_frame = (lat_h // ph) * (lat_w // pw)
    latent_frames = infer_frames // 4  # official: (infer + 3 + 73) // 4 - (73 + 3) // 4 == infer // 4
    motion = sum((e[0] - s[0]) * e[1] * e[2]
                 for s, e, _ in framepack_grids(lat_h, lat_w, 2, cfg.framepack_drop_mode))
    return ClipShape(name, height, width, infer_frames, latent_frames, lat_h, lat_w, latent_frames * per_frame,
                     per_frame, motion)


def forward_flops(cfg: WanS2VTransformerConfig, shape: ClipShape, batch: int, injected: int) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one forward; elementwise work is not counted (MFU convention)."""
    d, f, s, t = cfg.dim, cfg.ffn_dim, shape.seq, cfg.text_len
    nv, frames, na = shape.n_video, shape.latent_frames, cfg.num_audio_token + 1
    block_linear = 2 * s * d * d * 6 + 2 * t * d * d * 2 + 2 * s * d * f * 2  # self qkvo, cross q/o; text k/v; ffn
    block_attn = 4 * s * s * d + 4 * s * t * d  # QK^T and PV: self, then text cross-attention
    inject_linear = 2 * nv * d * d * 2 + 2 * frames * na * d * d * 2 + 2 * frames * d * 2 * d  # q/o, k/v, AdaIN
    inject_attn = 4 * nv * na * d
    embed = (2 * t * (cfg.text_dim * d + d * d) + 2 * (nv + shape.n_ref) * d * cfg.in_dim * math.prod(cfg.patch_size)
             + 2 * nv * d * cfg.out_dim * math.prod(cfg.patch_size))
    linear = cfg.num_layers * block_linear + injected * inject_linear + embed
    attention = cfg.num_layers * block_attn + injected * inject_attn
    return {"linear": float(batch * linear), "attention": float(batch * attention),
            "total": float(batch * (linear + attention))}


def make_inputs(cfg: WanS2VTransformerConfig, shape: ClipShape, device: torch.device, seed: int) -> dict:
    """One clip's transformer inputs (B = 1) as the official pipeline builds them (pose latents all zero)."""
    g = torch.Generator(device=device).manual_seed(seed)
    lat = (shape.lat_h, shape.lat_w)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, device=device)

    return dict(
        latents=randn(1, cfg.in_dim, shape.latent_frames, *lat),
        timestep=torch.tensor([999.0], device=device),
        context=[randn(min(TEXT_TOKENS, cfg.text_len), cfg.text_dim)],
        ref_latents=randn(1, cfg.in_dim, 1, *lat),
        motion_latents=randn(1, 16, (MOTION_FRAMES + 3) // 4, *lat),
        audio=randn(1, cfg.audio_layers, cfg.audio_dim, 4 * shape.latent_frames),
    )


# ---- timing -------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / GIB, 3) if self.cuda else None

    def time(self, fn: Callable[[], object], warmup: int, reps: int) -> tuple[float | None, list[float], object]:
        """(wall seconds of the first untimed call or None, seconds of each timed call, the last output).

        CUDA events on a GPU. warmup 0 is for shapes an earlier configuration already ran.
        """
        first = None
        out: object = None
        for i in range(warmup):
            started = time.perf_counter()
            out = fn()
            self.sync()
            if i == 0:
                first = time.perf_counter() - started
        times = []
        for _ in range(reps):
            if self.cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                out = fn()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
        return first, times, out


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def guarded(entry: dict, clock: Clock, body: Callable[[dict], None]) -> dict:
    """Run body(entry); an OOM or any error is recorded in the entry instead of ending the run."""
    try:
        clock.reset_peak()
        body(entry)
        entry.setdefault("status", "ok")
        entry["peak_memory_gib"] = clock.peak_gib()
    except torch.cuda.OutOfMemoryError as exc:
        entry.update(status="oom", error=str(exc).splitlines()[0][:300], peak_memory_gib=clock.peak_gib())
        log.warning("%s: out of memory", entry.get("name"))
    except Exception as exc:  # noqa: BLE001 - one failing configuration must not lose the others
        entry.update(status="error", error=f"{type(exc).__name__}: {exc}"[:600])
        log.warning("%s failed: %s", entry.get("name"), entry["error"].splitlines()[0])
        log.debug("%s", traceback.format_exc())
    free_memory()
    return entry


# ---- ceilings and kernels -----------------------------------------------------------------------------------


def matmul_ceiling(device: torch.device, tiny: bool) -> dict:
    clock = Clock(device)
    n = 512 if tiny or device.type != "cuda" else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    _, times, _ = clock.time(lambda: a @ b, warmup=3, reps=10)
    out = {"shape": [n, n, n], "dtype": str(dtype).removeprefix("torch."),
           "median_ms": statistics.median(times) * 1e3,
           "tflops": 2 * n**3 / statistics.median(times) / 1e12}
    if device.type == "cuda" and torch.cuda.get_device_capability() >= (8, 9):
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.ones((), device=device)
        _, t8, _ = clock.time(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16,
                                                      use_fast_accum=True), warmup=3, reps=10)
        out["fp8_e4m3_tflops"] = 2 * n**3 / statistics.median(t8) / 1e12
    return out


def sdpa_backends() -> dict[str, list | None]:
    from torch.nn.attention import SDPBackend

    return {"default": None, "cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
            "efficient": [SDPBackend.EFFICIENT_ATTENTION]}


@contextlib.contextmanager
def sdpa_context(backend: str | None) -> Iterator[None]:
    if backend in (None, "default"):
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(sdpa_backends()[backend]):
        yield


def bench_attention(cfg: WanS2VTransformerConfig, shapes: list[ClipShape], device: torch.device,
                    dtype: torch.dtype) -> dict:
    """Self-attention alone at each clip's sequence length, in the model's [B, L, H, d] layout."""
    import torch.nn.functional as F

    clock = Clock(device)
    results: dict = {}
    for shape in shapes:
        g = torch.Generator(device=device).manual_seed(1)
        q, k, v = (torch.randn(1, shape.seq, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype,
                               generator=g).transpose(1, 2) for _ in range(3))
        flops = 4 * shape.seq**2 * cfg.dim
        per: dict = {}
        ref: list[torch.Tensor] = []  # the default backend's output

        def body(entry: dict, backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flops: float,
                 ref: list[torch.Tensor]) -> None:
            with sdpa_context(backend):
                _, times, out = clock.time(lambda: F.scaled_dot_product_attention(q, k, v), warmup=1, reps=3)
            out = out.float()
            if not ref:
                ref.append(out)
            med = statistics.median(times)
            entry.update(median_ms=med * 1e3, tflops=flops / med / 1e12,
                         rel_diff_vs_default=float((out - ref[0]).norm() / ref[0].norm()))

        for backend in sdpa_backends():
            per[backend] = guarded({"name": f"attention-{shape.name}-{backend}"}, clock,
                                   partial(body, backend=backend, q=q, k=k, v=v, flops=flops, ref=ref))
        results[shape.name] = {"seq": shape.seq, "heads": cfg.num_heads, "head_dim": cfg.head_dim, "backends": per}
        del q, k, v, ref
    return results


def fastest_backend(attention: dict, resolution: str) -> str:
    """The fastest SDPA backend at `resolution` whose output agrees with the default's (bf16 tolerance)."""
    backends = attention.get(resolution, {}).get("backends", {})
    ok = {name: b for name, b in backends.items() if b.get("status") == "ok" and b["rel_diff_vs_default"] < 1e-2}
    return min(ok, key=lambda name: ok[name]["median_ms"]) if ok else "default"


def bench_linear(cfg: WanS2VTransformerConfig, shape: ClipShape, device: torch.device, dtype: torch.dtype) -> dict:
    """The FFN up-projection ([seq, dim] x [dim, ffn]) in bf16 and in FP8 (with activation quantisation)."""
    clock = Clock(device)
    g = torch.Generator(device=device).manual_seed(2)
    layer = torch.nn.Linear(cfg.dim, cfg.ffn_dim, device=device, dtype=dtype).requires_grad_(False)
    x = torch.randn(shape.seq, cfg.dim, device=device, dtype=dtype, generator=g)
    flops = 2 * shape.seq * cfg.dim * cfg.ffn_dim
    variants: dict[str, Callable[[], object]] = {"bf16": lambda: layer(x)}
    for scaling in ("rowwise", "tensor"):
        for fast in (False, True):
            fp8 = FP8Linear.from_linear(layer, scaling, use_fast_accum=fast)
            variants[f"fp8-{scaling}{'-fast-accum' if fast else ''}"] = (lambda m=fp8: m(x))
    out: dict = {"shape": [shape.seq, cfg.dim, cfg.ffn_dim]}
    ref = layer(x).float()
    for name, fn in variants.items():
        entry: dict = {"name": f"linear-{name}"}

        def body(entry: dict, fn: Callable[[], object] = fn) -> None:
            _, times, y = clock.time(fn, warmup=3, reps=10)
            med = statistics.median(times)
            y = y.float()
            entry.update(median_ms=med * 1e3, tflops=flops / med / 1e12,
                         rel_error_vs_bf16=float((y - ref).norm() / ref.norm()))

        out[name] = guarded(entry, clock, body)
    return out


# ---- whole denoising steps ----------------------------------------------------------------------------------


@contextlib.contextmanager
def compiled_blocks(model: torch.nn.Module, mode: str | None) -> Iterator[None]:
    """Regional compilation: each transformer block compiled in place (one graph serves all 40 blocks)."""
    torch._dynamo.reset()
    for block in model.blocks:
        block.compile(mode=mode)
    try:
        yield
    finally:
        for block in model.blocks:
            block._compiled_call_impl = None  # what nn.Module.compile() set; back to eager


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                 cfg: WanS2VTransformerConfig) -> None:
        self.args, self.device, self.dtype, self.cfg = args, device, dtype, cfg
        self.clock = Clock(device)
        self.started = time.monotonic()
        self.model: torch.nn.Module | None = None
        self.injected = 0
        self.outputs: dict[str, torch.Tensor] = {}  # reference predictions for accuracy checks
        self.ceiling_tflops = 1.0
        self.fp8_ceiling_tflops: float | None = None
        self.seconds_per_flop = 0.0  # updated after every measured step (budget estimates)

    def shape(self, res: str) -> ClipShape:
        height, width = (TINY_RESOLUTIONS if self.args.tiny else RESOLUTIONS)[res]
        infer = 8 if self.args.tiny else INFER_FRAMES
        return clip_shape(self.cfg, res, height, width, infer)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fits_budget(self, estimate_s: float) -> bool:
        return self.elapsed() + estimate_s <= self.args.budget_s

    def estimate(self, flops: float, calls: int, compiled: bool) -> float:
        """Seconds a configuration should take, from the last measured step's seconds per FLOP."""
        return calls * flops * self.seconds_per_flop + (COMPILE_GUESS_S if compiled else 0.0)

    def step_entry(self, name: str, res: str, *, cfg_mode: str = "none", sdpa: str = "default",
                   compiled: bool = False, fp8: str | None = None, sp: bool = False, keep: str | None = None,
                   compare_to: str | None = None, warmup: int | None = None, reps: int | None = None) -> dict:
        """Time one denoising step of one clip at `res` under the given settings."""
        shape = self.shape(res)
        batch = 2 if cfg_mode == "batched" else 1
        forwards = 2 if cfg_mode != "none" else 1
        flops = forward_flops(self.cfg, shape, batch, self.injected)
        flops_step = {k: v * (2 if cfg_mode == "two-forwards" else 1) for k, v in flops.items()}
        warmup = self.args.warmup if warmup is None else warmup
        warmup += 1 if compiled else 0  # the first call compiles
        reps = self.args.reps if reps is None else min(reps, self.args.reps)
        entry: dict = {"name": name, "kind": "measured", "resolution": f"{shape.height}x{shape.width}",
                       "tokens": {"video": shape.n_video, "reference": shape.n_ref, "motion": shape.n_motion,
                                  "sequence": shape.seq}, "batch": batch, "cfg": cfg_mode, "forwards": forwards,
                       "sdpa": sdpa, "compile": compiled, "fp8": fp8, "sequence_parallel": sp,
                       "flops_per_step": flops_step, "warmup": warmup, "reps": reps}
        estimate = self.estimate(flops_step["total"], warmup + reps, compiled)
        if not self.fits_budget(estimate):
            entry.update(status="skipped", reason=f"would end past the time budget ({self.args.budget_s:.0f} s): "
                                                  f"{self.elapsed():.0f} s used, about {estimate:.0f} s needed")
            log.warning("%s skipped: %s", name, entry["reason"])
            return entry
        log.info("running %s (sequence %d tokens)", name, shape.seq)

        def body(entry: dict) -> None:
            model = self.model
            inputs = make_inputs(self.cfg, shape, self.device, seed=3)
            null = [torch.randn(min(TEXT_TOKENS, self.cfg.text_len), self.cfg.text_dim, device=self.device,
                                generator=torch.Generator(device=self.device).manual_seed(4))]
            runner = model
            group_made = False
            if sp:
                group_made = init_single_rank_group(self.device)
                runner = SequenceParallelS2V(model, shard_single_rank=True)
                entry["sp_ranks"] = runner.group.world
                entry["sp_backend"] = str(torch.distributed.get_backend()) if runner.sharded else None

            def step() -> torch.Tensor:
                with sdpa_context(sdpa):
                    if cfg_mode == "none":
                        return runner(**inputs)
                    if cfg_mode == "two-forwards":
                        cond = runner(**inputs)
                        uncond = runner(**{**inputs, "context": null, "audio": inputs["audio"] * 0.0})
                        return guide(cond, uncond, GUIDE)
                    cond, uncond = cfg_forward(runner, context_null=null, **inputs)
                    return guide(cond, uncond, GUIDE)

            try:
                with compiled_blocks(model, None) if compiled else contextlib.nullcontext():
                    if compiled:
                        from torch._dynamo.utils import counters

                        counters.clear()
                    first, times, out = self.clock.time(step, warmup=warmup, reps=reps)
                    if compiled:
                        entry["dynamo_unique_graphs"] = int(counters["stats"]["unique_graphs"])
            finally:
                if group_made:
                    torch.distributed.destroy_process_group()
            med = statistics.median(times)
            entry.update(first_call_s=first, times_s=times, median_step_s=med,
                         tflops=flops_step["total"] / med / 1e12,
                         fraction_of_bf16_ceiling=flops_step["total"] / med / 1e12 / self.ceiling_tflops)
            if self.fp8_ceiling_tflops and fp8:
                entry["fraction_of_fp8_ceiling"] = entry["tflops"] / self.fp8_ceiling_tflops
            if compiled and first is not None:
                entry["compile_s"] = max(0.0, first - med)
            self.seconds_per_flop = med / flops_step["total"]
            entry["finite"] = bool(torch.isfinite(out).all())
            if keep:
                self.outputs[keep] = out.detach().float().clone()
            if compare_to and compare_to in self.outputs:
                ref = self.outputs[compare_to]
                entry[f"rel_error_vs_{compare_to}"] = float((out.float() - ref).norm() / ref.norm())
                entry[f"max_abs_diff_vs_{compare_to}"] = float((out.float() - ref).abs().max())

        return guarded(entry, self.clock, body)

    def vae_entry(self, dtype: torch.dtype) -> dict:
        """Streamed decode of one 480p clip (reference + 20 latent frames -> 81 frames) and the motion encode."""
        shape = self.shape("480p")
        name = str(dtype).removeprefix("torch.")
        entry: dict = {"name": f"vae-480p-{name}", "kind": "measured", "resolution": f"{shape.height}x{shape.width}",
                       "dtype": name}
        if not self.fits_budget(VAE_GUESS_S):
            entry.update(status="skipped", reason=f"would end past the time budget ({self.args.budget_s:.0f} s)")
            return entry

        def body(entry: dict) -> None:
            dim = 8 if self.args.tiny else 96
            torch.manual_seed(0)
            vae = WanVAE(dim=dim).to(self.device, dtype).eval().requires_grad_(False)
            g = torch.Generator(device=self.device).manual_seed(5)
            latent_frames = shape.latent_frames + 1
            z = torch.randn(1, 16, latent_frames, shape.lat_h, shape.lat_w, device=self.device, generator=g)
            for _ in vae.decode_chunks(z[:, :, :2]):  # warm-up: both chunk shapes (1 frame, then 4)
                pass
            runs = []
            for _ in range(1):  # one streamed pass: seconds long, little spread
                self.clock.sync()
                t0 = time.perf_counter()
                first = None
                frames = 0
                for chunk in vae.decode_chunks(z):
                    self.clock.sync()
                    first = first if first is not None else time.perf_counter() - t0
                    frames += chunk.shape[2]
                runs.append({"first_chunk_s": first, "total_s": time.perf_counter() - t0, "frames": frames})
            entry["decode"] = {"latent_frames": latent_frames, "frames": runs[0]["frames"], "runs": runs,
                               "first_chunk_s": statistics.median(r["first_chunk_s"] for r in runs),
                               "total_s": statistics.median(r["total_s"] for r in runs)}
            motion = 1 + 4 * ((MOTION_FRAMES - 1) // 4) if not self.args.tiny else 5
            video = torch.rand(1, 3, motion, shape.height, shape.width, device=self.device, generator=g) * 2 - 1
            vae.encode(video[:, :, :5])  # warm-up
            self.clock.sync()
            t0 = time.perf_counter()
            vae.encode(video)
            self.clock.sync()
            entry["encode_motion"] = {"frames": motion, "total_s": time.perf_counter() - t0}
            entry["official_note"] = ("the official pipeline decodes every clip after the first from its 19 motion "
                                      "latents + 20 new ones (39 latent frames) and re-encodes the last 73 frames "
                                      "for the next clip; it runs the VAE in float32")

        return guarded(entry, self.clock, body)


def init_single_rank_group(device: torch.device) -> bool:
    """A one-process group (NCCL on CUDA, gloo on CPU) so the sharded path runs its real collectives."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": torch.device("cuda", torch.cuda.current_device())} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, **kwargs)
    return True


# ---- projections --------------------------------------------------------------------------------------------


def _ok(configs: list[dict], name: str) -> dict | None:
    entry = next((c for c in configs if c["name"] == name), None)
    return entry if entry and entry.get("status") == "ok" else None


def _fit_step_model(low: dict, high: dict) -> tuple[float, float] | None:
    """Seconds per linear FLOP and per attention FLOP from two resolutions of the same settings."""
    a1, b1, t1 = low["flops_per_step"]["linear"], low["flops_per_step"]["attention"], low["median_step_s"]
    a2, b2, t2 = high["flops_per_step"]["linear"], high["flops_per_step"]["attention"], high["median_step_s"]
    det = a1 * b2 - a2 * b1
    if abs(det) < 1e-30:
        return None
    per_lin, per_attn = (t1 * b2 - t2 * b1) / det, (a1 * t2 - a2 * t1) / det
    return (per_lin, per_attn) if per_lin > 0 and per_attn > 0 else None


def projections(result: dict, cfg: WanS2VTransformerConfig, injected: int, tiny: bool) -> dict:
    """Time for a 10 s 1080p30 clip under several settings, from the measured numbers only."""
    configs = result["configs"]
    res = TINY_RESOLUTIONS if tiny else RESOLUTIONS
    infer = 8 if tiny else INFER_FRAMES
    shapes = {name: clip_shape(cfg, name, *hw, infer) for name, hw in res.items()}
    frames_16 = math.ceil(TARGET["duration_s"] * GEN_FPS)
    clips_16 = math.ceil(frames_16 / INFER_FRAMES)
    clips_30 = math.ceil(TARGET["duration_s"] * TARGET["fps"] / INFER_FRAMES)
    notes = [
        f"a 10 s clip at the model's {GEN_FPS} fps is {frames_16} frames = {clips_16} clips of {INFER_FRAMES} "
        f"frames; natively at 30 fps it is {clips_30} clips",
        "every clip is denoised in full (the motion frames condition the next clip; clips cannot overlap)",
        "text encoder, wav2vec2 and the reference-image encode are left out (seconds at most, once per request)",
        "upscaling to 1080p and 16 -> 30 fps interpolation were not measured: each scenario reports the time "
        "left for them inside the 30 s budget",
    ]

    def step_time(settings: str, res_name: str, batch: int = 1) -> tuple[float, str] | None:
        """Seconds per step (one forward, or one batched CFG forward) for `settings` at `res_name`, and how."""
        low_name, high_name = SETTINGS[settings]
        low, high = _ok(configs, low_name), _ok(configs, high_name)
        flops = forward_flops(cfg, shapes[res_name], 1, injected)
        if res_name == "480p" and low:
            t, how = low["median_step_s"], f"measured: {low_name}"
        elif res_name == "720p" and high:
            t, how = high["median_step_s"], f"measured: {high_name}"
        elif low and high and (fit := _fit_step_model(low, high)):
            t = fit[0] * flops["linear"] + fit[1] * flops["attention"]
            how = f"projected: t = a*linear_flops + b*attention_flops fitted to {low_name} and {high_name}"
        elif low or high:
            ref = high or low
            t = ref["median_step_s"] * flops["total"] / ref["flops_per_step"]["total"]
            how = f"projected: {ref['name']} scaled by FLOPs"
        else:
            return None
        if batch == 2:
            single, batched = _ok(configs, "480p-eager-best"), _ok(configs, "480p-cfg-batched")
            if not (single and batched):
                return None
            ratio = batched["median_step_s"] / single["median_step_s"]
            t *= ratio
            how += f"; x{ratio:.3f} for CFG batched in one forward (measured at 480p, eager)"
        return t, how

    def vae_time(res_name: str, clips: int, dtype: str) -> tuple[float, str] | None:
        measured = [c for c in result.get("vae", []) if c.get("status") == "ok"]
        vae = next((c for c in measured if c["dtype"] == dtype), measured[0] if measured else None)
        if vae is None:
            return None
        pixels = res[res_name][0] * res[res_name][1] / (res["480p"][0] * res["480p"][1])
        first_clip = vae["decode"]["total_s"]  # reference + new latent frames
        new_latents = infer // 4
        later = first_clip * ((MOTION_FRAMES + 3) // 4 + new_latents) / (1 + new_latents)
        total = (first_clip + (clips - 1) * (later + vae["encode_motion"]["total_s"])) * pixels
        how = (f"measured {vae['dtype']} 480p decode of {1 + new_latents} latent frames (first clip), scaled to "
               f"{(MOTION_FRAMES + 3) // 4 + new_latents} for later clips, plus the measured motion encode per "
               f"later clip")
        return total, how + ("" if res_name == "480p" else f"; x{pixels:.2f} for the pixel count")

    def scenario(name: str, settings: str, res_name: str, steps: int, cfg_on: bool, fps: int, note: str) -> dict:
        clips = clips_16 if fps == GEN_FPS else clips_30
        official = settings == "eager"
        step = step_time(settings, res_name, 2 if cfg_on else 1)
        dec = vae_time(res_name, clips, "float32" if official else "bfloat16")
        out: dict = {"name": name, "kind": "projection", "settings": settings, "resolution": res_name,
                     "fps_generated": fps, "clips": clips, "steps": steps, "cfg": cfg_on, "note": note}
        if step is None or dec is None:
            out["status"] = "missing measurements"
            return out
        transformer = clips * steps * step[0]
        out.update(status="ok", step_s=step[0], step_basis=step[1], transformer_s=transformer, vae_s=dec[0],
                   vae_basis=dec[1], total_s=transformer + dec[0],
                   fits_budget=transformer + dec[0] <= TARGET["budget_s"],
                   left_for_upscale_and_interpolation_s=TARGET["budget_s"] - transformer - dec[0])
        return out

    fastest = "fp8-compile"
    upscale = "then 2.25x upscale to 1080p and 16 -> 30 fps interpolation"
    distilled = "LightX2V-style step/CFG distillation (needs distilled weights or a LoRA)"
    scenarios = [
        scenario("official: 40 steps + CFG, native 1080p at 30 fps", "eager", "1080p", 40, True, TARGET["fps"],
                 "the official sampler at the target size and rate (1080p is beyond the official sizes)"),
        scenario("official: 40 steps + CFG, 720p at 16 fps, then upscale + interpolate", "eager", "720p", 40, True,
                 GEN_FPS, "largest official size, official settings, eager bf16, float32 VAE"),
        scenario("40 steps + CFG, 720p at 16 fps, fastest settings", fastest, "720p", 40, True, GEN_FPS,
                 "FP8 linears + compiled blocks, bf16 VAE"),
        scenario("distilled 8 steps, no CFG, 720p at 16 fps, fastest settings", fastest, "720p", 8, False, GEN_FPS,
                 distilled),
        scenario("distilled 4 steps, no CFG, 720p at 16 fps, fastest settings", fastest, "720p", 4, False, GEN_FPS,
                 distilled),
        scenario("distilled 8 steps, no CFG, 480p at 16 fps, fastest settings", fastest, "480p", 8, False, GEN_FPS,
                 f"{distilled}; {upscale}"),
        scenario("distilled 4 steps, no CFG, 480p at 16 fps, fastest settings", fastest, "480p", 4, False, GEN_FPS,
                 f"{distilled}; {upscale}"),
    ]
    # The baseline shape: a Wan 14B step at 832x480x81 frames (21 x 1560 = 32,760 tokens, no CFG, no
    # reference/motion tokens, no audio injection), for comparison with its 3.3 s eager figure and 2.0 s target.
    baseline_shape = ClipShape("t2v-480p-81f", 480, 832, 81, 21, 60, 104, 21 * 1560, 0, 0)
    baseline_flops = forward_flops(cfg, baseline_shape, 1, 0)
    baseline: dict = {"kind": "projection", "tokens": baseline_shape.n_video, "issue_eager_s": 3.3,
                      "issue_target_s": 2.0}
    for settings, (low_name, high_name) in SETTINGS.items():
        low, high = _ok(configs, low_name), _ok(configs, high_name)
        fit = _fit_step_model(low, high) if low and high else None
        if fit and not tiny:
            baseline[f"{settings}_s"] = fit[0] * baseline_flops["linear"] + fit[1] * baseline_flops["attention"]
    baseline["basis"] = "t = a*linear_flops + b*attention_flops fitted to each setting's 480p and 720p steps"
    return {"target": TARGET, "notes": notes, "tiny_model_numbers_are_meaningless": tiny,
            "tokens": {name: asdict(s) | {"seq": s.seq} for name, s in shapes.items()}, "scenarios": scenarios,
            "issue_baseline_shape": baseline}


# ---- the run ------------------------------------------------------------------------------------------------


def environment(device: torch.device, argv: list[str]) -> dict:
    env = {"command": " ".join([Path(sys.executable).name, *argv]), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                   multiprocessors=props.multi_processor_count, capability=list(torch.cuda.get_device_capability()),
                   cudnn=torch.backends.cudnn.version())
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (rewritten as results arrive)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model, 1 timed step (CPU smoke test)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated subset of {','.join(ALL_CONFIGS)} (default: all; --tiny leaves "
                             f"out the compiled ones)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per configuration (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per configuration (default 3; tiny 1)")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="skip a configuration whose estimated time would end the run past this many seconds "
                             "(results so far are kept)")
    parser.add_argument("--fp8-scaling", choices=("rowwise", "tensor"), default="rowwise")
    parser.add_argument("--fp8-fast-accum", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    chosen = args.configs.split(",") if args.configs else [
        c for c in ALL_CONFIGS if not (args.tiny and c in COMPILE_CONFIGS)]
    unknown = sorted(set(chosen) - set(ALL_CONFIGS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {', '.join(ALL_CONFIGS)}")
    args.chosen = chosen
    args.warmup = args.warmup if args.warmup is not None else 1
    args.reps = args.reps if args.reps is not None else (1 if args.tiny else 3)
    return args


def summary_rows(result: dict) -> list[str]:
    rows = [f"{'configuration':<24} {'status':<8} {'step s':>8} {'TFLOP/s':>8} {'of ceil':>8} {'peak GiB':>9}"]
    for c in result["configs"]:
        if c.get("status") == "ok":
            rows.append(f"{c['name']:<24} {'ok':<8} {c['median_step_s']:>8.3f} {c['tflops']:>8.1f} "
                        f"{c['fraction_of_bf16_ceiling']:>8.1%} {c['peak_memory_gib'] or 0:>9.1f}")
        else:
            rows.append(f"{c['name']:<24} {c.get('status', '?'):<8}")
    for v in result.get("vae", []):
        if v.get("status") == "ok":
            rows.append(f"vae {v['dtype']} decode 480p: first chunk {v['decode']['first_chunk_s']:.3f} s, total "
                        f"{v['decode']['total_s']:.2f} s; encode 73 frames {v['encode_motion']['total_s']:.2f} s")
    for s in result.get("projections", {}).get("scenarios", []):
        if s.get("status") == "ok":
            rows.append(f"[projection] {s['name']}: {s['total_s']:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = TINY_S2V_CONFIG if args.tiny else S2V_14B.transformer
    bench = Bench(args, device, dtype, cfg)
    result: dict = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tiny": args.tiny,
                    "environment": environment(device, ["perf/bench_generator.py", *argv]),
                    "model": {"name": "tiny" if args.tiny else "Wan2.2-S2V-14B", "weights": "random",
                              "dtype": str(dtype).removeprefix("torch."), "dim": cfg.dim, "layers": cfg.num_layers,
                              "heads": cfg.num_heads, "ffn_dim": cfg.ffn_dim, "parameters": count_parameters(cfg)},
                    "clip": {"infer_frames": 8 if args.tiny else INFER_FRAMES, "motion_frames": MOTION_FRAMES,
                             "fps": GEN_FPS},
                    "settings": {"warmup": args.warmup, "reps": args.reps, "fp8_scaling": args.fp8_scaling,
                                 "fp8_fast_accum": args.fp8_fast_accum, "configs": args.chosen},
                    "configs": [], "vae": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["elapsed_s"] = time.monotonic() - bench.started
        args.out.write_text(json.dumps(result, indent=1, default=str))

    want = set(args.chosen)
    with torch.inference_mode():
        result["ceiling"] = matmul_ceiling(device, args.tiny)
        bench.ceiling_tflops = result["ceiling"]["tflops"]
        bench.fp8_ceiling_tflops = result["ceiling"].get("fp8_e4m3_tflops")
        save()
        shapes = [bench.shape("480p"), bench.shape("720p")]
        if "attention" in want:
            result["attention"] = bench_attention(cfg, shapes, device, dtype)
            save()
        if "linear" in want and device.type == "cuda":
            result["linear"] = bench_linear(cfg, shapes[0], device, dtype)
            save()
        best = fastest_backend(result.get("attention", {}), "480p") if device.type == "cuda" else "default"
        result["sdpa_fastest_480p"] = best

        t0 = time.perf_counter()
        bench.model = build_s2v_model(cfg, device=device, dtype=dtype, seed=0)
        bench.clock.sync()
        bench.injected = len(bench.model.audio_injector.injected_block_id)
        result["model"]["build_s"] = time.perf_counter() - t0
        result["model"]["weights_gib"] = sum(p.numel() * p.element_size() for p in bench.model.parameters()) / GIB

        def add(entry: dict) -> None:
            result["configs"].append(entry)
            save()

        fp8 = f"{args.fp8_scaling}{'+fast-accum' if args.fp8_fast_accum else ''}"

        def to_fp8() -> None:
            """Swap the block projections for FP8 ones (in place: every later configuration runs FP8)."""
            if "fp8_conversion" in result:
                return
            t0 = time.perf_counter()
            converted = convert_to_fp8(bench.model, args.fp8_scaling, use_fast_accum=args.fp8_fast_accum)
            bench.clock.sync()
            free_memory()
            result["fp8_conversion"] = {
                "layers": converted, "scaling": args.fp8_scaling, "fast_accum": args.fp8_fast_accum,
                "seconds": time.perf_counter() - t0,
                "weights_gib": sum(t.numel() * t.element_size()
                                   for t in [*bench.model.parameters(), *bench.model.buffers()]) / GIB}

        step = bench.step_entry
        # Most telling first: a run cut short by its budget keeps the baseline, CFG, SP and VAE numbers.
        plan: dict[str, Callable[[], dict]] = {
            "480p-eager": lambda: step("480p-eager", "480p", keep="bf16"),
            "480p-eager-best": lambda: step("480p-eager-best", "480p", sdpa=best, keep="bf16_best",
                                            compare_to="bf16"),
            "480p-cfg-batched": lambda: step("480p-cfg-batched", "480p", cfg_mode="batched", sdpa=best, reps=2),
            "480p-cfg-two-forwards": lambda: step("480p-cfg-two-forwards", "480p", cfg_mode="two-forwards",
                                                  sdpa=best, warmup=0, reps=2),
            "sp-n1": lambda: step("sp-n1", "480p", sdpa=best, sp=True, compare_to="bf16_best", warmup=0, reps=2),
            "vae": lambda: {},  # two entries, below
            "720p-eager": lambda: step("720p-eager", "720p", sdpa=best, reps=2),
            "480p-compile": lambda: step("480p-compile", "480p", sdpa=best, compiled=True, compare_to="bf16_best"),
            "720p-compile": lambda: step("720p-compile", "720p", sdpa=best, compiled=True, reps=2),
            "480p-fp8": lambda: step("480p-fp8", "480p", sdpa=best, fp8=fp8, compare_to="bf16_best"),
            "480p-fp8-compile": lambda: step("480p-fp8-compile", "480p", sdpa=best, fp8=fp8, compiled=True,
                                             compare_to="bf16_best"),
            "720p-fp8-compile": lambda: step("720p-fp8-compile", "720p", sdpa=best, fp8=fp8, compiled=True,
                                             reps=2),
        }
        for key, run in plan.items():
            if key not in want:
                continue
            if key == "480p-eager-best" and best == "default" and _ok(result["configs"], "480p-eager"):
                # the default backend is the fastest: the same measurement, not repeated
                add({**_ok(result["configs"], "480p-eager"), "name": key, "note": "same as 480p-eager"})
                bench.outputs["bf16_best"] = bench.outputs["bf16"]
                continue
            if key == "vae":
                # the model's dtype (bf16 on GPU), and float32 as the official pipeline runs the VAE
                for vae_dtype in dict.fromkeys([dtype, torch.float32]):
                    result["vae"].append(bench.vae_entry(vae_dtype))
                    save()
                continue
            if "fp8" in key:
                to_fp8()
            add(run())

    result["projections"] = projections(result, cfg, bench.injected, args.tiny)
    save()
    for row in summary_rows(result):
        print(row)
    return result


if __name__ == "__main__":
    main()
