"""The Triton kernels of the 8-bit attention (fp8_attention.py describes the math): quantisers and fused forward.

Imported only when a CUDA tensor (or the Triton interpreter, in tests) needs them: it imports triton.

Layouts. Inputs are the model's [B, L, H, D] (any strides but a unit last one; q and k may be float32, as the
rotary embedding leaves them). The quantisers write 8-bit Q and K as [B*H, L_pad, D] and, for the FP8 P.V
product, V transposed as [B*H, D, L_pad]: Hopper's FP8 tensor-core instruction reads both operands from shared
memory K-major, i.e. with the reduction dimension contiguous, and for P.V that dimension is the token. L_pad is
L rounded up to TOKEN_PAD; the padding holds zeros, so the main loop loads whole blocks without masks and only
the last, partial key block masks its scores. The output is written straight into [B, Lq, H, D].

Compiled ahead of time for sm_90a here (triton 3.6 and its bundled ptxas, no GPU), head_dim 128: every autotune
config of every variant compiles without spills (128x128 tiles, 8 warps: 252 registers with the FP8 P.V, 210
with bf16; 116-214 KB of shared memory); the products are QGMMA / IGMMA / HGMMA (no HMMA fallback); K and V
arrive by cp.async. The main loop of the e4m3/e4m3 variant issues about 540 instructions per thread per 128x128
tile, 64 of them exp2 (MUFU). Speed is measured on the GPU by perf/bench_fp8_attention.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fp8 import FP8_DTYPE, FP8_MAX, MIN_AMAX
from .fp8_attention import (
    INT8_MAX,
    INT8_SCORE_OFFSET,
    K_SCALE_BLOCK,
    P_SHIFT,
    channel_amax,
    check_inputs,
    check_modes,
    padded_length,
    pv_dtype,
    smoothing,
    softmax_scale_log2,
)

_FP8_MAX = tl.constexpr(FP8_MAX)
_INT8_MAX = tl.constexpr(INT8_MAX)
_MIN_AMAX = tl.constexpr(MIN_AMAX)
_P_SHIFT = tl.constexpr(P_SHIFT)
# 1.5 * 2^23: adding it to a float32 |x| < 2^22 rounds x to the nearest integer (ties to even), and an int32
# |i| < 2^22 (int8 scores: |i| <= 127^2 * 128) added to its bit pattern is the float32 1.5 * 2^23 + i. Both
# exact; the second replaces the int32 -> float32 conversion of the INT8 scores (a quarter of the FMA rate).
_ROUNDER = tl.constexpr(INT8_SCORE_OFFSET)
_ROUNDER_BITS = tl.constexpr(0x4B400000)  # the float32 bits of 1.5 * 2^23
QUANT_BLOCK = K_SCALE_BLOCK  # tokens per quantiser program: a K block's scale is its program's maximum


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration of the fused kernel (BLOCK_N must divide K_SCALE_BLOCK)."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3

    def __post_init__(self) -> None:
        if K_SCALE_BLOCK % self.block_n:
            raise ValueError(f"block_n must divide {K_SCALE_BLOCK}, got {self.block_n}")


# Hopper, head_dim 128: a 128-row query block over two warpgroups (64 rows each) is the shape FlashAttention-3
# uses; 64-key blocks halve the score registers; 3-4 stages hide the K/V loads. Kept small: each config is one
# compilation per variant and one timing on first use.
AUTOTUNE_CONFIGS = (
    KernelConfig(128, 128, 8, 3),
    KernelConfig(128, 128, 8, 4),
    KernelConfig(128, 64, 8, 3),
    KernelConfig(128, 64, 8, 4),
    KernelConfig(64, 64, 4, 3),
)


# ---- quantisers -----------------------------------------------------------------------------------------------


@triton.jit
def _to_8bit(x, inverse, INT8: tl.constexpr):
    """x * inverse rounded to e4m3 (nearest even, saturating) or to int8 (nearest even)."""
    y = x * inverse
    if INT8:
        out = ((y + _ROUNDER) - _ROUNDER).to(tl.int8)
    else:
        out = tl.clamp(y, -_FP8_MAX, _FP8_MAX).to(tl.float8e4nv)
    return out


@triton.jit
def _quantize_qk_kernel(X, MEAN, MUL, OUT, SCALE, L, L_PAD, H, stride_xb, stride_xl, stride_xh, scale_mul,
                        HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, PER_TOKEN: tl.constexpr,
                        HAS_MEAN: tl.constexpr, HAS_MUL: tl.constexpr, INT8: tl.constexpr):
    """BLOCK tokens of one (batch, head), (x - MEAN) * MUL (per channel, if given) -> 8-bit OUT [B*H, L_PAD, D];
    scales per token or for the block."""
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    offs_l = pid_l * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_l < L
    base = X + (pid_bh // H).to(tl.int64) * stride_xb + (pid_bh % H).to(tl.int64) * stride_xh
    x = tl.load(base + offs_l[:, None].to(tl.int64) * stride_xl + offs_d[None, :], mask=valid[:, None],
                other=0.0).to(tl.float32)
    if HAS_MEAN:
        mean = tl.load(MEAN + bh * HEAD_DIM + offs_d)
        x = tl.where(valid[:, None], x - mean[None, :], 0.0)
    if HAS_MUL:
        x = x * tl.load(MUL + bh * HEAD_DIM + offs_d)[None, :]
    qmax = _INT8_MAX if INT8 else _FP8_MAX
    if PER_TOKEN:
        amax = tl.maximum(tl.max(tl.abs(x), axis=1), _MIN_AMAX)
        inverse = qmax / amax
        x8 = _to_8bit(x, inverse[:, None], INT8)
        tl.store(SCALE + bh * L_PAD + offs_l, amax / qmax * scale_mul)
    else:
        amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), _MIN_AMAX)
        x8 = _to_8bit(x, qmax / amax, INT8)
        tl.store(SCALE + bh * (L_PAD // BLOCK) + pid_l, amax / qmax * scale_mul)
    tl.store(OUT + bh * L_PAD * HEAD_DIM + offs_l[:, None] * HEAD_DIM + offs_d[None, :], x8)


@triton.jit
def _quantize_v_kernel(X, INV_SCALE, OUT, L, L_PAD, H, stride_xb, stride_xl, stride_xh,
                       HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """BLOCK tokens of one (batch, head) of V -> e4m3 OUT [B*H, D, L_PAD] (transposed), per-channel scales."""
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    offs_l = pid_l * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    base = X + (pid_bh // H).to(tl.int64) * stride_xb + (pid_bh % H).to(tl.int64) * stride_xh
    x = tl.load(base + offs_l[:, None].to(tl.int64) * stride_xl + offs_d[None, :], mask=(offs_l < L)[:, None],
                other=0.0).to(tl.float32)
    inverse = tl.load(INV_SCALE + bh * HEAD_DIM + offs_d)
    x8 = _to_8bit(x, inverse[None, :], False)
    tl.store(OUT + bh * HEAD_DIM * L_PAD + offs_d[None, :] * L_PAD + offs_l[:, None], x8)


# ---- fused forward --------------------------------------------------------------------------------------------


@triton.jit
def _attn_blocks(acc, l_i, m_i, q, c_row, K_BASE, V_BASE, KS_BASE, lo, hi, Lk, stride_vn, stride_vd,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, K_SCALE_BLOCK: tl.constexpr,
                 QK_INT8: tl.constexpr, PV_FP8: tl.constexpr, MASK: tl.constexpr):
    """Key blocks lo, lo + BLOCK_N, ... < hi into the online softmax; MASK: keys past Lk score -inf."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        keys = start_n + offs_n
        k = tl.load(K_BASE + keys[:, None] * HEAD_DIM + offs_d[None, :])
        c = c_row * tl.load(KS_BASE + start_n // K_SCALE_BLOCK)  # positive: the row max commutes with it
        if QK_INT8:
            # the float32 1.5 * 2^23 + score, exactly (no int -> float conversion); its offset goes into the
            # per-row constant of the one FMA below (the product's rounding stays far under the int8 noise)
            qk = (tl.dot(q, tl.trans(k)) + _ROUNDER_BITS).to(tl.float32, bitcast=True)
            offset = _ROUNDER
        else:
            qk = tl.dot(q, tl.trans(k))
            offset = 0.0
        if MASK:
            qk = tl.where((keys < Lk)[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, (tl.max(qk, 1) - offset) * c)
        if PV_FP8:
            p = tl.math.exp2(qk * c[:, None] - (offset * c + m_ij - _P_SHIFT)[:, None])
        else:
            p = tl.math.exp2(qk * c[:, None] - (offset * c + m_ij)[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        if PV_FP8:
            vt = tl.load(V_BASE + offs_d[:, None] * stride_vd + keys[None, :])  # [D, BLOCK_N], tokens contiguous
            # each block's product on its own, then a float32 add: the FP8 MMA accumulator is not float32
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float8e4nv), tl.trans(vt))
        else:
            v_ptrs = V_BASE + keys[:, None].to(tl.int64) * stride_vn + offs_d[None, :]
            if MASK:
                v = tl.load(v_ptrs, mask=(keys < Lk)[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Lq", "Lk", "LK_BUCKET"])
def _attn_fwd_kernel(Q, K, V, QS, KS, VS, OUT, Lq, Lk, LQ_PAD, LK_PAD, H,
                     stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_ol, stride_oh,
                     LK_BUCKET, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     K_SCALE_BLOCK: tl.constexpr, QK_INT8: tl.constexpr, PV_FP8: tl.constexpr):
    """One BLOCK_M-query block of one (batch, head). LK_BUCKET only keys the autotuner's cache."""
    tl.static_assert(K_SCALE_BLOCK % BLOCK_N == 0)
    start_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + bh * LQ_PAD * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
    c_row = tl.load(QS + bh * LQ_PAD + offs_m)
    k_base = K + bh * LK_PAD * HEAD_DIM
    ks_base = KS + bh * (LK_PAD // K_SCALE_BLOCK)
    v_base = V + b * stride_vb + h * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = (Lk // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_blocks(acc, l_i, m_i, q, c_row, k_base, v_base, ks_base, 0, n_full, Lk,
                                 stride_vn, stride_vd, HEAD_DIM, BLOCK_N, K_SCALE_BLOCK, QK_INT8, PV_FP8, False)
    if n_full < Lk:
        acc, l_i, m_i = _attn_blocks(acc, l_i, m_i, q, c_row, k_base, v_base, ks_base, n_full, n_full + BLOCK_N,
                                     Lk, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, K_SCALE_BLOCK, QK_INT8, PV_FP8,
                                     True)
    out = acc / l_i[:, None]
    if PV_FP8:
        out = out * tl.load(VS + bh * HEAD_DIM + offs_d)[None, :]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=(offs_m < Lq)[:, None])


_attn_fwd_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, num_warps=c.num_warps,
                           num_stages=c.num_stages) for c in AUTOTUNE_CONFIGS],
    key=["LK_BUCKET", "HEAD_DIM", "QK_INT8", "PV_FP8"],
)(_attn_fwd_kernel)


# ---- launchers ------------------------------------------------------------------------------------------------


@dataclass
class QuantizedQKV:
    """The fused kernel's inputs: 8-bit Q and K, V (e4m3 transposed, or the 16-bit original) and their scales."""

    q8: Tensor  # [B*H, Lq_pad, D] e4m3 or int8
    q_scale: Tensor  # [B*H, Lq_pad] float32, softmax scale and log2(e) folded in
    k8: Tensor  # [B*H, Lk_pad, D] like q8
    k_scale: Tensor  # [B*H, Lk_pad / K_SCALE_BLOCK] float32
    v: Tensor  # pv fp8: [B*H, D, Lk_pad] e4m3; pv bf16: [B, Lk, H, D] 16-bit
    v_scale: Tensor | None  # [B*H, D] float32 (pv fp8)
    qk: str
    pv: str


def _quantize_qk(x: Tensor, int8: bool, per_token: bool, scale_mul: float, mean: Tensor | None,
                 mul: Tensor | None) -> tuple[Tensor, Tensor]:
    b, length, h, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    l_pad = padded_length(length)
    out = torch.empty((b * h, l_pad, d), dtype=torch.int8 if int8 else FP8_DTYPE, device=x.device)
    scale = torch.empty((b * h, l_pad if per_token else l_pad // QUANT_BLOCK), dtype=torch.float32,
                        device=x.device)
    _quantize_qk_kernel[(l_pad // QUANT_BLOCK, b * h)](
        x, scale if mean is None else mean.contiguous(), scale if mul is None else mul.contiguous(), out, scale,
        length, l_pad, h, x.stride(0), x.stride(1), x.stride(2), scale_mul, HEAD_DIM=d, BLOCK=QUANT_BLOCK,
        PER_TOKEN=per_token, HAS_MEAN=mean is not None, HAS_MUL=mul is not None, INT8=int8, num_warps=8)
    return out, scale


def _quantize_v(v: Tensor) -> tuple[Tensor, Tensor]:
    b, length, h, d = v.shape
    if v.stride(-1) != 1:
        v = v.contiguous()
    l_pad = padded_length(length)
    amax = channel_amax(v)  # [B, H, D]
    out = torch.empty((b * h, d, l_pad), dtype=FP8_DTYPE, device=v.device)
    _quantize_v_kernel[(l_pad // QUANT_BLOCK, b * h)](
        v, (FP8_MAX / amax).contiguous(), out, length, l_pad, h, v.stride(0), v.stride(1), v.stride(2),
        HEAD_DIM=d, BLOCK=QUANT_BLOCK, num_warps=8)
    return out, (amax / FP8_MAX).reshape(b * h, d)


def quantize_qkv(q: Tensor, k: Tensor, v: Tensor, qk: str = "fp8", pv: str = "fp8", smooth_k: bool = True,
                 balance_qk: bool = True) -> QuantizedQKV:
    """Quantise q, k (and v for pv="fp8") with the Triton quantisers: the part of the work before the kernel."""
    check_inputs(q, k, v)
    check_modes(qk, pv)
    int8 = qk == "int8"
    smooth = smoothing(q, k, smooth_k, balance_qk)
    q8, q_scale = _quantize_qk(q, int8, True, softmax_scale_log2(q.shape[-1]), None, smooth.q_mul)
    k8, k_scale = _quantize_qk(k, int8, False, 1.0, smooth.k_mean, smooth.k_mul)
    if pv == "fp8":
        v8, v_scale = _quantize_v(v)
        return QuantizedQKV(q8, q_scale, k8, k_scale, v8, v_scale, qk, pv)
    v16 = v.to(pv_dtype(v))
    return QuantizedQKV(q8, q_scale, k8, k_scale, v16 if v16.stride(-1) == 1 else v16.contiguous(), None, qk, pv)


def attention_from_quantized(qkv: QuantizedQKV, shape: tuple[int, int, int, int], lk: int, out_dtype: torch.dtype,
                             config: KernelConfig | None = None, out: Tensor | None = None) -> Tensor:
    """The fused kernel on quantised inputs: [B, Lq, H, D] `shape` of the output (written into `out` if given,
    contiguous). config None: autotuned."""
    b, lq, h, d = shape
    if out is None:
        out = torch.empty(shape, dtype=out_dtype, device=qkv.q8.device)
    elif out.shape != shape or out.dtype != out_dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {out_dtype} {list(shape)} with a unit last stride")
    pv_fp8 = qkv.pv == "fp8"
    if pv_fp8:  # [B*H, D, Lk_pad]: token stride 1, channel stride Lk_pad
        v_strides = (h * qkv.v.stride(0), qkv.v.stride(0), 1, qkv.v.stride(1))
    else:  # [B, Lk, H, D]
        v_strides = (qkv.v.stride(0), qkv.v.stride(2), qkv.v.stride(1), 1)
    args = (qkv.q8, qkv.k8, qkv.v, qkv.q_scale, qkv.k_scale, qkv.q_scale if qkv.v_scale is None else qkv.v_scale,
            out, lq, lk, qkv.q8.shape[1], qkv.k8.shape[1], h, *v_strides, out.stride(0), out.stride(1),
            out.stride(2), 1 << max(lk - 1, 1).bit_length())
    constants = dict(HEAD_DIM=d, K_SCALE_BLOCK=K_SCALE_BLOCK, QK_INT8=qkv.qk == "int8", PV_FP8=pv_fp8)
    if config is None:
        _attn_fwd_tuned[lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * h)](*args, **constants)
    else:
        _attn_fwd_kernel[(triton.cdiv(lq, config.block_m), b * h)](
            *args, **constants, BLOCK_M=config.block_m, BLOCK_N=config.block_n, num_warps=config.num_warps,
            num_stages=config.num_stages)
    return out


def fp8_attention_triton(q: Tensor, k: Tensor, v: Tensor, *, qk: str = "fp8", pv: str = "fp8",
                         smooth_k: bool = True, balance_qk: bool = True, config: KernelConfig | None = None,
                         out: Tensor | None = None) -> Tensor:
    """Quantise and attend: [B, L, H, D] q, k, v -> [B, Lq, H, D] in v's dtype (into `out` if given)."""
    qkv = quantize_qkv(q, k, v, qk, pv, smooth_k, balance_qk)
    return attention_from_quantized(qkv, tuple(q.shape), k.shape[1], v.dtype, config, out)


def tuned_keys() -> int:
    """How many (shape bucket, variant) keys the autotuner has tuned: a call that raises it tuned."""
    return len(_attn_fwd_tuned.cache)


def last_autotune() -> dict | None:
    """The autotuner's last choice and the median ms of each config in the last tuning (None before any)."""
    best = getattr(_attn_fwd_tuned, "best_config", None)
    if best is None:
        return None
    timings = getattr(_attn_fwd_tuned, "configs_timings", None) or {}
    return {"config": str(best), "timings_ms": {str(c): t[0] if isinstance(t, list) else t
                                               for c, t in timings.items()}}
