"""Settings of the mouth_refiner model, filled from config.pbtxt `parameters`."""

from __future__ import annotations

from dataclasses import dataclass

from ..licences import LicencePolicy

AUTO = "auto"
WAV2LIP_GAN = "wav2lip_gan"  # <weights root>/mouth_refiner/wav2lip_gan.pth: sharper mouths (the GAN fine-tune)
WAV2LIP = "wav2lip"  # <weights root>/mouth_refiner/wav2lip.pth: the most accurate sync, blurrier
CHECKPOINTS = (AUTO, WAV2LIP_GAN, WAV2LIP)


@dataclass(frozen=True)
class MouthRefinerSettings:
    # auto: wav2lip_gan.pth if present, else wav2lip.pth; or force one of the two.
    checkpoint: str = AUTO
    # Face crops per Wav2Lip forward (official default 128; 8 measured fastest per frame on 2 CPU cores).
    batch_size: int = 8
    # Pixels added to each face box: top, bottom, left, right (the official --pads default keeps the chin in).
    pads: tuple[int, ...] = (0, 10, 0, 0)
    # Moving-average window over the run's boxes, as the official get_smoothened_boxes (T=5); 1 = off.
    box_smoothing: int = 5
    # Width of the blend ramps, as a fraction of the box height (top ramp) and of the box size (edges).
    feather: float = 0.15
    # CPU threads for torch (0 = torch's default).
    threads: int = 0
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)

    def __post_init__(self) -> None:
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {self.checkpoint!r}")
        if not 1 <= self.batch_size <= 1024:
            raise ValueError(f"batch_size must be within [1, 1024], got {self.batch_size}")
        if len(self.pads) != 4 or any(p < 0 for p in self.pads):
            raise ValueError(f"pads must be 4 non-negative pixel counts (top, bottom, left, right), got {self.pads}")
        if not 1 <= self.box_smoothing <= 25:
            raise ValueError(f"box_smoothing must be within [1, 25] frames, got {self.box_smoothing}")
        if not 0.0 < self.feather <= 0.5:
            raise ValueError(f"feather must be within (0, 0.5], got {self.feather}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
