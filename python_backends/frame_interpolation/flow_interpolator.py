"""The interpolator without weights: bidirectional optical flow + occlusion-aware blending.

For frames I0, I1 and a time t in (0, 1):
1. Flows both ways in one batch (`flow.estimate_flow`): F01 with I0(x) ~ I1(x + F01(x)), and F10; at half
   resolution from a short side of `half_resolution_from` pixels on (less than half the cost; on real video
   within 0.11 dB of full resolution: perf/RESULTS.md, "flow-full").
2. Occlusion by forward-backward consistency (Sundaram et al., ECCV 2010): a pixel of I0 whose flow does not
   come back, |F01 + F10(x + F01)|^2 > a (|F01|^2 + |F10(x + F01)|^2) + b, has no match in I1 (it is covered or
   leaves the frame); the same for I1.
3. Flows from time t: F_t0 = -t F01 and F_t1 = (1 - t) F01 carried along the motion, i.e. the fixed point
   F_t0(x) = -t F01(x + F_t0(x)) (and F_t1(x) = -(1 - t) F10(x + F_t1(x))), found by a few substitutions
   from the linear blend of F01 and F10 (Jiang et al., Super SloMo, CVPR 2018) that is exact for constant motion.
4. I_t = (w0 I0(x + F_t0) + w1 I1(x + F_t1)) / (w0 + w1) with w0 = (1 - t) (1 - O1(x + F_t1)) and
   w1 = t (1 - O0(x + F_t0)): where what I0 shows at x is hidden in I1, only I0 is used, and the other way
   round; elsewhere the nearer frame weighs more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..transfer import to_device
from .flow import FlowSettings, estimate_flow
from .warp import backward_warp

NAME = "flow"


@dataclass(frozen=True)
class FlowInterpolatorSettings:
    flow: FlowSettings = FlowSettings()
    consistency_alpha: float = 0.01  # Sundaram et al.'s constants
    consistency_beta: float = 0.5  # pixels^2
    fixed_point_steps: int = 2  # substitutions refining the flows from time t
    half_resolution_from: int = 256  # short side from which the flow is estimated at half resolution


def occlusion(flow: torch.Tensor, back: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """[B, 1, H, W]: 1 where `flow` fails the forward-backward check against `back`, else 0."""
    returned = backward_warp(back, flow)
    mismatch = (flow + returned).square().sum(1, keepdim=True)
    bound = alpha * (flow.square().sum(1, keepdim=True) + returned.square().sum(1, keepdim=True)) + beta
    return (mismatch > bound).to(flow.dtype)


def flows_from_time(f01: torch.Tensor, f10: torch.Tensor, t: torch.Tensor, steps: int) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """(F_t0, F_t1) for times t [T, 1, 1, 1] and flows [1 or T, 2, H, W]: see the module docstring, step 3."""
    ft0 = -(1 - t) * t * f01 + t * t * f10
    ft1 = (1 - t) * (1 - t) * f01 - t * (1 - t) * f10
    f01s, f10s = f01.expand_as(ft0), f10.expand_as(ft1)
    for _ in range(steps):
        ft0 = -t * backward_warp(f01s, ft0)
        ft1 = -(1 - t) * backward_warp(f10s, ft1)
    return ft0, ft1


def to_tensor(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    """[H, W, 3] (or [N, H, W, 3]) uint8 -> [1 (N), 3, H, W] float32 in [0, 1] on device."""
    pixels = to_device(torch.from_numpy(np.ascontiguousarray(frame)), device)
    return (pixels[None] if pixels.dim() == 3 else pixels).permute(0, 3, 1, 2).float().div_(255.0)


def to_frames(pixels: torch.Tensor) -> list[np.ndarray]:
    """[T, 3, H, W] in [0, 1] -> T frames [H, W, 3] uint8 (rounded)."""
    x = pixels.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(x)


class FlowInterpolator:
    """Frames between two frames by bidirectional flow and occlusion-aware blending (module docstring)."""

    name = NAME

    def __init__(self, device: torch.device | str = "cpu", settings: FlowInterpolatorSettings | None = None,
                 batch_pairs: bool | None = None) -> None:
        self.device = torch.device(device)
        self.settings = settings or FlowInterpolatorSettings()
        # whether the resampler hands it a push's pairs in one batch (`pairs`): on a GPU, where each pair's few
        # hundred small kernels are launch-bound; not on the CPU (None), where a block's pairs in one batch ran slower
        # than one by one (the larger working set)
        self.batch_pairs = self.device.type == "cuda" if batch_pairs is None else batch_pairs

    @torch.no_grad()
    def flows(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F01, F10), each [P, 2, H, W], for P pairs of images [P, 3, H, W] in [0, 1] (module docstring, step 1)."""
        s = self.settings
        pairs = image0.shape[0]
        first, second = torch.cat([image0, image1]), torch.cat([image1, image0])
        if min(image0.shape[-2:]) >= s.half_resolution_from:
            flows = estimate_flow(F.avg_pool2d(first, 2, ceil_mode=True), F.avg_pool2d(second, 2, ceil_mode=True),
                                  s.flow)
            flows = F.interpolate(flows, size=image0.shape[-2:], mode="bilinear", align_corners=False) * 2.0
        else:
            flows = estimate_flow(first, second, s.flow)
        return flows[:pairs], flows[pairs:]

    @torch.no_grad()
    def synthesize(self, image0: torch.Tensor, image1: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor,
                   times: Sequence[float], pair_of: Sequence[int] | None = None) -> torch.Tensor:
        """[T, 3, H, W] frames at `times` from P pairs of images and their flows (module docstring, steps 2-4);
        time i is between pair `pair_of[i]` (all of pair 0 when None)."""
        s = self.settings
        occ0 = occlusion(f01, f10, s.consistency_alpha, s.consistency_beta)
        occ1 = occlusion(f10, f01, s.consistency_alpha, s.consistency_beta)
        t = to_device(torch.tensor(list(times), dtype=image0.dtype), image0.device).view(-1, 1, 1, 1)
        pair = to_device(torch.tensor([0] * len(times) if pair_of is None else list(pair_of)), image0.device)
        ft0, ft1 = flows_from_time(f01[pair], f10[pair], t, s.fixed_point_steps)
        warped0 = backward_warp(image0[pair], ft0)
        warped1 = backward_warp(image1[pair], ft1)
        hidden0 = backward_warp(occ0[pair], ft0)  # what I0 shows here is hidden in I1
        hidden1 = backward_warp(occ1[pair], ft1)
        w0 = (1 - t) * (1 - hidden1) + 1e-3 * (1 - t)  # the small terms: plain blend where both are hidden
        w1 = t * (1 - hidden0) + 1e-3 * t
        return (w0 * warped0 + w1 * warped1) / (w0 + w1)

    def interpolate(self, image0: torch.Tensor, image1: torch.Tensor, times: Sequence[float]) -> torch.Tensor:
        """[T, 3, H, W] frames at `times` between image0 and image1 ([1, 3, H, W] in [0, 1])."""
        return self.synthesize(image0, image1, *self.flows(image0, image1), times)

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        """Frames [H, W, 3] uint8 at `times` in (0, 1) between two frames [H, W, 3] uint8."""
        pixels = self.interpolate(to_tensor(frame0, self.device), to_tensor(frame1, self.device), times)
        return to_frames(pixels)

    def pairs(self, pairs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> list[list[np.ndarray]]:
        """__call__ for several (frame0, frame1, times) at once: one batch of flows, one of frames and one copy each
        way, where pair by pair a block's dozen pairs cost a dozen times the kernel launches and host syncs."""
        image0 = to_tensor(np.stack([a for a, _, _ in pairs]), self.device)
        image1 = to_tensor(np.stack([b for _, b, _ in pairs]), self.device)
        times = [t for _, _, ts in pairs for t in ts]
        pair_of = [p for p, (_, _, ts) in enumerate(pairs) for _ in ts]
        frames = iter(to_frames(self.synthesize(image0, image1, *self.flows(image0, image1), times, pair_of)))
        return [[next(frames) for _ in ts] for _, _, ts in pairs]
