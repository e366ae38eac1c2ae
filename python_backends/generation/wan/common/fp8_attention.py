"""8-bit self-attention for Hopper's FP8/INT8 tensor cores: the quantised math, its torch emulation, the dispatch.

The fused Triton kernel (fp8_attention_triton.py, imported only when a CUDA tensor needs it) computes, per
(batch, head), softmax(Q K^T / sqrt(d)) V with:

* Q and K in 8 bits, QK_MODES: e4m3 ("fp8") or int8 (SageAttention's choice: on data spread evenly inside its
  range int8 keeps 7 bits against e4m3's 3 mantissa bits, about 3x less rounding error in the scores, at the
  same tensor-core rate on Hopper). Q has one scale per token (the softmax scale and log2(e) folded into it);
* K smoothed, then one scale per block of K_SCALE_BLOCK tokens. Smoothing subtracts K's mean over the tokens
  (per head and channel): every score of a query row shifts by the same q . mean, which the softmax ignores,
  while the quantisation range no longer has to hold that common offset (SageAttention's trick);
* Q and K balanced per channel: Q's channel c times s_c and K's divided by s_c leave every q . k unchanged;
  s_c = sqrt(max|K_c| / max|Q_c|) moves an outlier channel (a large RMS-norm gain, say) half into the other
  operand, so neither's per-token scale is set by it alone (QServe's SmoothAttention; one reduction each);
* the online softmax in float32. P is formed as exp2(s - m + P_SHIFT) so that its largest value is 2^8, well
  inside e4m3's range (P in [0, 1] would put small weights among e4m3's subnormals); the shift cancels in the
  final division by the row sum;
* P V either in e4m3 (P rounded to e4m3, V in e4m3 with one scale per head and channel, the product of each key
  block added to the float32 accumulator on its own, because Hopper's FP8 tensor-core accumulator keeps fewer
  bits than float32, as SageAttention2 and DeepSeek-V3 report) or in bf16 (P and V in bf16, as the bf16
  kernels do), PV_MODES.

`emulate_fp8_attention` is the same computation in torch (the same quantisers, then `attend_quantized`: the
kernel's online softmax block by block in its order): the reference the kernel is tested against (through the
Triton interpreter) and what `fp8_attention` runs on the CPU. Float32 or float64 attention is the reference
both are measured against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .fp8 import FP8_DTYPE, FP8_MAX, MIN_AMAX

QK_MODES = ("fp8", "int8")
PV_MODES = ("fp8", "bf16")
INT8_MAX = 127.0
# The kernel reads int32 scores as the float32 1.5 * 2^23 + score (a bit trick, exact) and folds the offset
# into the softmax's per-row constant; the emulation does the same arithmetic.
INT8_SCORE_OFFSET = 12582912.0
K_SCALE_BLOCK = 128  # tokens per K scale; the kernel's BLOCK_N divides it
TOKEN_PAD = 128  # quantised Q, K and V are stored padded to a multiple of this many tokens (zeros)
P_SHIFT = 8.0  # log2 of P's largest value in the FP8 P.V product
LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (32, 64, 128)
BALANCE_LIMIT = 1e4  # bound on the Q/K channel balancing factor (a channel that is all zero in Q or K)


def padded_length(length: int) -> int:
    return -(-length // TOKEN_PAD) * TOKEN_PAD


def softmax_scale_log2(head_dim: int) -> float:
    """SDPA's 1/sqrt(d), times log2(e) because the kernel exponentiates with exp2."""
    return LOG2E / math.sqrt(head_dim)


def check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Shapes the kernel takes: [B, L, heads, head_dim] each, K and V of one length, a supported head_dim."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, L, heads, head_dim], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must share batch, heads "
                         f"and head_dim, and k and v their length")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"8-bit attention supports head_dim {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}")
    if min(q.shape[1], k.shape[1]) < 1:
        raise ValueError("8-bit attention needs at least one query and one key")


def check_modes(qk: str, pv: str) -> None:
    if qk not in QK_MODES:
        raise ValueError(f"qk must be one of {QK_MODES}, got {qk!r}")
    if pv not in PV_MODES:
        raise ValueError(f"pv must be one of {PV_MODES}, got {pv!r}")


def pv_dtype(v: Tensor) -> torch.dtype:
    """The 16-bit type of P and V in the 16-bit P.V product: V's own when it is 16-bit, else bf16."""
    return v.dtype if v.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


# ---- quantisers (the kernels' conventions: x ~= x_q * scale) --------------------------------------------------


def _quantize(x: Tensor, amax: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """x / (amax / qmax), rounded to e4m3 (nearest even, saturating) or to int8 (nearest even); and the scale."""
    qmax = FP8_MAX if mode == "fp8" else INT8_MAX
    y = x * (qmax / amax)
    q = y.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE) if mode == "fp8" else y.round_().clamp_(-qmax, qmax).to(torch.int8)
    return q, amax / qmax


def quantize_per_token(x: Tensor, mode: str = "fp8", scale_mul: float = 1.0,
                       channel_mul: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """[B, L, H, D] (times `channel_mul` [B, H, D] if given) -> (8-bit [B, H, L, D], float32 [B, H, L]).

    x * channel_mul ~= x_q * scale / scale_mul.
    """
    xf = x.float().transpose(1, 2)
    if channel_mul is not None:
        xf = xf * channel_mul.unsqueeze(2)
    amax = torch.linalg.vector_norm(xf, ord=float("inf"), dim=-1, keepdim=True).clamp_(min=MIN_AMAX)
    q, scale = _quantize(xf, amax, mode)
    return q, scale.squeeze(-1) * scale_mul


def key_mean(k: Tensor) -> Tensor:
    """K's mean over the tokens, per batch, head and channel: [B, L, H, D] -> float32 [B, H, D]."""
    return k.mean(dim=1, dtype=torch.float32)


def quantize_per_block(x: Tensor, mode: str = "fp8", block: int = K_SCALE_BLOCK, mean: Tensor | None = None,
                       channel_mul: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """[B, L, H, D] (minus `mean`, times `channel_mul`, each [B, H, D], if given) -> (8-bit [B, H, L, D],
    float32 [B, H, ceil(L / block)]): one scale per block of `block` tokens of a head (the last may be shorter).
    """
    xf = x.float().transpose(1, 2)
    if mean is not None:
        xf = xf - mean.unsqueeze(2)
    if channel_mul is not None:
        xf = xf * channel_mul.unsqueeze(2)
    b, h, length, d = xf.shape
    blocks = -(-length // block)
    padded = F.pad(xf, (0, 0, 0, blocks * block - length)).reshape(b, h, blocks, block * d)
    amax = torch.linalg.vector_norm(padded, ord=float("inf"), dim=-1).clamp_(min=MIN_AMAX)
    q, _ = _quantize(xf, amax.repeat_interleave(block, dim=-1)[..., :length].unsqueeze(-1), mode)
    return q, amax / (FP8_MAX if mode == "fp8" else INT8_MAX)


def channel_amax(v: Tensor) -> Tensor:
    """Largest |v| over the tokens, per batch, head and channel: [B, L, H, D] -> float32 [B, H, D]."""
    return torch.linalg.vector_norm(v, ord=float("inf"), dim=1, dtype=torch.float32).clamp_(min=MIN_AMAX)


@dataclass(frozen=True)
class Smoothing:
    """Per (batch, head, channel) [B, H, D] float32 transforms before quantising: K - k_mean, then Q * q_mul and
    K * k_mul (= 1 / q_mul); None where not applied."""

    k_mean: Tensor | None
    q_mul: Tensor | None
    k_mul: Tensor | None


def smoothing(q: Tensor, k: Tensor, smooth_k: bool = True, balance_qk: bool = True) -> Smoothing:
    """K's mean (smooth_k) and the Q/K channel balance (balance_qk), from reductions over the tokens."""
    mean = key_mean(k) if smooth_k else None
    if not balance_qk:
        return Smoothing(mean, None, None)
    k_min, k_max = torch.aminmax(k, dim=1)
    center = mean if mean is not None else torch.zeros((), device=k.device)
    k_amax = torch.maximum(k_max.float() - center, center - k_min.float()).clamp_(min=MIN_AMAX)
    balance = (k_amax / channel_amax(q)).sqrt_().clamp_(1 / BALANCE_LIMIT, BALANCE_LIMIT)
    return Smoothing(mean, balance, 1 / balance)


def quantize_per_channel(v: Tensor) -> tuple[Tensor, Tensor]:
    """[B, L, H, D] -> (e4m3 [B, H, L, D], float32 [B, H, D]): one scale per head and channel."""
    q, scale = _quantize(v.float().transpose(1, 2), channel_amax(v).unsqueeze(2), "fp8")
    return q, scale.squeeze(2)


# ---- the computation ------------------------------------------------------------------------------------------


@torch.no_grad()
def emulate_fp8_attention(q: Tensor, k: Tensor, v: Tensor, *, qk: str = "fp8", pv: str = "fp8",
                          smooth_k: bool = True, balance_qk: bool = True, block_n: int = K_SCALE_BLOCK) -> Tensor:
    """What the kernel computes, in torch: [B, Lq, H, D] in, float32 [B, Lq, H, D] out."""
    check_inputs(q, k, v)
    check_modes(qk, pv)
    smooth = smoothing(q, k, smooth_k, balance_qk)
    q8, q_scale = quantize_per_token(q, qk, softmax_scale_log2(q.shape[-1]), smooth.q_mul)
    k8, k_scale = quantize_per_block(k, qk, K_SCALE_BLOCK, smooth.k_mean, smooth.k_mul)
    if pv == "fp8":
        values, v_scale = quantize_per_channel(v)
    else:
        values, v_scale = v.to(pv_dtype(v)).transpose(1, 2), None
    return attend_quantized(q8, q_scale, k8, k_scale, values, v_scale, block_n).transpose(1, 2)


def attend_quantized(q8: Tensor, q_scale: Tensor, k8: Tensor, k_scale: Tensor, values: Tensor,
                     v_scale: Tensor | None, block_n: int = K_SCALE_BLOCK) -> Tensor:
    """The kernel's online softmax over quantised operands, in torch: float32 [B, H, Lq, D].

    q8 [B, H, Lq, D] and k8 [B, H, Lk, D] (e4m3 or int8) with q_scale [B, H, Lq] and k_scale [B, H, blocks];
    values [B, H, Lk, D], e4m3 with v_scale [B, H, D], or 16-bit with None. Key blocks of `block_n` tokens are
    visited in order, so P is rounded relative to the running row maximum exactly as the kernel rounds it.
    """
    if K_SCALE_BLOCK % block_n:
        raise ValueError(f"block_n must divide {K_SCALE_BLOCK}, got {block_n}")
    fp8_pv = values.dtype == FP8_DTYPE
    shift, p_dtype = (P_SHIFT, FP8_DTYPE) if fp8_pv else (0.0, values.dtype)
    offset = INT8_SCORE_OFFSET if q8.dtype == torch.int8 else 0.0
    qf = q8.float()
    b, h, lq, d = qf.shape
    row_max = qf.new_full((b, h, lq), float("-inf"))
    row_sum = qf.new_zeros(b, h, lq)
    acc = qf.new_zeros(b, h, lq, d)
    for start in range(0, k8.shape[2], block_n):
        end = min(start + block_n, k8.shape[2])
        scores = qf @ k8[:, :, start:end].float().transpose(-1, -2) + offset
        c = q_scale * k_scale[:, :, start // K_SCALE_BLOCK].unsqueeze(-1)  # [B, H, Lq]
        new_max = torch.maximum(row_max, (scores.amax(-1) - offset) * c)
        p = torch.exp2(scores * c.unsqueeze(-1) - (offset * c + new_max - shift).unsqueeze(-1))
        alpha = torch.exp2(row_max - new_max)
        row_sum = row_sum * alpha + p.sum(-1)
        acc = acc * alpha.unsqueeze(-1) + p.to(p_dtype).float() @ values[:, :, start:end].float()
        row_max = new_max
    out = acc / row_sum.unsqueeze(-1)
    return out * v_scale.unsqueeze(2) if fp8_pv else out


def reference_attention(q: Tensor, k: Tensor, v: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Plain softmax attention in `dtype` (float64 for tests, float32 on the GPU): [B, L, H, D] layout."""
    qd, kd, vd = (t.to(dtype).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax((qd @ kd.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights @ vd).transpose(1, 2)


@torch.library.custom_op("talkinghead::fp8_attention", mutates_args=())
def _fp8_attention_cuda(q: Tensor, k: Tensor, v: Tensor, qk: str, pv: str, smooth_k: bool,
                        balance_qk: bool) -> Tensor:
    # An opaque op: torch.compile of a block keeps it whole instead of tracing the Triton launch.
    from .fp8_attention_triton import fp8_attention_triton

    return fp8_attention_triton(q, k, v, qk=qk, pv=pv, smooth_k=smooth_k, balance_qk=balance_qk)


@_fp8_attention_cuda.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, qk: str, pv: str, smooth_k: bool, balance_qk: bool) -> Tensor:
    return q.new_empty(q.shape, dtype=v.dtype)


def fp8_attention(q: Tensor, k: Tensor, v: Tensor, *, qk: str = "fp8", pv: str = "fp8", smooth_k: bool = True,
                  balance_qk: bool = True) -> Tensor:
    """Softmax attention over [B, L, heads, head_dim] with Q.K^T in `qk` and P.V in `pv`; out in v's dtype.

    CUDA tensors run the fused Triton kernel (compute capability 8.9+); CPU tensors run the torch emulation of
    the same quantised math (slow: for tests and CPU runs of the same setting).
    """
    check_inputs(q, k, v)
    check_modes(qk, pv)
    if q.is_cuda:
        return _fp8_attention_cuda(q, k, v, qk, pv, smooth_k, balance_qk)
    return emulate_fp8_attention(q, k, v, qk=qk, pv=pv, smooth_k=smooth_k, balance_qk=balance_qk).to(v.dtype)


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the fused kernel cannot run on `device` (None when it can); the CPU runs the emulation."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"8-bit attention runs on CUDA GPUs (or emulated on the CPU), not on {device.type}"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return (f"8-bit attention needs FP8 tensor cores (compute capability 8.9+: Ada, Hopper); "
                f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}")
    try:
        import triton  # noqa: F401
    except ImportError:
        return "8-bit attention needs the `triton` package (it ships with PyTorch's CUDA wheels)"
    return None
