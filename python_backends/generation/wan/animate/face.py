"""Wan-Animate's face path, rewritten: LIA motion encoder, face encoder and the face adapter blocks.

Module and parameter names follow the official classes one to one (wan/modules/animate/motion_encoder.py and
face_blocks.py of Wan-Video/Wan2.2), so the released shards load strictly:

* `motion_encoder` (LIA `Generator`): `enc.net_app.convs.*` (StyleGAN2-style equalised convolutions with blur
  down-sampling; the blur kernels are persistent buffers and are stored in the checkpoint), `enc.fc.*` (five
  equalised linear layers, no activation between them) and `dec.direction.weight` (the motion directions,
  orthonormalised by QR at run time). A 512x512 face crop in [-1, 1] -> one 512-d motion vector.
* `face_encoder` (`FaceEncoder`): causal 1-D convolutions over the per-frame motion vectors (stride 4 in total,
  matching the VAE's temporal stride) -> per latent frame `face_heads` tokens plus a learned padding token.
* `face_adapter.fuser_blocks.*` (`FaceBlock`): each latent frame's video tokens cross-attend to that frame's
  face tokens; the result is added to the residual stream after every fifth DiT block.

Precision mirrors the official bf16 autocast run: convolutions and linear layers compute in the weights'
dtype, layer norms in float32, the QR of the motion directions in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.attention import attention
from ..common.transformer import RMSNorm, linear
from ..s2v.model import CausalConv1d

BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)
LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)
MOTION_ENCODE_BATCH = 8  # official after_patch_embedding encodes face crops 8 at a time


def make_blur_kernel(taps: Sequence[float] = BLUR_KERNEL) -> torch.Tensor:
    """Separable FIR kernel normalised to sum 1 (official make_kernel): outer(k, k) / sum."""
    k = torch.tensor(taps, dtype=torch.float32, device="cpu")  # real values even while building on meta
    k = torch.outer(k, k)
    return k / k.sum()


class Blur(nn.Module):
    """upfirdn2d with up = down = 1: pad, then a depthwise convolution with the flipped kernel."""

    def __init__(self, pad: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel())  # persistent: the official checkpoint stores it
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        p0, p1 = self.pad
        weight = torch.flip(self.kernel, [0, 1]).to(x.dtype).expand(c, 1, *self.kernel.shape)
        return F.conv2d(F.pad(x, [p0, p1, p0, p1]), weight, groups=c)


class EqualConv2d(nn.Module):
    """Conv2d whose weight is scaled by 1/sqrt(fan_in) at run time (equalised learning rate)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.scale
        bias = None if self.bias is None else self.bias.to(weight.dtype)
        return F.conv2d(x.to(weight.dtype), weight, bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with run-time weight scaling 1/sqrt(in_dim) (lr_mul 1, no activation, as the official fc)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight * self.scale, self.bias)


class FusedLeakyReLU(nn.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2); the bias is stored as [1, C, 1, 1] like the official one."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channel, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.to(x.dtype), LEAKY_SLOPE) * LEAKY_GAIN


class ScaledLeakyReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, LEAKY_SLOPE)


class ConvLayer(nn.Sequential):
    """[Blur (when down-sampling)], EqualConv2d, [FusedLeakyReLU or ScaledLeakyReLU]: official indices kept."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = (len(BLUR_KERNEL) - 2) + (kernel_size - 1)
            layers.append(Blur(pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU())
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class EncoderApp(nn.Module):
    """Appearance network: 1x1 conv, len(channels) - 1 down-sampling residual blocks, a 4x4 conv to one vector."""

    def __init__(self, channels: Sequence[int], w_dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ConvLayer(3, channels[0], 1)])
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.convs.append(ResBlock(c_in, c_out))
        self.convs.append(EqualConv2d(channels[-1], w_dim, 4, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return x.squeeze(-1).squeeze(-1)


class Encoder(nn.Module):
    def __init__(self, channels: Sequence[int], dim: int, dim_motion: int) -> None:
        super().__init__()
        self.net_app = EncoderApp(channels, dim)
        self.fc = nn.Sequential(*[EqualLinear(dim, dim) for _ in range(4)], EqualLinear(dim, dim_motion))

    def enc_motion(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net_app(x))


class Direction(nn.Module):
    def __init__(self, style_dim: int, motion_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(style_dim, motion_dim))

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        """alpha [N, motion_dim] -> sum_i alpha_i * q_i [N, style_dim], q the QR basis of the directions.

        The official code forms diag_embed(alpha) @ Q^T and sums over the directions, which is alpha @ Q^T.
        """
        weight = self.weight + 1e-8
        q, _ = torch.linalg.qr(weight.float())
        q = q.to(weight.dtype).float()  # official custom_qr hands Q back in the weights' dtype
        return alpha.float() @ q.T


class Synthesis(nn.Module):
    def __init__(self, style_dim: int, motion_dim: int) -> None:
        super().__init__()
        self.direction = Direction(style_dim, motion_dim)


class MotionEncoder(nn.Module):
    """Official `Generator` (LIA) reduced to what Wan-Animate uses: face crops -> motion vectors."""

    def __init__(self, channels: Sequence[int], style_dim: int, motion_dim: int) -> None:
        super().__init__()
        self.size = 4 * 2 ** (len(channels) - 1)
        self.enc = Encoder(channels, style_dim, motion_dim)
        self.dec = Synthesis(style_dim, motion_dim)

    def get_motion(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, size, size] in [-1, 1] -> [N, style_dim] float32."""
        if faces.dim() != 4 or faces.shape[1] != 3 or tuple(faces.shape[2:]) != (self.size, self.size):
            raise ValueError(f"face crops must be [N, 3, {self.size}, {self.size}], got {tuple(faces.shape)}")
        return self.dec.direction(self.enc.enc_motion(faces))


class FaceEncoder(nn.Module):
    """Per-frame motion vectors [B, T, C_in] -> face tokens [B, T', heads + 1, dim] (T' = causal stride 4)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_heads: int, inner_dim: int = 1024) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.inner_dim = inner_dim
        self.conv1_local = CausalConv1d(in_dim, inner_dim * num_heads, 3, stride=1)
        self.conv2 = CausalConv1d(inner_dim, inner_dim, 3, stride=2)
        self.conv3 = CausalConv1d(inner_dim, inner_dim, 3, stride=2)
        self.out_proj = nn.Linear(inner_dim, hidden_dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, hidden_dim))

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, T] -> SiLU(LayerNorm over C) as [N, T, C] (no affine, eps 1e-6, float32)."""
        x = x.transpose(1, 2)
        return F.silu(F.layer_norm(x.float(), (x.shape[-1],), eps=1e-6)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        dtype = self.out_proj.weight.dtype
        x = self.conv1_local(x.to(dtype).transpose(1, 2))  # b (n c) t
        x = x.reshape(b, self.num_heads, self.inner_dim, t).flatten(0, 1)  # (b n) c t
        x = self._norm_act(x).transpose(1, 2)
        x = self._norm_act(self.conv2(x)).transpose(1, 2)
        x = self._norm_act(self.conv3(x))  # (b n) t' c
        x = linear(self.out_proj, x)
        x = x.reshape(b, self.num_heads, x.shape[1], -1).transpose(1, 2)  # b t' n c
        padding = self.padding_tokens.to(x.dtype).expand(b, x.shape[1], 1, -1)
        return torch.cat([x, padding], dim=2)


class FaceBlock(nn.Module):
    """Video tokens of latent frame f attend to the face tokens of frame f (official FaceBlock)."""

    def __init__(self, hidden_size: int, heads_num: int) -> None:
        super().__init__()
        self.heads_num = heads_num
        head_dim = hidden_size // heads_num
        self.linear1_kv = nn.Linear(hidden_size, hidden_size * 2)
        self.linear1_q = nn.Linear(hidden_size, hidden_size)
        self.linear2 = nn.Linear(hidden_size, hidden_size)
        self.q_norm = RMSNorm(head_dim, eps=1e-6)
        self.k_norm = RMSNorm(head_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, motion_vec: torch.Tensor) -> torch.Tensor:
        """x [B, T*S, C] (frame-major tokens), motion_vec [B, T, N, C] -> update [B, T*S, C]."""
        b, t, n, c = motion_vec.shape
        h = self.heads_num
        if x.shape[1] % t:
            raise ValueError(f"{x.shape[1]} video tokens do not split into {t} latent frames")
        x_motion = F.layer_norm(motion_vec.float(), (c,), eps=1e-6)
        x_feat = F.layer_norm(x.float(), (c,), eps=1e-6)
        kv = linear(self.linear1_kv, x_motion).reshape(b, t, n, 2, h, c // h)
        k, v = kv.unbind(3)
        q = linear(self.linear1_q, x_feat).reshape(b, -1, h, c // h)
        q = self.q_norm(q).to(v.dtype)
        k = self.k_norm(k).to(v.dtype)
        q = q.reshape(b * t, -1, h, c // h)  # (b t) s h d
        out = attention(q, k.flatten(0, 1), v.flatten(0, 1))  # (b t) s h d
        return linear(self.linear2, out.reshape(b, -1, c))


class FaceAdapter(nn.Module):
    def __init__(self, hidden_dim: int, heads_num: int, num_adapter_layers: int) -> None:
        super().__init__()
        self.fuser_blocks = nn.ModuleList(FaceBlock(hidden_dim, heads_num) for _ in range(num_adapter_layers))
