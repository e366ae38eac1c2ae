"""FP8 rows back to the compute dtype in one pass on the GPU: what causal.KVRows.read does every forward, fused.

Eager PyTorch takes two kernels for it (the e4m3 -> bf16 conversion, then the per-row scale), writing and reading
the dequantised keys and values twice. Imported only for CUDA tensors: it imports triton. The values are the eager
path's: an e4m3 value and a bf16 scale are exact in float32, and their product is rounded once to the output dtype,
as PyTorch's bf16 multiply rounds it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_ROWS = 32  # rows of head_dim values per program: 4096 values at head_dim 128


@triton.jit
def _dequantize_rows(q_ptr, scale_ptr, out_ptr, rows, WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    inside = row < rows
    offsets = row[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :]
    q = tl.load(q_ptr + offsets, mask=inside[:, None], other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + row, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (q * scale[:, None]).to(out_ptr.dtype.element_ty), mask=inside[:, None])


def fusable(q: torch.Tensor, scale: torch.Tensor) -> bool:
    """Contiguous CUDA rows of a power-of-two width, one scale per row."""
    width = q.shape[-1]
    return (q.is_cuda and q.is_contiguous() and scale.is_contiguous() and width & (width - 1) == 0
            and scale.numel() * width == q.numel())


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q [..., D] in e4m3 times scale [..., 1], in `dtype` (see `fusable` for what it takes)."""
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    width = q.shape[-1]
    rows = q.numel() // width
    _dequantize_rows[(triton.cdiv(rows, BLOCK_ROWS),)](q, scale, out, rows, WIDTH=width, BLOCK_ROWS=BLOCK_ROWS)
    return out
