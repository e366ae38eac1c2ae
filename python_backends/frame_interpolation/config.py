"""Which frame interpolation the Wan engines run, and with which weights (no torch imported here).

`interpolation` (a video_generator parameter): auto (RIFE when its released flownet.pkl is under the weights
root, else flow) | none (nearest-time frame selection: frames repeat) | flow (bidirectional optical flow with
occlusion-aware blending; no weights) | rife. RIFE's file is `<weights root>/video_generator/<rife_file>`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, WeightsUnavailable
from ..weights import ALLOWED, OFFICIAL, SHIPPED, WeightsChoice, official_path

if TYPE_CHECKING:
    from .resampler import FrameInterpolator, InterpolatingResampler

AUTO, NONE, FLOW, RIFE = "auto", "none", "flow", "rife"
METHODS = (AUTO, NONE, FLOW, RIFE)
MODEL = "video_generator"  # the Triton model that runs it; its weights folder holds RIFE's file
ROLE = "frame_interpolator"  # its row in `talkinghead weights`
RIFE_ENGINE = "rife-4.26"
RIFE_LICENCE = "MIT (hzwer/Practical-RIFE)"
RIFE_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class InterpolationSettings:
    interpolation: str = AUTO
    rife_file: str = "RIFE/flownet.pkl"  # train_log/flownet.pkl of RIFEv4.26_0921.zip, under <root>/video_generator/
    rife_scale: float = 1.0  # RIFE's flow scale: 0.5 for 4K frames, as its authors advise

    def __post_init__(self) -> None:
        if self.interpolation not in METHODS:
            raise ConfigError(f"interpolation must be one of {', '.join(METHODS)}, got {self.interpolation!r}")
        if self.rife_scale not in RIFE_SCALES:
            raise ConfigError(f"rife_scale must be one of {RIFE_SCALES}, got {self.rife_scale}")


@dataclass(frozen=True)
class Interpolation:
    """What an engine runs: a method (none | flow | rife) and, for rife, the checkpoint."""

    method: str = FLOW
    rife_path: Path | None = None
    rife_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in (NONE, FLOW, RIFE) or (self.method == RIFE) != (self.rife_path is not None):
            raise ValueError(f"interpolation {self.method!r} with checkpoint {self.rife_path}: rife needs a "
                             "checkpoint, none and flow take none")

    def interpolator(self, device: object) -> FrameInterpolator | None:
        """The interpolator on `device` (loaded once per device), None for nearest-time selection."""
        if self.method == NONE:
            return None
        import torch

        place = torch.device(device)
        if place.type == "cuda" and place.index is None:  # "cuda" and "cuda:0" share one loaded model
            place = torch.device("cuda", torch.cuda.current_device())
        return _load(self, str(place))

    def resampler(self, source_fps: float, fps: float, source_total: int, total: int, first: int = 0,
                  device: object = "cpu") -> InterpolatingResampler:
        from .resampler import InterpolatingResampler

        return InterpolatingResampler(source_fps, fps, source_total, total, first, self.interpolator(device))


@functools.lru_cache(maxsize=8)
def _load(interpolation: Interpolation, device: str) -> FrameInterpolator:
    if interpolation.method == RIFE:
        from .rife_checkpoint import load_rife

        return load_rife(interpolation.rife_path, device, interpolation.rife_scale)
    from .flow_interpolator import FlowInterpolator

    return FlowInterpolator(device)


def resolve(settings: InterpolationSettings, root: Path | None = None) -> Interpolation:
    """The Interpolation the settings ask for; rife without its file is an error naming where to put it."""
    path = official_path(MODEL, settings.rife_file, root)
    method = settings.interpolation
    if method == AUTO:
        method = RIFE if path is not None else FLOW
    if method == RIFE and path is None:
        raise WeightsUnavailable(f"interpolation=rife needs RIFE's flownet.pkl at <weights root>/{MODEL}/"
                                 f"{settings.rife_file} (train_log/flownet.pkl of RIFEv4.26_0921.zip); without it "
                                 "use interpolation=flow")
    return Interpolation(method, path if method == RIFE else None, settings.rife_scale)


def choose_weights(settings: InterpolationSettings, root: Path | None = None) -> WeightsChoice:
    """The `talkinghead weights` row of the frame interpolator."""
    chosen = resolve(settings, root)
    if chosen.method == RIFE:
        return WeightsChoice(ROLE, RIFE_ENGINE, OFFICIAL, chosen.rife_path, RIFE_LICENCE,
                             note=f"runs inside {MODEL}: 16 fps -> output rate", commercial_use=ALLOWED)
    if chosen.method == FLOW:
        return WeightsChoice(ROLE, "flow (pyramid Lucas-Kanade, occlusion-aware blending)", SHIPPED, None,
                             "Apache-2.0 (ours; no weights)",
                             note=f"put RIFE 4.26's flownet.pkl at <weights root>/{MODEL}/{settings.rife_file} "
                                  "for RIFE (MIT)", commercial_use=ALLOWED)
    return WeightsChoice(ROLE, "none (nearest-time frame selection: frames repeat)", SHIPPED, None, "-",
                         note="interpolation=none")
