"""Attention through torch's scaled_dot_product_attention (the official code calls flash-attention varlen).

Wan's sequences are never padded inside one forward (every item of a batch has the same length and the official
k_lens equal the full lengths), so plain dense SDPA computes what flash_attn_varlen_func computes there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over [B, L, heads, head_dim] tensors; returns [B, Lq, heads, head_dim] in v's dtype.

    Like the official wrapper, q and k are brought to v's dtype (the compute dtype: bf16 on GPU, fp32 on CPU)
    and the scale is 1/sqrt(head_dim).
    """
    dtype = v.dtype
    out = F.scaled_dot_product_attention(
        q.to(dtype).transpose(1, 2), k.to(dtype).transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
