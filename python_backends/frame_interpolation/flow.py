"""Dense optical flow in torch (runs on the GPU as well as the CPU): coarse-to-fine Lucas-Kanade.

At every level of an image pyramid (halved until the short side would drop below `min_side`), the second image
is warped by the current flow and the flow is corrected `iterations` times by the least-squares solution of the
linearised brightness constancy over a Gaussian window (all colour channels are constraints), with a small
Tikhonov term so flat regions keep the flow they inherited instead of blowing up; the flow is then median
filtered (removes isolated outliers) and carried up to the next level. Each step is a handful of convolutions
and one grid_sample, all batched, which is what a GPU runs well (cost: perf/bench_interpolation.py).

The flow uses the backward-warp convention: image0(x) ~ image1(x + flow(x)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .warp import backward_warp


@dataclass(frozen=True)
class FlowSettings:
    min_side: int = 12  # coarsest level's short side: motions up to ~2^levels pixels are found
    iterations: int = 3  # warp-and-solve steps per level
    window_sigma: float = 2.0  # Gaussian window of the local least squares, pixels of each level
    regularisation: float = 1e-3  # Tikhonov term (intensities in [0, 1]): damps updates where there is no texture
    max_step: float = 2.0  # largest update per step, pixels of the level (a badly conditioned solve cannot jump)
    median: bool = True  # 3x3 median of the flow after each level

    def __post_init__(self) -> None:
        if self.min_side < 4 or self.iterations < 1 or self.window_sigma <= 0 or self.regularisation <= 0:
            raise ValueError("min_side >= 4, iterations >= 1, window_sigma > 0 and regularisation > 0 are needed")


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable depthwise blur with replicated borders."""
    channels, radius = x.shape[1], kernel.numel() // 2
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences with replicated borders."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2])
    gy = 0.5 * (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1])
    return gx, gy


def _median3(flow: torch.Tensor) -> torch.Tensor:
    b, c, h, w = flow.shape
    patches = F.unfold(F.pad(flow, (1, 1, 1, 1), mode="replicate"), 3)  # [B, C * 9, H * W]
    return patches.view(b, c, 9, h * w).median(dim=2).values.view(b, c, h, w)


def _pyramid(images: torch.Tensor, min_side: int) -> list[torch.Tensor]:
    levels = [images]
    while min(levels[-1].shape[-2:]) // 2 >= min_side:
        levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
    return levels[::-1]  # coarse to fine


def estimate_flow(image0: torch.Tensor, image1: torch.Tensor, settings: FlowSettings = FlowSettings()) -> torch.Tensor:
    """Flow [B, 2, H, W] (pixels) with image0(x) ~ image1(x + flow(x)); images [B, C, H, W] in [0, 1]."""
    if image0.shape != image1.shape or image0.dim() != 4:
        raise ValueError(f"two [B, C, H, W] images of one shape are needed, got {tuple(image0.shape)} and "
                         f"{tuple(image1.shape)}")
    kernel = _gaussian_kernel(settings.window_sigma, image0.device, image0.dtype)
    flow = None
    for level0, level1 in zip(_pyramid(image0, settings.min_side), _pyramid(image1, settings.min_side)):
        if flow is None:
            flow = level0.new_zeros(level0.shape[0], 2, *level0.shape[-2:])
        else:
            up = F.interpolate(flow, size=level0.shape[-2:], mode="bilinear", align_corners=False)
            flow = torch.stack([up[:, 0] * (level0.shape[-1] / flow.shape[-1]),
                                up[:, 1] * (level0.shape[-2] / flow.shape[-2])], dim=1)
        for _ in range(settings.iterations):
            warped = backward_warp(level1, flow)
            gx, gy = _gradients(0.5 * (level0 + warped))
            gt = warped - level0
            terms = torch.stack([(gx * gx).sum(1), (gx * gy).sum(1), (gy * gy).sum(1), (gx * gt).sum(1),
                                 (gy * gt).sum(1)], dim=1)
            a11, a12, a22, b1, b2 = _blur(terms, kernel).unbind(1)
            a11, a22 = a11 + settings.regularisation, a22 + settings.regularisation
            det = a11 * a22 - a12 * a12
            step = torch.stack([a12 * b2 - a22 * b1, a12 * b1 - a11 * b2], dim=1) / det[:, None]
            flow = flow + step.clamp(-settings.max_step, settings.max_step)
        if settings.median:
            flow = _median3(flow)
    return flow
