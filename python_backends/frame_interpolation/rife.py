"""RIFE 4.26 (hzwer/Practical-RIFE, MIT): the IFNet of its released flownet.pkl, written from the release's
train_log/IFNet_HDv3.py, which LightX2V ships as lightx2v/models/vfi/rife/train_log/IFNet_HDv3.py and runs with
the RIFEv4.26_0921 weights.

IFNet: a shared encoder (`encode`, 3 -> 4 feature channels at full size) and five IFBlocks (`block0`..`block4`,
widths 192, 128, 96, 64, 32) that refine a bidirectional flow from time t (4 channels), a blend mask and 8
feature channels, coarse to fine at 1/16, 1/8, 1/4, 1/2 and 1/1 of the frame (each divided by `scale`). Every
block sees both frames (warped by the flow so far), both encodings (warped), the time t as a constant channel,
the mask and features of the previous block, and (from block1 on) the flow itself. The frame at t is
sigmoid(mask) * I0(x + F_t0) + (1 - sigmoid(mask)) * I1(x + F_t1); the release's refinement UNet is unused
("contextnet is removed").

Input rules of the official inference (RIFE_HDv3.Model.inference as LightX2V's RIFEWrapper calls it): RGB in
[0, 1], zero-padded on the right and bottom to a multiple of max(128, 128 / scale), scale in {0.25, 0.5, 1, 2,
4}; the output is cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .flow_interpolator import to_frames, to_tensor
from .warp import backward_warp

NAME = "rife-4.26"
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
PAD_MULTIPLE = 128
ENCODED = 4  # channels of the encoder's output
FEATURES = 8  # feature channels a block hands to the next
BLOCK_WIDTHS = (192, 128, 96, 64, 32)
BLOCK_SCALES = (16, 8, 4, 2, 1)  # divided by `scale`
RESIDUAL_CONVS = 8


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class Encoder(nn.Module):
    """IFNet.encode (Head): keys cnn0..cnn3."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, 16, 3, 2, 1)
        self.cnn1 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(16, ENCODED, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _leaky(self.cnn0(x))
        x = _leaky(self.cnn1(x))
        x = _leaky(self.cnn2(x))
        return self.cnn3(x)


class ConvLeaky(nn.Sequential):
    """conv(...) of the release: keys 0.weight, 0.bias."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(0.2))


class ResidualConv(nn.Module):
    """ResConv: leaky(conv(x) * beta + x); keys conv.weight, conv.bias, beta."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _leaky(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    """Two stride-2 convs, eight residual convs, a stride-2 transposed conv to 4 x 13 channels and a 2x pixel
    shuffle: flow (4), mask (1) and features (8) at 1/scale of the input, resized back."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(ConvLeaky(in_channels, width // 2), ConvLeaky(width // 2, width))
        self.convblock = nn.Sequential(*[ResidualConv(width) for _ in range(RESIDUAL_CONVS)])
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * (4 + 1 + FEATURES), 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, ...]:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat([x, flow], dim=1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        out = F.interpolate(out, scale_factor=scale, mode="bilinear", align_corners=False)
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


class IFNet(nn.Module):
    """The released network (module docstring); state-dict keys as in flownet.pkl without its `module.` prefix."""

    def __init__(self) -> None:
        super().__init__()
        first = 3 + 3 + ENCODED + ENCODED + 1  # both frames, both encodings, t
        later = first + 1 + FEATURES + 4  # ... warped, plus the previous mask, features and flow
        for index, width in enumerate(BLOCK_WIDTHS):
            self.add_module(f"block{index}", IFBlock(first if index == 0 else later, width))
        self.encode = Encoder()

    def forward(self, image0: torch.Tensor, image1: torch.Tensor, timestep: torch.Tensor,
                scale: float = 1.0) -> torch.Tensor:
        """Frames at t: image0, image1 [B, 3, H, W] in [0, 1] (H, W multiples of 128 / scale), timestep
        [B, 1, H, W]."""
        f0, f1 = self.encode(image0), self.encode(image1)
        warped0, warped1 = image0, image1
        flow = mask = feat = None
        for index, block_scale in enumerate(BLOCK_SCALES):
            block = getattr(self, f"block{index}")
            if flow is None:
                flow, mask, feat = block(torch.cat([image0, image1, f0, f1, timestep], 1), None, block_scale / scale)
            else:
                wf0, wf1 = backward_warp(f0, flow[:, :2]), backward_warp(f1, flow[:, 2:4])
                delta, mask, feat = block(torch.cat([warped0, warped1, wf0, wf1, timestep, mask, feat], 1), flow,
                                          block_scale / scale)
                flow = flow + delta
            warped0, warped1 = backward_warp(image0, flow[:, :2]), backward_warp(image1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


def pad_multiple(scale: float) -> int:
    return max(PAD_MULTIPLE, int(PAD_MULTIPLE / scale))


class RifeInterpolator:
    """Frames between two frames with loaded RIFE weights (all times of a pair in one batch)."""

    name = NAME

    def __init__(self, net: IFNet, scale: float = 1.0) -> None:
        if scale not in SCALES:
            raise ValueError(f"RIFE scale must be one of {SCALES}, got {scale}")
        self.net, self.scale = net.eval(), scale
        self.device = next(net.parameters()).device

    @torch.no_grad()
    def interpolate(self, image0: torch.Tensor, image1: torch.Tensor, times: Sequence[float]) -> torch.Tensor:
        """[T, 3, H, W] frames at `times` between image0 and image1 ([1, 3, H, W] in [0, 1])."""
        height, width = image0.shape[-2:]
        multiple = pad_multiple(self.scale)
        padding = (0, -width % multiple, 0, -height % multiple)
        image0, image1 = F.pad(image0, padding), F.pad(image1, padding)
        count = len(times)
        timestep = torch.tensor(list(times), device=image0.device, dtype=image0.dtype).view(-1, 1, 1, 1)
        out = self.net(image0.expand(count, -1, -1, -1), image1.expand(count, -1, -1, -1),
                       timestep.expand(-1, 1, *image0.shape[-2:]), self.scale)
        return out[:, :, :height, :width]

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        pixels = self.interpolate(to_tensor(frame0, self.device), to_tensor(frame1, self.device), times)
        return to_frames(pixels)
