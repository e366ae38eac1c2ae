"""FP8 rows on the GPU in one pass each way: what causal.KVRows does to every block's keys and values, fused.

Reading, eager PyTorch takes two kernels (the e4m3 -> bf16 conversion, then the per-row scale), writing and reading
the dequantised keys and values twice; writing, fp8.quantize takes six (row maxima, scale, a float32 copy, divide,
clamp, cast) and two copies into the cache. Imported only for CUDA tensors: it imports triton.

The values are the eager path's. Read: an e4m3 value and a bf16 scale are exact in float32, and their product is
rounded once to the output dtype, as PyTorch's bf16 multiply rounds it. Write: the row maximum is exact; the scale is
the maximum times 1/448 rounded to float32 (PyTorch divides by a Python scalar that way on CUDA), each value is
divided by it with IEEE rounding (div_rn, as CUDA's float division), clamped and rounded to nearest even in e4m3, and
the cache keeps the scale rounded to bf16.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .fp8 import FP8_MAX, MIN_AMAX

# float32(1 / 448), formed as PyTorch forms the reciprocal of a Python scalar divisor (in float32, on the host)
INVERSE_FP8_MAX = float(np.float32(1.0) / np.float32(FP8_MAX))
BLOCK_ROWS = 32  # rows of head_dim values per program: 4096 values at head_dim 128


@triton.jit
def _dequantize_rows(q_ptr, scale_ptr, out_ptr, rows, WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    inside = row < rows
    offsets = row[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :]
    q = tl.load(q_ptr + offsets, mask=inside[:, None], other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + row, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (q * scale[:, None]).to(out_ptr.dtype.element_ty), mask=inside[:, None])


@triton.jit
def _quantize_rows(x_ptr, q_ptr, scale_ptr, rows, x_batch_stride, q_batch_stride, scale_batch_stride,
                   WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr, FP8_MAX: tl.constexpr, INVERSE: tl.constexpr,
                   MIN_AMAX: tl.constexpr):
    batch = tl.program_id(1).to(tl.int64)
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    inside = row < rows
    offsets = row[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :]
    x = tl.load(x_ptr + batch * x_batch_stride + offsets, mask=inside[:, None], other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), MIN_AMAX) * INVERSE
    q = tl.math.div_rn(x, scale[:, None])
    q = tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)
    tl.store(q_ptr + batch * q_batch_stride + offsets, q.to(q_ptr.dtype.element_ty), mask=inside[:, None])
    tl.store(scale_ptr + batch * scale_batch_stride + row, scale.to(scale_ptr.dtype.element_ty), mask=inside)


def _power_of_two(width: int) -> bool:
    return width & (width - 1) == 0  # tl.arange spans a row


def _rows_contiguous(t: torch.Tensor) -> bool:
    """Each batch item's rows lie one after another (a slice of tokens out of [B, tokens, heads, D] does)."""
    return t[0].is_contiguous() if t.shape[0] else True


def fusable(q: torch.Tensor, scale: torch.Tensor) -> bool:
    """Contiguous CUDA rows of a power-of-two width, one scale per row."""
    width = q.shape[-1]
    return (q.is_cuda and q.is_contiguous() and scale.is_contiguous() and _power_of_two(width)
            and scale.numel() * width == q.numel())


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q [..., D] in e4m3 times scale [..., 1], in `dtype` (see `fusable` for what it takes)."""
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    width = q.shape[-1]
    rows = q.numel() // width
    _dequantize_rows[(triton.cdiv(rows, BLOCK_ROWS),)](q, scale, out, rows, WIDTH=width, BLOCK_ROWS=BLOCK_ROWS)
    return out


def quantizable(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> bool:
    """x [B, ...rows, D] on CUDA into q (e4m3) and scale [B, ...rows, 1] of its shape, each batch item's rows
    contiguous (slices of the caches' token axis are), D a power of two."""
    return (x.is_cuda and x.is_contiguous() and _power_of_two(x.shape[-1]) and q.shape == x.shape
            and scale.shape == (*x.shape[:-1], 1) and _rows_contiguous(q) and _rows_contiguous(scale))


def quantize_rows_into(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """q, scale = fp8.quantize(x, "rowwise"), written in place (see `quantizable` for what it takes)."""
    batch, width = x.shape[0], x.shape[-1]
    if not batch:
        return
    rows = x[0].numel() // width
    _quantize_rows[(triton.cdiv(rows, BLOCK_ROWS), batch)](
        x, q, scale, rows, x.stride(0), q.stride(0), scale.stride(0),
        WIDTH=width, BLOCK_ROWS=BLOCK_ROWS, FP8_MAX=FP8_MAX, INVERSE=INVERSE_FP8_MAX, MIN_AMAX=MIN_AMAX)
