"""The Triton kernels of the 8-bit attention, run by the Triton interpreter on tiny CPU tensors.

Not collected by the suite (no test_ prefix): tests/unit/test_fp8_attention.py runs this file in a process of its
own with TRITON_INTERPRET=1, which must be set before triton is imported. Each kernel is checked against the
torch code of the same math (wan/fp8_attention.py), operand for operand.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_fp8_attention import TOLERANCE, qkv, rel_error

from python_backends.generation.wan.common.fp8 import FP8_MAX
from python_backends.generation.wan.common.fp8_attention import (
    PV_MODES,
    QK_MODES,
    attend_quantized,
    quantize_per_block,
    quantize_per_channel,
    quantize_per_token,
    reference_attention,
    smoothing,
    softmax_scale_log2,
)

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_fp8_attention.py with TRITON_INTERPRET=1", allow_module_level=True)
triton = pytest.importorskip("triton")


def _torch_convert(original):
    """The interpreter's float conversions, done by torch: triton 3.6's `_convert_float` drops the carry when
    rounding overflows the mantissa (1.98 -> 1.0 in e4m3) and rounds ties up, and its numpy dot has no bf16."""
    import triton.language as tl

    dtypes = {tl.float32: torch.float32, tl.float16: torch.float16, tl.bfloat16: torch.bfloat16,
              tl.float8e4nv: torch.float8_e4m3fn}
    ints = {8: torch.int8, 16: torch.int16, 32: torch.int32}

    def convert(data, src, dst, rounding_mode):
        if src not in dtypes or dst not in dtypes:
            return original(data, src, dst, rounding_mode)
        raw = torch.from_numpy(np.ascontiguousarray(data).view(f"int{src.primitive_bitwidth}").copy())
        x = raw.view(dtypes[src]).float()
        if dst == tl.float8e4nv:
            x = x.clamp(-FP8_MAX, FP8_MAX)  # cvt.satfinite, as on the GPU
        out = x.to(dtypes[dst]).view(ints[dst.primitive_bitwidth]).numpy()
        return out.view(f"uint{dst.primitive_bitwidth}").reshape(data.shape)

    return convert


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch):
    """The kernels module, with the interpreter's float conversions done right."""
    import triton.runtime.interpreter as interpreter

    from python_backends.generation.wan import fp8_attention_triton

    monkeypatch.setattr(interpreter, "_convert_float", _torch_convert(interpreter._convert_float))
    return fp8_attention_triton


def _unpad(x: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[B*H, L_pad, ...] -> [B, H, L, ...]."""
    return x.view(batch, -1, *x.shape[1:])[:, :, :length]


def _v_of(got, batch: int, lk: int) -> torch.Tensor:
    """The kernel's V operand as [B, H, Lk, D]: e4m3 stored transposed [B*H, D, Lk_pad], or the 16-bit input."""
    if got.pv == "fp8":
        return _unpad(got.v.transpose(1, 2), batch, lk)
    return got.v.transpose(1, 2)


def _emulated(got, batch: int, lq: int, lk: int, block_n: int) -> torch.Tensor:
    """attend_quantized on exactly the operands the kernel read: [B, Lq, H, D]."""
    v_scale = None if got.v_scale is None else got.v_scale.view(batch, -1, got.v_scale.shape[-1])
    return attend_quantized(_unpad(got.q8, batch, lq), _unpad(got.q_scale, batch, lq), _unpad(got.k8, batch, lk),
                            got.k_scale.view(batch, -1, got.k_scale.shape[-1]), _v_of(got, batch, lk), v_scale,
                            block_n=block_n).transpose(1, 2)


@pytest.mark.parametrize("qk", QK_MODES)
def test_interpreted_quantisers_match_the_torch_ones(interpreted, qk: str) -> None:
    q, k, v = qkv(2, 150, 230, 2, 32, seed=12)
    k = k + 2.0
    q = q[:, :, :, :].transpose(1, 2).contiguous().transpose(1, 2)  # strided [B, L, H, D] view
    got = interpreted.quantize_qkv(q, k, v, qk, "fp8")
    smooth = smoothing(q, k)
    q8, q_scale = quantize_per_token(q, qk, softmax_scale_log2(32), smooth.q_mul)
    k8, k_scale = quantize_per_block(k, qk, 128, smooth.k_mean, smooth.k_mul)
    v8, v_scale = quantize_per_channel(v)
    for kernel, torch_q in ((_unpad(got.q8, 2, 150), q8), (_unpad(got.k8, 2, 230), k8), (_v_of(got, 2, 230), v8)):
        diff = (kernel.float() - torch_q.float()).abs()
        # int8: a value on a rounding tie may land one step apart (float32 evaluation order); e4m3: identical
        assert diff.max() <= (1 if qk == "int8" else 0) and (diff > 0).float().mean() < 1e-3
    torch.testing.assert_close(_unpad(got.q_scale, 2, 150), q_scale)
    torch.testing.assert_close(got.k_scale.view(2, 2, -1), k_scale)
    torch.testing.assert_close(got.v_scale.view(2, 2, 32), v_scale)
    # the padding holds zeros (the kernel reads whole blocks of it)
    assert not got.k8.view(2, 2, -1, 32)[:, :, 230:].float().any()


@pytest.mark.parametrize("qk", QK_MODES)
@pytest.mark.parametrize("pv", PV_MODES)
def test_interpreted_kernel_computes_the_emulated_online_softmax(interpreted, qk: str, pv: str) -> None:
    batch, lq, lk, heads, d = 2, 150, 230, 2, 32  # a partial last query block and key block
    q, k, v = qkv(batch, lq, lk, heads, d, seed=13)
    if pv == "bf16":
        v = v.half()  # the same 16-bit code path; the interpreter's numpy dot cannot multiply bf16
    got = interpreted.quantize_qkv(q, k, v, qk, pv)
    for config in (interpreted.KernelConfig(64, 64, 4, 2), interpreted.KernelConfig(128, 128, 8, 3)):
        out = interpreted.attention_from_quantized(got, tuple(q.shape), lk, torch.float32, config)
        assert rel_error(out, _emulated(got, batch, lq, lk, config.block_n)) < 1e-5, config
    end_to_end = interpreted.fp8_attention_triton(q, k, v, qk=qk, pv=pv, config=interpreted.KernelConfig(64, 64))
    assert rel_error(end_to_end, reference_attention(q, k, v)) < TOLERANCE[(qk, pv)]


def test_interpreted_autotuned_launch_tries_every_config_and_keeps_the_fastest(interpreted,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The path the model takes (config=None): the autotuner runs each config once; its timer here is the wall
    clock (do_bench needs CUDA events), so which config wins is arbitrary, and the output must be that config's."""
    import time

    def wall_clock(fn, quantiles=None, **_):
        start = time.perf_counter()
        fn()
        elapsed = (time.perf_counter() - start) * 1e3
        return [elapsed] * len(quantiles) if quantiles else elapsed

    monkeypatch.setitem(interpreted._attn_fwd_tuned.__dict__, "do_bench", wall_clock)
    batch, lq, lk, heads, d = 1, 100, 140, 2, 32
    q, k, v = qkv(batch, lq, lk, heads, d, seed=14)
    got = interpreted.quantize_qkv(q, k, v, "int8", "fp8")
    tuned = interpreted.tuned_keys()
    out = interpreted.attention_from_quantized(got, tuple(q.shape), lk, torch.float32)
    assert interpreted.tuned_keys() == tuned + 1
    report = interpreted.last_autotune()
    assert len(report["timings_ms"]) == len(interpreted.AUTOTUNE_CONFIGS)
    block_n = int(report["config"].split("BLOCK_N: ")[1].split(",")[0])
    assert rel_error(out, _emulated(got, batch, lq, lk, block_n)) < 1e-5
