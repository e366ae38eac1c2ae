"""8-bit attention (our Triton kernel, wan/fp8_attention.py) against SDPA at Wan's shapes: accuracy, speed, DiT effect.

One run on a Hopper GPU (H200; about 3-4 minutes, most of it compiling and autotuning 4 kernel variants):

0. kernel checks at 1,000 tokens: each variant against its torch emulation on the GPU, one under torch.compile;
1. accuracy, per shape and input kind, on fresh inputs each time: a float32 reference (TF32 off) for a subset of
   queries; SDPA cuDNN and flash (bf16) and every kernel variant (ATTENTION_BACKENDS: Q.K^T in e4m3 or int8, P.V
   in e4m3 or bf16) against it (max abs error, ||out - ref|| / ||ref||) and against cuDNN (on all queries: this
   also catches unwritten output, as the kernel writes into an output filled with NaN). Input kinds: `gaussian` (bf16
   N(0, 1)) and `wan_like` (what the DiT's self-attention sees: q and k RMS-normed over all heads with per-channel
   gains, 1 % of channels 8x, K with a per-channel offset, token clusters so attention concentrates, RoPE over the
   (frame, height, width) grid; V heavy-tailed with 0.1 % massive tokens). Ablation: each variant without K
   smoothing / Q-K channel balancing (wan_like, first shape).
2. speed per shape: median of triton.testing.do_bench (CUDA events, L2 flushed) for cuDNN, flash and each variant
   as the model calls it (quantisation of q, k, v included: `total`), and split into `quantize` and `kernel`;
   TFLOP/s = 4 L^2 d heads / time. cuDNN is timed at the start and the end (the spread is the noise).
3. one DiT block at real size: WanS2VTransformer with --blocks of the 40 blocks (dim 5120, 40 heads, random bf16
   weights, audio injected after block 0), one 480p clip's tokens (35,074): the forward's output with each
   variant as the self-attention against SDPA cuDNN (and against the same model in float32, for scale); the
   self-attention inputs of block 0 (accuracy as in 1); and the time of one block with each attention.

Shapes: `480p` = the S2V clip at 832x480 (31,200 video + 1,560 reference + 2,314 motion tokens = 35,074, the
toolchain table's shape) and `384p` = 704x384, 21 latent frames (1,056 tokens a frame: 22,176). 1 x 40 x d 128.

    PYTHONUNBUFFERED=1 python3 perf/bench_fp8_attention.py --out $OUT/fp8_attention_h200.json
    python perf/bench_fp8_attention.py --tiny-cpu --out /tmp/fp8_attention_cpu.json   # CPU smoke run (emulation)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))  # the tiny Wan fixtures (tests/wan_fixtures)
sys.path.insert(0, str(ROOT / "perf"))

from bench_generator import clip_shape, make_inputs, sdpa_context  # noqa: E402
from bench_generator import environment as base_environment  # noqa: E402
from wan_fixtures.tiny import TINY_S2V_CONFIG  # noqa: E402

from python_backends.generation.wan import WanS2VTransformerConfig, build_s2v_model  # noqa: E402
from python_backends.generation.wan.common.attention import (  # noqa: E402
    ATTENTION_BACKENDS,
    SDPA,
    attention,
    attention_function,
)
from python_backends.generation.wan.common.fp8_attention import emulate_fp8_attention, unavailable_reason  # noqa: E402
from python_backends.generation.wan.common.transformer import apply_rope, rope_cos_sin  # noqa: E402

SCHEMA = "talkinghead.bench_fp8_attention/1"
VARIANTS = {name: modes for name, modes in ATTENTION_BACKENDS.items() if modes is not None}
SDPA_BACKENDS = ("cudnn", "flash")
# name -> (tokens, (frames, height, width) token grid for the rotary positions)
SHAPES = {"480p": (35074, (23, 30, 52)), "384p": (22176, (21, 24, 44))}
TINY_SHAPES = {"tiny-a": (300, (3, 10, 10)), "tiny-b": (200, (2, 10, 10))}
ABLATIONS = {"no_balance": dict(balance_qk=False), "no_smoothing": dict(smooth_k=False, balance_qk=False)}
QUERY_SUBSET = 2048  # queries with a float32 reference


# ---- inputs -------------------------------------------------------------------------------------------------


def gaussian_qkv(length: int, heads: int, head_dim: int, *, device: torch.device, dtype: torch.dtype,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(1, length, heads, head_dim, device=device, generator=g).to(dtype) for _ in range(3))


def wan_like_qkv(length: int, heads: int, head_dim: int, grid: tuple[int, int, int], *, device: torch.device,
                 dtype: torch.dtype, seed: int, clusters: int = 64,
                 strength: float = 1.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [1, length, heads, head_dim] with the structure of the DiT's self-attention inputs (module doc).

    Each token belongs to one of `clusters` groups sharing a direction (`strength` times the noise), so a query
    attends mostly to its group. q and k are normalised over all heads (Wan's RMSNorm over the full width) and
    scaled by per-channel gains ~ 1.0 + 0.3 |N(0, 1)|, 1 % of them 8x larger; k gets a per-channel offset before
    the norm. RoPE uses the (frame, row, column) positions of `grid` (its first `length` tokens).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    dim = heads * head_dim

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, device=device, generator=g)

    centers = randn(clusters, dim)
    group = torch.randint(clusters, (length,), device=device, generator=g)

    def normed(offset: torch.Tensor | float) -> torch.Tensor:
        x = strength * centers[group] + randn(length, dim) + offset
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        gain = 1.0 + 0.3 * randn(dim).abs()
        gain[torch.randperm(dim, device=device, generator=g)[: dim // 100]] *= 8
        return (x * gain).view(1, length, heads, head_dim)

    q, k = normed(0.0), normed(randn(dim))
    v = (randn(length, dim) * torch.exp(0.5 * randn(length, 1))).view(1, length, heads, head_dim)
    v[:, torch.randperm(length, device=device, generator=g)[: max(1, length // 1000)]] *= 10
    f, h, w = grid
    positions = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"),
                            dim=-1).view(-1, 3)[:length]
    if positions.shape[0] < length:
        raise ValueError(f"grid {grid} has fewer than {length} positions")
    cos, sin = (t.to(device) for t in rope_cos_sin(positions, head_dim))
    return apply_rope(q, cos, sin).to(dtype), apply_rope(k, cos, sin).to(dtype), v.to(dtype)


# ---- measuring ----------------------------------------------------------------------------------------------


class Runner:
    """Runs and times attention implementations on one device (the kernel on CUDA, its emulation on the CPU)."""

    def __init__(self, device: torch.device, warmup_ms: int, rep_ms: int) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms
        if self.cuda:
            from python_backends.generation.wan import fp8_attention_triton

            self.kernels = fp8_attention_triton

    def sdpa(self, backend: str) -> Callable:
        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with sdpa_context(backend if self.cuda else None):
                return attention(q, k, v)

        return run

    def variant(self, name: str, poison: bool = False, **options: bool) -> Callable:
        """The kernel variant `name`; poison: into an output filled with NaN first, so that an element nothing
        wrote shows up (not for timing: the fill is a pass over the output)."""
        qk, pv = VARIANTS[name]
        if not self.cuda:
            return lambda q, k, v: emulate_fp8_attention(q, k, v, qk=qk, pv=pv, **options).to(v.dtype)

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = torch.full(q.shape, float("nan"), dtype=v.dtype, device=q.device) if poison else None
            return self.kernels.fp8_attention_triton(q, k, v, qk=qk, pv=pv, out=out, **options)

        return run

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def tuned_keys(self) -> int:
        return self.kernels.tuned_keys() if self.cuda else 0

    def time_ms(self, fn: Callable[[], object]) -> float:
        """Median milliseconds of fn(); do_bench (CUDA events, L2 flushed between calls) on a GPU."""
        if self.cuda:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))
        t0 = time.perf_counter()  # the CPU smoke run: one call, the time says nothing about the kernel
        fn()
        return (time.perf_counter() - t0) * 1e3


def query_subset(length: int, count: int, device: torch.device, seed: int) -> torch.Tensor:
    """Sorted random query indices, always with the last one (the partial last query block)."""
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(length - 1, generator=g)[: max(0, min(count, length) - 1)]
    return torch.cat([picked, torch.tensor([length - 1])]).sort().values.to(device)


@torch.no_grad()
def reference_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                   heads_per_chunk: int = 8) -> torch.Tensor:
    """Float32 attention (no TF32) for the queries `rows`: [1, len(rows), H, D]."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = []
        scale = 1 / math.sqrt(q.shape[-1])
        for h0 in range(0, q.shape[2], heads_per_chunk):
            hs = slice(h0, h0 + heads_per_chunk)
            qh = q[:, rows, hs].float().transpose(1, 2)
            kh, vh = k[:, :, hs].float().transpose(1, 2), v[:, :, hs].float().transpose(1, 2)
            out.append((torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1) @ vh).transpose(1, 2))
        return torch.cat(out, dim=2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = out.double() - ref.double()
    return {"max_abs": float(diff.abs().max()), "rel_l2": float(diff.norm() / ref.double().norm()),
            "finite": bool(torch.isfinite(out).all())}


def guarded(entry: dict, body: Callable[[dict], None]) -> dict:
    """Run body(entry); any failure (compile error, OOM, wrong result) is recorded and the run goes on."""
    try:
        body(entry)
        entry.setdefault("status", "ok")
    except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others
        entry.update(status="error", error=f"{type(exc).__name__}: {exc}"[:800],
                     traceback=traceback.format_exc()[-1500:])
        print(f"  ! {entry.get('name')}: {entry['error'].splitlines()[0][:200]}", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return entry


# ---- sections -----------------------------------------------------------------------------------------------


def accuracy(runner: Runner, shape: str, kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             seed: int, with_ablations: bool) -> list[dict]:
    """Every implementation on (q, k, v) against the float32 reference rows and against cuDNN (all rows)."""
    rows = query_subset(q.shape[1], QUERY_SUBSET, q.device, seed)
    ref = reference_rows(q, k, v, rows)
    candidates: dict[str, Callable] = {f"sdpa_{b}": runner.sdpa(b) for b in SDPA_BACKENDS}
    candidates.update({name: runner.variant(name, poison=True) for name in VARIANTS})
    if with_ablations:
        candidates.update({f"{name}:{label}": runner.variant(name, poison=True, **options)
                           for name in VARIANTS for label, options in ABLATIONS.items()})
    entries, baseline = [], None
    for name, fn in candidates.items():
        entry = {"name": name, "shape": shape, "input": kind, "tokens": q.shape[1], "reference_queries": len(rows)}

        def body(entry: dict, fn: Callable = fn) -> None:
            nonlocal baseline
            tuned = runner.tuned_keys()
            t0 = time.perf_counter()
            out = fn(q, k, v)
            runner.sync()
            entry["first_call_s"] = time.perf_counter() - t0
            if runner.tuned_keys() > tuned:  # this call compiled and autotuned the kernel for this shape
                entry["autotune"] = runner.kernels.last_autotune()
            entry["vs_float32"] = errors(out[:, rows], ref)
            if baseline is None:
                baseline = out
            else:
                entry["vs_sdpa_cudnn"] = errors(out, baseline)
            if not entry["vs_float32"]["finite"]:
                entry["status"] = "wrong_result"

        entries.append(guarded(entry, body))
        row = entries[-1]
        if row["status"] == "ok":
            print(f"  {shape} {kind:<8} {name:<40} max_abs {row['vs_float32']['max_abs']:.2e} "
                  f"rel {row['vs_float32']['rel_l2']:.2e}", flush=True)
    return entries


def kernel_checks(runner: Runner, heads: int, head_dim: int, seed: int) -> list[dict]:
    """On the GPU, at 1,000 tokens: each variant, with 128- and 64-key blocks, against its torch emulation with
    the same blocks (P is rounded relative to the running maximum, so the block size moves P's e4m3 rounding: about
    1 % between the two), and one through torch.compile(fullgraph=True) as the engine's `compile` option runs it."""
    kern = runner.kernels
    q, k, v = gaussian_qkv(1000, heads, head_dim, device=runner.device, dtype=torch.bfloat16, seed=seed)
    entries = []
    for (name, (qk, pv)), config in itertools.product(VARIANTS.items(), (kern.KernelConfig(128, 128, 8, 3),
                                                                         kern.KernelConfig(128, 64, 8, 3))):
        def body(entry: dict, qk: str = qk, pv: str = pv, config=config) -> None:
            out = torch.full(q.shape, float("nan"), dtype=v.dtype, device=q.device)
            kern.fp8_attention_triton(q, k, v, qk=qk, pv=pv, config=config, out=out)
            expected = emulate_fp8_attention(q, k, v, qk=qk, pv=pv, block_n=config.block_n)
            entry["vs_emulation"] = errors(out, expected)
            # bf16 output rounding (~2e-3) and a few P roundings moved by the GPU's FMA contraction
            if entry["vs_emulation"]["rel_l2"] > 1e-2 or not entry["vs_emulation"]["finite"]:
                entry["status"] = "wrong_result"

        entries.append(guarded({"name": f"{name} block_n {config.block_n}", "tokens": 1000}, body))

    def compiled(entry: dict) -> None:
        fn = attention_function("triton_qk_int8_pv_fp8")
        out = torch.compile(lambda a, b, c: fn(a, b, c) * 2, fullgraph=True)(q, k, v)
        entry["vs_eager"] = errors(out, fn(q, k, v) * 2)

    entries.append(guarded({"name": "torch.compile(triton_qk_int8_pv_fp8)", "tokens": 1000}, compiled))
    for e in entries:
        detail = e.get("vs_emulation", e.get("vs_eager", {})).get("rel_l2", float("nan"))
        print(f"  check {e['name']:<40} {e['status']:<12} rel {detail:.1e}", flush=True)
    return entries


def speed(runner: Runner, shape: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[dict]:
    """Median times of every implementation at this shape; the variants also split into quantise and kernel."""
    b, length, heads, head_dim = q.shape
    flops = 4 * length * length * head_dim * heads * b
    plan: list[tuple[str, Callable[[], object]]] = [(f"sdpa_{name}", lambda name=name: runner.sdpa(name)(q, k, v))
                                                    for name in SDPA_BACKENDS]
    plan += [(name, lambda name=name: runner.variant(name)(q, k, v)) for name in VARIANTS]
    plan.append(("sdpa_cudnn_again", lambda: runner.sdpa("cudnn")(q, k, v)))
    entries = []
    for name, fn in plan:
        entry = {"name": name, "shape": shape, "tokens": length, "heads": heads, "head_dim": head_dim,
                 "flops": flops}

        def body(entry: dict, fn: Callable = fn, name: str = name) -> None:
            fn()
            runner.sync()
            entry["median_ms"] = runner.time_ms(fn)
            entry["tflops"] = flops / entry["median_ms"] / 1e9
            if runner.cuda and name in VARIANTS:
                qk, pv = VARIANTS[name]
                kern = runner.kernels
                entry["quantize_ms"] = runner.time_ms(lambda: kern.quantize_qkv(q, k, v, qk, pv))
                qkv = kern.quantize_qkv(q, k, v, qk, pv)
                entry["kernel_ms"] = runner.time_ms(
                    lambda: kern.attention_from_quantized(qkv, tuple(q.shape), length, v.dtype))
                entry["kernel_tflops"] = flops / entry["kernel_ms"] / 1e9
                entry["config"] = kern.last_autotune()["config"]

        entries.append(guarded(entry, body))
        row = entries[-1]
        if row["status"] == "ok":
            split = (f" (quantize {row['quantize_ms']:.2f} + kernel {row['kernel_ms']:.2f} ms)"
                     if "kernel_ms" in row else "")
            print(f"  {shape} {name:<26} {row['median_ms']:8.2f} ms {row['tflops']:7.1f} TFLOP/s{split}", flush=True)
    return entries


def dit(runner: Runner, blocks: int, tiny: bool, seed: int) -> dict:
    """A real-size (or tiny) S2V transformer with `blocks` blocks: output error and block time per attention."""
    device = runner.device
    dtype = torch.bfloat16 if runner.cuda else torch.float32
    base = TINY_S2V_CONFIG if tiny else WanS2VTransformerConfig()
    cfg = dataclasses.replace(base, num_layers=blocks, audio_inject_layers=(0,))
    shape = clip_shape(cfg, "480p", *((64, 64) if tiny else (480, 832)), infer_frames=8 if tiny else 80)
    result: dict = {"blocks": blocks, "dim": cfg.dim, "heads": cfg.num_heads, "ffn_dim": cfg.ffn_dim,
                    "tokens": shape.seq, "weights": "random", "dtype": str(dtype).removeprefix("torch.")}
    model = build_s2v_model(cfg, device=device, dtype=dtype, seed=seed)
    inputs = make_inputs(cfg, shape, device, seed)
    outputs: dict[str, torch.Tensor] = {}
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def capture(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not captured:
            captured.append((q.to(v.dtype), k.to(v.dtype), v))
        return attention(q, k, v)

    runs: dict[str, tuple[Callable, str | None]] = {"sdpa_cudnn": (capture, "cudnn"),
                                                     "sdpa_flash": (attention, "flash")}
    runs.update({name: (attention_function(name), None) for name in VARIANTS})
    forwards = []
    for name, (attn, backend) in runs.items():
        entry = {"name": name}

        def body(entry: dict, attn: Callable = attn, backend: str | None = backend, name: str = name) -> None:
            model.self_attention = attn
            with torch.inference_mode(), sdpa_context(backend if runner.cuda else None):
                out = model(**inputs).float()
            outputs[name] = out
            entry["finite"] = bool(torch.isfinite(out).all())
            if name != "sdpa_cudnn":
                entry["vs_sdpa_cudnn"] = errors(out, outputs["sdpa_cudnn"])

        forwards.append(guarded(entry, body))
    model.self_attention = attention
    result["forward"] = forwards

    def float32_reference(entry: dict) -> None:
        """The same weights in float32 (TF32 off; memory-efficient SDPA, the one float32 fused kernel)."""
        model32 = copy.deepcopy(model).float()
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.inference_mode(), sdpa_context("efficient" if runner.cuda else None):
                ref = model32(**inputs)  # the inputs are float32 already
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        del model32
        entry["vs_float32_model"] = {name: errors(out, ref) for name, out in outputs.items()}

    result["float32_model"] = guarded({"name": "float32_model"}, float32_reference)
    outputs.clear()
    if captured:
        with torch.inference_mode():
            result["block0_self_attention_inputs"] = accuracy(runner, "480p-dit", "block0", *captured.pop(), seed,
                                                              with_ablations=False)

    def block_time(entry: dict, attn: Callable, backend: str | None) -> None:
        with torch.inference_mode():
            tokens = model.prepare_tokens(**inputs)
            block = model.blocks[0]

            def run() -> torch.Tensor:
                with sdpa_context(backend if runner.cuda else None):
                    return block(tokens.x, tokens.e0, tokens.bounds, tokens.cos, tokens.sin, tokens.context, attn)

            run()
            runner.sync()
            entry["median_ms"] = runner.time_ms(run)

    result["block_time"] = [guarded({"name": name}, lambda e, a=attn, b=backend: block_time(e, a, b))
                            for name, (attn, backend) in runs.items()]
    base_ms = next((e["median_ms"] for e in result["block_time"] if e.get("status") == "ok"), None)
    for entry in result["block_time"]:
        if base_ms and entry.get("status") == "ok":
            entry["vs_sdpa_cudnn"] = entry["median_ms"] / base_ms
            print(f"  block {entry['name']:<26} {entry['median_ms']:8.2f} ms ({entry['vs_sdpa_cudnn']:.2f}x)",
                  flush=True)
    return result


# ---- the run ------------------------------------------------------------------------------------------------


def environment(device: torch.device, argv: list[str]) -> dict:
    env = base_environment(device, ["perf/bench_fp8_attention.py", *argv])
    if device.type == "cuda":
        import triton

        env["triton"] = triton.__version__
    return env


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (rewritten as results arrive)")
    parser.add_argument("--tiny-cpu", action="store_true",
                        help="tiny shapes on the CPU, the kernel's torch emulation in place of the kernel (smoke run)")
    parser.add_argument("--blocks", type=int, default=2, help="DiT blocks at real size (of 40; default 2)")
    parser.add_argument("--shapes", default=None, help=f"comma-separated subset of {','.join(SHAPES)}")
    parser.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up (ms)")
    parser.add_argument("--rep-ms", type=int, default=300, help="do_bench repetition time (ms)")
    parser.add_argument("--deadline-s", type=float, default=290.0,
                        help="skip the sections still to come once the run has taken this long (results kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = TINY_SHAPES if args.tiny_cpu else SHAPES
    args.shape_names = args.shapes.split(",") if args.shapes else list(table)
    unknown = sorted(set(args.shape_names) - set(table))
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {', '.join(table)}")
    return args


def summary(result: dict) -> list[str]:
    rows = [f"{'shape':<6} {'attention':<26} {'ms':>8} {'TFLOP/s':>8} {'rel err (wan_like)':>19} "
            f"{'max abs':>9}"]
    acc = {(e["shape"], e["name"]): e for e in result.get("accuracy", [])
           if e.get("input") == "wan_like" and e.get("status") == "ok"}
    for e in result.get("speed", []):
        if e.get("status") != "ok":
            rows.append(f"{e['shape']:<6} {e['name']:<26} {e.get('status')}")
            continue
        a = acc.get((e["shape"], e["name"].removesuffix("_again")), {}).get("vs_float32", {})
        rows.append(f"{e['shape']:<6} {e['name']:<26} {e['median_ms']:>8.2f} {e['tflops']:>8.1f} "
                    f"{a.get('rel_l2', float('nan')):>19.2e} {a.get('max_abs', float('nan')):>9.2e}")
    for e in result.get("dit", {}).get("forward", []):
        if e.get("status") == "ok" and "vs_sdpa_cudnn" in e:
            rows.append(f"DiT forward ({result['dit']['blocks']} blocks) {e['name']:<26} rel err vs SDPA "
                        f"{e['vs_sdpa_cudnn']['rel_l2']:.2e}")
    return rows


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.monotonic()
    if args.tiny_cpu:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_fp8_attention: no CUDA device. This benchmark measures a GPU kernel; run it on the GPU "
                     "machine, or use --tiny-cpu for the CPU smoke run (torch emulation, tiny shapes).")
        device = torch.device("cuda")
        reason = unavailable_reason(device)
        if reason:
            sys.exit(f"bench_fp8_attention: {reason}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    heads, head_dim = (40, 128) if device.type == "cuda" else (2, 64)
    runner = Runner(device, args.warmup_ms, args.rep_ms)
    table = TINY_SHAPES if args.tiny_cpu else SHAPES
    result: dict = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "environment": environment(device, argv), "variants": {k: list(v) for k, v in VARIANTS.items()},
                    "sdpa_default": SDPA, "heads": heads, "head_dim": head_dim, "dtype": str(dtype),
                    "implementation": "triton kernel" if runner.cuda else "torch emulation of the kernel (CPU)",
                    "accuracy": [], "speed": [], "skipped": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["elapsed_s"] = time.monotonic() - started
        args.out.write_text(json.dumps(result, indent=1, default=str))

    def on_time(section: str) -> bool:
        if time.monotonic() - started < args.deadline_s:
            print(f"[{time.monotonic() - started:6.1f} s] {section}", flush=True)
            return True
        result["skipped"].append(section)
        print(f"[{time.monotonic() - started:6.1f} s] skipped (deadline): {section}", flush=True)
        return False

    seed = args.seed
    if runner.cuda and on_time("kernel checks"):
        result["kernel_checks"] = kernel_checks(runner, heads, head_dim, seed)
        save()
    for index, shape in enumerate(args.shape_names):
        length, grid = table[shape]
        inputs = None
        with torch.inference_mode():
            for kind in ("gaussian", "wan_like"):
                if not on_time(f"accuracy {shape} {kind}"):
                    continue
                seed += 1
                if kind == "gaussian":
                    inputs = gaussian_qkv(length, heads, head_dim, device=device, dtype=dtype, seed=seed)
                else:
                    inputs = wan_like_qkv(length, heads, head_dim, grid, device=device, dtype=dtype, seed=seed)
                result["accuracy"] += accuracy(runner, shape, kind, *inputs, seed,
                                               with_ablations=index == 0 and kind == "wan_like")
                save()
            if inputs is not None and on_time(f"speed {shape}"):  # timed on the last inputs (not zeros)
                result["speed"] += speed(runner, shape, *inputs)
                save()
        inputs = None
        if index == 0 and on_time(f"DiT, {args.blocks} blocks"):
            result["dit"] = dit(runner, args.blocks, args.tiny_cpu, args.seed)
            save()
    save()
    for row in summary(result):
        print(row)
    return result


if __name__ == "__main__":
    main()
