"""Shared Wan DiT building blocks (wan/modules/model.py of Wan-Video/Wan2.2), rewritten.

Module and parameter names follow the official classes one to one, so a state dict of the official model
loads strictly: WanSelfAttention (q, k, v, o, norm_q, norm_k), WanAttentionBlock (norm1, self_attn, norm3,
cross_attn, norm2, ffn.0/ffn.2, modulation), Head (norm, head, modulation).

Precision follows the official run under `autocast(bf16)` with inner `autocast(float32)` regions: every linear
layer computes in the weights' dtype (bf16 on GPU), while layer norms, RMS norms, the time embedding, the
modulation arithmetic and the output head compute in float32. Once the first block has added its gated
float32 update, the residual stream is float32, as in the official run. With float32 weights (CPU) everything
is float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionFn, attention

ROPE_THETA = 10000.0


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear layer computed in its weights' dtype (what autocast does to the official bf16 model).

    A drop-in replacement that is not an nn.Linear (fp8.FP8Linear) is called as is: it owns its precision.
    """
    if not isinstance(layer, nn.Linear):
        return layer(x)
    return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)


def linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A linear layer computed in float32 (the official `autocast(dtype=float32)` regions)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class RMSNorm(nn.Module):
    """WanRMSNorm: normalise in float32, return the input dtype, then scale (q/k norm over the full width)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """WanLayerNorm: layer norm computed in float32 (weights too), returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, dim] float64 (cos half, then sin half), as the official timestep embedding."""
    half = dim // 2
    position = position.to(torch.float64)
    inv = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device).div(half))
    sinusoid = torch.outer(position, inv)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def rope_axis_sizes(head_dim: int) -> tuple[int, int, int]:
    """Complex channels given to the frame, height and width axes (official split c - 2(c//3), c//3, c//3)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_cos_sin(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for integer (frame, height, width) positions [S, 3] -> cos, sin [S, head_dim // 2] float32.

    The official code multiplies by `polar(1, p * theta_j)` from a float64 table (`rope_params`), conjugated
    for negative frame positions; a signed position gives the same angle. Angles are formed in float64.
    """
    angles = []
    for axis, size in enumerate(rope_axis_sizes(head_dim)):
        real_dim = 2 * size
        inv = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, real_dim, 2, dtype=torch.float64).div(real_dim))
        angles.append(positions[:, axis : axis + 1].to(torch.float64) * inv)
    angle = torch.cat(angles, dim=1)
    return torch.cos(angle).float(), torch.sin(angle).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of [B, S, heads, head_dim] by the tables [S, head_dim // 2]; float32 out."""
    b, s, n, d = x.shape
    pairs = x.float().reshape(b, s, n, d // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(3)


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn: AttentionFn = attention) -> torch.Tensor:
        """`attn` computes softmax attention of the rotated q, k and v; sequence parallelism swaps it."""
        b, s = x.shape[:2]
        shape = (b, s, self.num_heads, self.head_dim)
        q = self.norm_q(linear(self.q, x)).view(shape)
        k = self.norm_k(linear(self.k, x)).view(shape)
        v = linear(self.v, x).view(shape)
        # The official attention wrapper casts the rotated float32 q and k to the compute dtype; casting here, in
        # the compiled block, writes them once in that dtype instead of in float32 (the same rounding).
        out = attn(apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype), v)
        return linear(self.o, out.flatten(2))


class WanCrossAttention(WanSelfAttention):
    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context's keys and values [B, L, heads, head_dim]."""
        b = context.shape[0]
        n, d = self.num_heads, self.head_dim
        return self.norm_k(linear(self.k, context)).view(b, -1, n, d), linear(self.v, context).view(b, -1, n, d)

    def forward(self, x: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """`context` [B, L, dim], or its keys and values from context_kv (a streaming forward, whose prompt is the
        same for every block, computes them once, as LiveAvatar's crossattn_cache keeps them)."""
        b = x.shape[0]
        q = self.norm_q(linear(self.q, x)).view(b, -1, self.num_heads, self.head_dim)
        k, v = context if isinstance(context, tuple) else self.context_kv(context)
        return linear(self.o, attention(q, k, v).flatten(2))


def _segments(bounds: Sequence[int]) -> list[tuple[int, int, int]]:
    """(group, start, end) for each non-empty token range; group g uses modulation slot g."""
    return [(g, a, b) for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, bounds: Sequence[int]) -> torch.Tensor:
    """x * (1 + scale) + shift with per-range modulation slots; shift/scale [B, G, C], bounds G + 1 offsets."""
    parts = [x[:, a:b] * (1 + scale[:, g : g + 1]) + shift[:, g : g + 1] for g, a, b in _segments(bounds)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def gate(y: torch.Tensor, gates: torch.Tensor, bounds: Sequence[int]) -> torch.Tensor:
    """y * gate per token range (float32 result, as in the official autocast(float32) region)."""
    parts = [y[:, a:b] * gates[:, g : g + 1] for g, a, b in _segments(bounds)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class WanAttentionBlock(nn.Module):
    """Self-attention, text cross-attention and FFN with 6-way time modulation.

    `e` is [B, 6, G, dim] float32 (the time projection); token range g (bounds[g]:bounds[g+1]) uses slot g.
    One range gives the T2V behaviour; S2V uses two (noisy tokens, then reference/motion tokens).

    `residual_dtype` None is the official arithmetic: the residual stream leaves the block in float32. A dtype
    (LiveAvatar's bf16) is what LiveAvatar's CausalWanAttentionBlock_S2V does: the block still adds its updates
    in float32, but rounds the stream to that dtype before the cross-attention's norm and returns it in that dtype.
    """

    residual_dtype: torch.dtype | None = None

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True, cross_attn_norm: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))  # filled by loading or init_random_weights_

    def forward(self, x: torch.Tensor, e: torch.Tensor, bounds: Sequence[int], cos: torch.Tensor,
                sin: torch.Tensor, context: torch.Tensor, self_attention: AttentionFn = attention) -> torch.Tensor:
        mod = self.modulation.float().unsqueeze(2) + e
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = mod.unbind(dim=1)
        y = self.self_attn(modulate(self.norm1(x).float(), shift_msa, scale_msa, bounds), cos, sin, self_attention)
        x = x + gate(y, gate_msa, bounds)
        rounded = x if self.residual_dtype is None else x.to(self.residual_dtype)
        x = x + self.cross_attn(self.norm3(rounded), context)
        h = modulate(self.norm2(x).float(), shift_ffn, scale_ffn, bounds)
        y = linear(self.ffn[2], F.gelu(linear(self.ffn[0], h), approximate="tanh"))
        x = x + gate(y, gate_ffn, bounds)
        return x if self.residual_dtype is None else x.to(self.residual_dtype)


class Head(nn.Module):
    """Output head (S2V variant: one modulation vector per sample), computed in float32."""

    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        mod = self.modulation.float() + e.float().unsqueeze(1)
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        return linear_fp32(self.head, self.norm(x).float() * (1 + scale) + shift)


def time_embedding_fp32(time_embedding: nn.Sequential, time_projection: nn.Sequential, freq_dim: int,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps [N] -> (e [N, dim], e0 [N, 6, dim]), all float32 as in the official autocast(float32) region."""
    emb = sinusoidal_embedding_1d(freq_dim, t).float()
    e = linear_fp32(time_embedding[2], F.silu(linear_fp32(time_embedding[0], emb)))
    e0 = linear_fp32(time_projection[1], F.silu(e))
    return e, e0.unflatten(1, (6, e.shape[-1]))


def embed_text(text_embedding: nn.Sequential, context: torch.Tensor) -> torch.Tensor:
    """T5 features [B, L, text_dim] -> [B, L, dim] in the compute dtype (Linear, GELU-tanh, Linear)."""
    return linear(text_embedding[2], F.gelu(linear(text_embedding[0], context), approximate="tanh"))


def conv_in_weight_dtype(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A convolution computed in its weights' dtype."""
    return conv(x.to(conv.weight.dtype))


def unpatchify(x: torch.Tensor, grid: Sequence[int], patch_size: Sequence[int], channels: int) -> torch.Tensor:
    """[B, f*h*w, prod(patch)*C] -> [B, C, f*pt, h*ph, w*pw] (official 'fhwpqrc->cfphqwr')."""
    f, h, w = grid
    p, q, r = patch_size
    b = x.shape[0]
    u = x[:, : f * h * w].reshape(b, f, h, w, p, q, r, channels)
    u = torch.einsum("bfhwpqrc->bcfphqwr", u)
    return u.reshape(b, channels, f * p, h * q, w * r)
