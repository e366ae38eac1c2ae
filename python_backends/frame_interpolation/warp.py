"""Backward warping: the one sampling rule both interpolators use."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image [B, C, H, W] sampled at x + flow(x) (flow [B, 2, H, W] in pixels, x then y), bilinear, clamped
    to the border.

    This is RIFE's warplayer rule (a grid from -1 to 1 over pixel centres, align_corners=True, border
    padding), so the RIFE weights see the sampling they were trained with.
    """
    _, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype)
    # pixels to grid units by Python scalars: a tensor of them made on the host would be copied to the GPU, which
    # synchronises the stream at every warp
    grid = torch.stack([xs.view(1, 1, -1) + flow[:, 0] * (2.0 / max(width - 1, 1)),
                        ys.view(1, -1, 1) + flow[:, 1] * (2.0 / max(height - 1, 1))], dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)
