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
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0)[None]  # [1, 2, H, W]
    norm = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=flow.device, dtype=flow.dtype)
    grid = (base + flow * norm.view(1, 2, 1, 1)).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)
