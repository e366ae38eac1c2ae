"""FP8 (e4m3) linear layers through torch._scaled_mm: a drop-in for the DiT blocks' nn.Linear.

The weight is quantised once, per output channel ("rowwise") or with one scale for the whole matrix
("tensor"); the activation is quantised on the fly with the same granularity (per token, or per tensor).
_scaled_mm multiplies the e4m3 operands on the tensor cores, applies both scales and the bias and writes the
compute dtype (bf16). Where it runs: CUDA devices of compute capability 8.9 or later (H100), and the CPU
(PyTorch's reference kernel, which the tests use; where a PyTorch's CPU kernel lacks rowwise scales, as 2.11's
does, the same float32 product of the dequantised operands is computed here).

Accuracy: e4m3 keeps 3 mantissa bits, so each operand carries up to 2^-4 relative rounding error; over a
long dot product the output's relative RMS error is about 3-5 % against float32 (bf16 is about 0.4 %). The
unit test bounds it at 8 %.

`convert_to_fp8` swaps the large projections of the transformer blocks (self-attention q/k/v/o,
cross-attention q/o, FFN), which carry nearly all linear FLOPs; the text key/value projections (512 tokens),
the audio injector, embeddings and the float32 head stay as they are. transformer.linear() calls any layer
that is not an nn.Linear directly, which is the only hook this needs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALINGS = ("rowwise", "tensor")
# Projections of each block converted by default (suffixes of names under `blocks.<i>.`).
BLOCK_LAYERS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
                "ffn.0", "ffn.2")
MIN_AMAX = 1e-12  # an all-zero row must not divide by zero


def quantize(x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (e4m3 [M, K], float32 scale) with x ~= q * scale; scale is [M, 1] (rowwise) or a scalar."""
    if scaling == "rowwise":
        amax = torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True, dtype=torch.float32)
    elif scaling == "tensor":
        amax = torch.linalg.vector_norm(x, ord=float("inf"), dtype=torch.float32)
    else:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    scale = amax.clamp(min=MIN_AMAX) / FP8_MAX
    q = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


class FP8Linear(nn.Module):
    """y = x W^T + b with W in e4m3 (quantised once) and x quantised per call; output in `out_dtype`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scaling: str = "rowwise",
                 out_dtype: torch.dtype = torch.bfloat16, use_fast_accum: bool = False) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        if in_features % 16 or out_features % 16:
            raise ValueError(f"_scaled_mm needs both weight dimensions divisible by 16, got {tuple(weight.shape)}")
        self.in_features, self.out_features = in_features, out_features
        self.scaling = scaling
        self.out_dtype = out_dtype
        self.use_fast_accum = use_fast_accum
        q, scale = quantize(weight.detach(), scaling)
        self.register_buffer("weight", q)  # [out, in] row-major: its .t() is the column-major B _scaled_mm wants
        self.register_buffer("weight_scale", scale.reshape(1, -1) if scaling == "rowwise" else scale)
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))

    @classmethod
    def from_linear(cls, layer: nn.Linear, scaling: str = "rowwise", out_dtype: torch.dtype | None = None,
                    use_fast_accum: bool = False) -> FP8Linear:
        """Quantise an nn.Linear; the output dtype defaults to the layer's own (bf16 on GPU)."""
        return cls(layer.weight, layer.bias, scaling, out_dtype or layer.weight.dtype, use_fast_accum)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the FP8 product actually uses (for checks)."""
        scale = self.weight_scale.reshape(-1, 1) if self.scaling == "rowwise" else self.weight_scale
        return self.weight.float() * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        q, scale = quantize(x.reshape(-1, self.in_features), self.scaling)
        if q.device.type == "cpu" and self.scaling == "rowwise" and not cpu_rowwise_supported():
            # what the kernel computes: float32 products of the dequantised operands
            y = ((q.float() * scale) @ self.dequantized_weight().t()).to(self.out_dtype)
            fused = False
        else:
            # _scaled_mm fuses a bf16/fp16 bias; it takes none for a float32 output (the CPU float32 model)
            fused = self.bias is not None and self.out_dtype in (torch.bfloat16, torch.float16)
            y = torch._scaled_mm(q, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                                 bias=self.bias if fused else None, out_dtype=self.out_dtype,
                                 use_fast_accum=self.use_fast_accum)
        if self.bias is not None and not fused:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scaling={self.scaling}, "
                f"out_dtype={self.out_dtype}, fast_accum={self.use_fast_accum}")


@functools.cache
def cpu_rowwise_supported() -> bool:
    """Whether this PyTorch's CPU _scaled_mm takes rowwise scales (2.13 does; 2.11 asserts per-tensor only)."""
    a = torch.ones(16, 16).to(FP8_DTYPE)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError):
        log.info("CPU _scaled_mm has no rowwise scaling in torch %s: FP8Linear emulates it on the CPU",
                 torch.__version__)
        return False
    return True


def default_fp8_filter(name: str) -> bool:
    """The block projections BLOCK_LAYERS (names like 'blocks.7.ffn.0')."""
    parts = name.split(".")
    return len(parts) >= 3 and parts[0] == "blocks" and ".".join(parts[2:]) in BLOCK_LAYERS


@torch.no_grad()
def convert_to_fp8(model: nn.Module, scaling: str = "rowwise", use_fast_accum: bool = False,
                   include: Callable[[str], bool] = default_fp8_filter) -> int:
    """Replace, in place, every nn.Linear whose qualified name `include` accepts by an FP8Linear.

    The original weights are released as each layer is replaced (peak memory grows by one layer).
    Returns the number of layers converted.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and include(name)]
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Linear.from_linear(layer, scaling, use_fast_accum=use_fast_accum))
    log.info("converted %d linear layers to FP8 (%s scaling)", len(targets), scaling)
    return len(targets)
