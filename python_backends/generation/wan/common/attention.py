"""Attention through torch's scaled_dot_product_attention (the official code calls flash-attention varlen).

Wan's sequences are never padded inside one forward (every item of a batch has the same length and the official
k_lens equal the full lengths), so plain dense SDPA computes what flash_attn_varlen_func computes there.

`attention_function` picks the self-attention of the DiT blocks by name (ATTENTION_BACKENDS): SDPA, or our
8-bit Triton kernel (fp8_attention.py) with Q.K^T in e4m3 or int8 and P.V in e4m3 or bf16.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

# (q, k, v) [B, L, heads, head_dim] -> [B, L, heads, head_dim]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SDPA = "sdpa"
# name -> (Q.K^T operand type, P.V operand type) of the 8-bit kernel; SDPA has none
ATTENTION_BACKENDS: dict[str, tuple[str, str] | None] = {
    SDPA: None,
    "triton_qk_fp8_pv_fp8": ("fp8", "fp8"),
    "triton_qk_fp8_pv_bf16": ("fp8", "bf16"),
    "triton_qk_int8_pv_fp8": ("int8", "fp8"),
    "triton_qk_int8_pv_bf16": ("int8", "bf16"),
}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over [B, L, heads, head_dim] tensors; returns [B, Lq, heads, head_dim] in v's dtype.

    Like the official wrapper, q and k are brought to v's dtype (the compute dtype: bf16 on GPU, fp32 on CPU)
    and the scale is 1/sqrt(head_dim).
    """
    dtype = v.dtype
    out = F.scaled_dot_product_attention(
        q.to(dtype).transpose(1, 2), k.to(dtype).transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def check_attention_backend(backend: str, device: torch.device | str) -> None:
    """Raise ValueError naming the problem when `backend` is unknown or cannot run on `device`."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
    if ATTENTION_BACKENDS[backend] is not None:
        from .fp8_attention import unavailable_reason

        reason = unavailable_reason(device)
        if reason:
            raise ValueError(f"attention backend {backend}: {reason}; use {SDPA}")


def attention_function(backend: str) -> AttentionFn:
    """The self-attention function named `backend` (on the CPU the 8-bit ones run their torch emulation)."""
    check_attention_backend(backend, "cpu")
    modes = ATTENTION_BACKENDS[backend]
    if modes is None:
        return attention
    from .fp8_attention import fp8_attention

    return partial(fp8_attention, qk=modes[0], pv=modes[1])
