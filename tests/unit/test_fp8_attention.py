"""8-bit attention (wan/fp8_attention.py): quantisers, the kernel's math (torch emulation) against float64, routing.

The Triton kernel needs a GPU; where the `triton` package is installed (it is not a project dependency: CI has
none), the kernels also run here through the Triton interpreter on tiny tensors and are checked against the
emulation, operand for operand. perf/bench_fp8_attention.py measures the kernel on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from wan_fixtures.tiny import TINY_S2V_CONFIG

from python_backends.generation.wan import build_s2v_model
from python_backends.generation.wan.common.attention import (
    ATTENTION_BACKENDS,
    attention,
    attention_function,
    check_attention_backend,
)
from python_backends.generation.wan.common.fp8 import FP8_MAX
from python_backends.generation.wan.common.fp8_attention import (
    INT8_MAX,
    PV_MODES,
    QK_MODES,
    emulate_fp8_attention,
    fp8_attention,
    quantize_per_block,
    quantize_per_channel,
    quantize_per_token,
    reference_attention,
    smoothing,
)
from python_backends.generation.wan.s2v.engine import WanS2VOptions, _apply_speed_options
from python_backends.generation.wan.s2v.sequence_parallel import SequenceGroup, sequence_parallel_forward

ROOT = Path(__file__).resolve().parents[2]
INTERPRETED = Path(__file__).with_name("interpreted_fp8_attention.py")
sys.path.insert(0, str(ROOT / "perf"))

from bench_generator import clip_shape, make_inputs  # noqa: E402

# Relative L2 error of the emulated kernel against float64 attention on N(0, 1) q, k, v (head_dim 64, 230 keys),
# measured over three seeds: about 0.051, 0.038, 0.036 and 0.011 for the four modes in the order below (bf16
# SDPA: 0.0034). The bounds leave room for other seeds, not for a lost scale (which costs far more).
TOLERANCE = {("fp8", "fp8"): 0.07, ("fp8", "bf16"): 0.05, ("int8", "fp8"): 0.05, ("int8", "bf16"): 0.015}
BF16_ERROR = 0.0034


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def qkv(batch: int, lq: int, lk: int, heads: int, head_dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, lq, heads, head_dim, generator=g), torch.randn(batch, lk, heads, head_dim, generator=g),
            torch.randn(batch, lk, heads, head_dim, generator=g))


# ---- quantisers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", QK_MODES)
def test_per_token_quantisation_gives_each_token_its_own_scale(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 2, 64, generator=g) * torch.logspace(-3, 3, 40).view(1, 40, 1, 1)
    q, scale = quantize_per_token(x, mode, scale_mul=0.5)
    assert q.dtype == (torch.int8 if mode == "int8" else torch.float8_e4m3fn) and q.shape == (1, 2, 40, 64)
    qmax = INT8_MAX if mode == "int8" else FP8_MAX
    amax = x.abs().amax(-1).transpose(1, 2)
    torch.testing.assert_close(scale, amax / qmax * 0.5)
    back = q.float() * (scale / 0.5).unsqueeze(-1)
    err = (back - x.transpose(1, 2)).abs()
    if mode == "int8":  # rounding to the nearest step
        assert (err <= 0.5 * (scale / 0.5).unsqueeze(-1) * (1 + 1e-6)).all()
    else:  # 3 mantissa bits: at most 2^-4 of the value, whatever the token's size (normals)
        normal = x.transpose(1, 2).abs() >= (scale / 0.5).unsqueeze(-1) * 2**-6
        assert (err[normal] <= x.transpose(1, 2).abs()[normal] * 2**-4 * (1 + 1e-6)).all()


@pytest.mark.parametrize("mode", QK_MODES)
def test_per_block_quantisation_uses_one_scale_per_block_of_tokens(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 300, 2, 32, generator=g)  # blocks of 128, 128 and 44 tokens
    x[:, 128:256] *= 1e-3
    q, scale = quantize_per_block(x, mode, block=128)
    assert scale.shape == (1, 2, 3)
    qmax = INT8_MAX if mode == "int8" else FP8_MAX
    for i, (a, b) in enumerate([(0, 128), (128, 256), (256, 300)]):
        torch.testing.assert_close(scale[..., i], x[:, a:b].abs().amax(dim=(1, 3)) / qmax)
    back = q.float() * scale.repeat_interleave(128, dim=-1)[..., :300].unsqueeze(-1)
    small = slice(128, 256)
    # the small block keeps its own range: its relative error is the quantiser's, not 1000x worse
    assert rel_error(back[:, :, small], x.transpose(1, 2)[:, :, small]) < (0.01 if mode == "int8" else 0.04)


def test_per_channel_quantisation_of_v() -> None:
    g = torch.Generator().manual_seed(2)
    v = torch.randn(1, 100, 2, 16, generator=g) * torch.logspace(-2, 2, 16)
    q, scale = quantize_per_channel(v)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (1, 2, 100, 16) and scale.shape == (1, 2, 16)
    torch.testing.assert_close(scale, v.abs().amax(1) / FP8_MAX)
    assert rel_error(q.float() * scale.unsqueeze(2), v.transpose(1, 2)) < 0.04


def test_key_smoothing_and_channel_balance_leave_the_attention_unchanged() -> None:
    """K - mean shifts each query's scores by one constant; Q * s, K / s keeps every q . k: softmax ignores both."""
    q, k, v = qkv(2, 30, 50, 2, 16, seed=3)
    k = k + 5 * torch.randn(1, 1, 2, 16)
    q = q * torch.linspace(0.1, 10, 16)
    smooth = smoothing(q, k)
    assert smooth.k_mean.shape == smooth.q_mul.shape == (2, 2, 16)
    torch.testing.assert_close(smooth.q_mul * smooth.k_mul, torch.ones(2, 2, 16))
    q2 = q.double() * smooth.q_mul.double().unsqueeze(1)  # float64: only the transform's own effect
    k2 = (k.double() - smooth.k_mean.double().unsqueeze(1)) / smooth.q_mul.double().unsqueeze(1)
    torch.testing.assert_close(reference_attention(q2, k2, v), reference_attention(q, k, v), rtol=1e-9, atol=1e-9)
    # balanced: each channel's range split evenly between the two operands
    torch.testing.assert_close(q2.abs().amax(1), k2.abs().amax(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", QK_MODES)
def test_smoothing_removes_the_cost_of_a_common_key_offset(mode: str) -> None:
    q, k, v = qkv(1, 128, 256, 2, 64, seed=5)
    k = k + 30 * torch.randn(1, 1, 2, 64, generator=torch.Generator().manual_seed(5))
    ref = reference_attention(q, k, v)
    smoothed = rel_error(emulate_fp8_attention(q, k, v, qk=mode, pv="bf16", balance_qk=False), ref)
    raw = rel_error(emulate_fp8_attention(q, k, v, qk=mode, pv="bf16", smooth_k=False, balance_qk=False), ref)
    assert smoothed < TOLERANCE[(mode, "bf16")] and raw > 5 * smoothed  # measured 0.04 vs 0.86 (e4m3), 0.010 vs 0.17


def test_channel_balance_helps_int8_with_outlier_query_channels() -> None:
    q, k, v = qkv(1, 128, 256, 2, 64, seed=6)
    q[..., :2] *= 20
    ref = reference_attention(q, k, v)
    balanced = rel_error(emulate_fp8_attention(q, k, v, qk="int8", pv="bf16"), ref)
    plain = rel_error(emulate_fp8_attention(q, k, v, qk="int8", pv="bf16", balance_qk=False), ref)
    assert balanced < 0.8 * plain  # measured 0.024 vs 0.037


# ---- the computation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qk", QK_MODES)
@pytest.mark.parametrize("pv", PV_MODES)
def test_emulated_kernel_is_within_tolerance_of_float64(qk: str, pv: str) -> None:
    q, k, v = qkv(2, 150, 230, 2, 64, seed=7)
    out = emulate_fp8_attention(q, k, v, qk=qk, pv=pv)
    assert out.shape == q.shape and out.dtype == torch.float32
    err = rel_error(out, reference_attention(q, k, v))
    assert 2 * BF16_ERROR < err < TOLERANCE[(qk, pv)]  # really 8-bit, and no worse than 8 bits cost


def test_key_block_size_only_changes_where_p_is_rounded() -> None:
    """The online softmax over 32-key blocks computes what one 128-key block does (P.V in bf16 rounds P alike)."""
    q, k, v = qkv(1, 64, 200, 2, 32, seed=8)
    one = emulate_fp8_attention(q, k, v, qk="int8", pv="bf16", block_n=128)
    many = emulate_fp8_attention(q, k, v, qk="int8", pv="bf16", block_n=32)
    assert rel_error(many, one) < 5e-3
    with pytest.raises(ValueError, match="block_n must divide"):
        emulate_fp8_attention(q, k, v, block_n=96)


def test_fp8_attention_on_the_cpu_is_the_emulation_in_v_dtype() -> None:
    q, k, v = qkv(1, 20, 40, 2, 32, seed=9)
    out = fp8_attention(q, k.bfloat16(), v.bfloat16(), qk="int8", pv="fp8")
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    torch.testing.assert_close(out, emulate_fp8_attention(q, k.bfloat16(), v.bfloat16(), qk="int8", pv="fp8")
                               .bfloat16())


def test_bad_inputs_are_refused_with_a_reason() -> None:
    q, k, v = qkv(1, 8, 8, 2, 32, seed=10)
    with pytest.raises(ValueError, match="head_dim"):
        fp8_attention(q[..., :24], k[..., :24], v[..., :24])
    with pytest.raises(ValueError, match=r"\[B, L, heads, head_dim\]"):
        fp8_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="must share"):
        fp8_attention(q, k[:, :, :1], v)
    with pytest.raises(ValueError, match="qk must be one of"):
        fp8_attention(q, k, v, qk="int4")
    with pytest.raises(ValueError, match="pv must be one of"):
        fp8_attention(q, k, v, pv="fp16")


# ---- routing --------------------------------------------------------------------------------------------------


def test_attention_backends_name_sdpa_or_the_kernel() -> None:
    assert attention_function("sdpa") is attention
    q, k, v = qkv(1, 16, 16, 2, 32, seed=11)
    for name, modes in ATTENTION_BACKENDS.items():
        if modes is not None:
            fn = attention_function(name)
            torch.testing.assert_close(fn(q, k, v), emulate_fp8_attention(q, k, v, qk=modes[0], pv=modes[1]))
    with pytest.raises(ValueError, match="attention backend must be one of"):
        attention_function("flash3")
    with pytest.raises(ValueError, match="runs on CUDA GPUs"):
        check_attention_backend("triton_qk_int8_pv_fp8", "meta")
    check_attention_backend("sdpa", "meta")  # SDPA needs nothing
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        WanS2VOptions(attention_backend="fp8")


def test_the_transformer_routes_every_block_through_the_chosen_attention() -> None:
    model = build_s2v_model(TINY_S2V_CONFIG, device="cpu", dtype=torch.float32, seed=0)
    cfg = model.config
    inputs = make_inputs(cfg, clip_shape(cfg, "t", 64, 64, infer_frames=8), torch.device("cpu"), seed=1)
    assert model.self_attention is attention
    with torch.no_grad():
        reference = model(**inputs)
    _apply_speed_options(model, Path("."), WanS2VOptions(attention_backend="triton_qk_int8_pv_bf16"))
    chosen = model.self_attention
    assert chosen.keywords == {"qk": "int8", "pv": "bf16"}
    calls = []

    def counting(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(q.shape)
        return chosen(q, k, v)

    model.self_attention = counting
    with torch.no_grad():
        out = model(**inputs)
        assert len(calls) == cfg.num_layers
        # the sequence-parallel path (one rank) takes the model's attention too, with the same numbers
        sharded = sequence_parallel_forward(model, SequenceGroup(), **inputs)
    assert len(calls) == 2 * cfg.num_layers
    torch.testing.assert_close(sharded, out)
    assert 0 < rel_error(out, reference) < 0.02  # 8-bit attention: close to the float32 model, not equal


# ---- the Triton kernels, through the interpreter --------------------------------------------------------------


def test_triton_kernels_under_the_interpreter() -> None:
    """interpreted_fp8_attention.py in a process of its own: TRITON_INTERPRET must be set before triton is
    imported (triton's own @jit helpers are interpreted only if it is), which this process may have done."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INTERPRETED)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary


# ---- on a GPU -------------------------------------------------------------------------------------------------


def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.gpu
@pytest.mark.skipif(not _fp8_gpu(), reason="needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+)")
@pytest.mark.parametrize("qk", QK_MODES)
@pytest.mark.parametrize("pv", PV_MODES)
def test_cuda_kernel_matches_its_emulation(qk: str, pv: str) -> None:
    from python_backends.generation.wan.common.fp8_attention_triton import KernelConfig, fp8_attention_triton

    g = torch.Generator(device="cuda").manual_seed(14)
    q, k, v = (torch.randn(1, 1000, 4, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    for config in (KernelConfig(128, 128, 8, 3), KernelConfig(128, 64, 8, 3)):
        out = fp8_attention_triton(q, k, v, qk=qk, pv=pv, config=config)
        # bf16 output rounding, and a few P roundings moved by the GPU's FMA contraction
        assert rel_error(out, emulate_fp8_attention(q, k, v, qk=qk, pv=pv, block_n=config.block_n)) < 1e-2
    out = fp8_attention(q, k, v, qk=qk, pv=pv)  # autotuned, through the custom op
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_error(out, reference_attention(q, k, v)) < TOLERANCE[(qk, pv)]
    compiled = torch.compile(lambda a, b, c: fp8_attention(a, b, c, qk=qk, pv=pv) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), out * 2)


# ---- the benchmark's CPU mode ---------------------------------------------------------------------------------


def test_benchmark_cpu_smoke_run_writes_every_section(tmp_path: Path) -> None:
    import bench_fp8_attention as bench

    out = tmp_path / "fp8_attention_cpu.json"
    bench.main(["--tiny-cpu", "--shapes", "tiny-b", "--blocks", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["schema"] == bench.SCHEMA and result["implementation"].startswith("torch emulation")
    names = {"sdpa_cudnn", "sdpa_flash", *bench.VARIANTS}
    accuracy = {(e["input"], e["name"]): e for e in result["accuracy"]}
    assert all(e["status"] == "ok" for e in result["accuracy"])
    for kind in ("gaussian", "wan_like"):
        for name in bench.VARIANTS:
            err = accuracy[(kind, name)]["vs_float32"]["rel_l2"]
            assert 2 * BF16_ERROR < err < 0.1, (kind, name)  # 8-bit, within what 8 bits cost on such data
        assert accuracy[(kind, "sdpa_cudnn")]["vs_float32"]["rel_l2"] < 1e-5  # float32 on the CPU
    assert {e["name"] for e in result["speed"]} == names | {"sdpa_cudnn_again"}
    forward = {e["name"]: e for e in result["dit"]["forward"]}
    assert set(forward) == names and all(e["status"] == "ok" and e["finite"] for e in forward.values())
    for name in bench.VARIANTS:
        assert 0 < forward[name]["vs_sdpa_cudnn"]["rel_l2"] < 0.02
    assert result["dit"]["float32_model"]["status"] == "ok"
    assert {e["name"] for e in result["dit"]["block_time"]} == names


def test_benchmark_without_cuda_stops_with_a_message(tmp_path: Path) -> None:
    import bench_fp8_attention as bench

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench.main(["--out", str(tmp_path / "x.json")])
