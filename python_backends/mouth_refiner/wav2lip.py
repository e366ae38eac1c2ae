"""The Wav2Lip generator (Prajwal et al. 2020) as Rudrabha/Wav2Lip's models/wav2lip.py + models/conv.py define
it, and a strict loader for its official checkpoints (`wav2lip.pth`, `wav2lip_gan.pth`).

Module names and layer order follow the official code so the official state dict loads key for key:
`face_encoder_blocks.<i>.<j>.conv_block.{0: conv, 1: batch norm}`, `audio_encoder.<j>.conv_block...`,
`face_decoder_blocks.<i>.<j>.conv_block...`, `output_block.{0.conv_block..., 1: 1x1 conv}`.

Input conventions of the official inference.py: faces are 96x96 BGR crops scaled to [0, 1], six channels
(lower half masked to zero, then the unmasked reference); audio is one [1, 80, 16] window of the Wav2Lip
log-mel (0.2 s). The output is the 96x96 BGR face in [0, 1].
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import check_state_dict
from ..errors import WeightsUnavailable

LOG = logging.getLogger(__name__)

IMG_SIZE = 96
MEL_BINS = 80
MEL_STEP = 16  # mel frames per video frame window (the official mel_step_size)
DATA_PARALLEL_PREFIX = "module."  # the official checkpoints were saved from nn.DataParallel


class ConvBlock(nn.Module):
    """models/conv.py `Conv2d`: conv, batch norm, optional identity shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride, padding, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class ConvTransposeBlock(nn.Module):
    """models/conv.py `Conv2dTranspose`: transposed conv, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride, padding, output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(channels: int, count: int) -> list[ConvBlock]:
    """`count` residual 3x3 blocks at a constant width."""
    return [ConvBlock(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def _up(cin: int, cout: int, residuals: int) -> nn.Sequential:
    """A x2 upsampling decoder block followed by residual blocks."""
    return nn.Sequential(ConvTransposeBlock(cin, cout, 3, 2, 1, output_padding=1), *_res(cout, residuals))


class Wav2Lip(nn.Module):
    """models/wav2lip.py `Wav2Lip`: a U-Net whose bottleneck is the audio embedding.

    The face encoder goes 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1; each decoder output is concatenated with the
    encoder feature map of the same size (hence the decoder input widths 1024, 1024, 768, 512, 320, 160, 80).
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),  # 96
            nn.Sequential(ConvBlock(16, 32, 3, 2, 1), *_res(32, 2)),  # 48
            nn.Sequential(ConvBlock(32, 64, 3, 2, 1), *_res(64, 3)),  # 24
            nn.Sequential(ConvBlock(64, 128, 3, 2, 1), *_res(128, 2)),  # 12
            nn.Sequential(ConvBlock(128, 256, 3, 2, 1), *_res(256, 2)),  # 6
            nn.Sequential(ConvBlock(256, 512, 3, 2, 1), *_res(512, 1)),  # 3
            nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # 1
        ])
        self.audio_encoder = nn.Sequential(  # [1, 80, 16] -> [512, 1, 1]
            ConvBlock(1, 32, 3, 1, 1), *_res(32, 2),
            ConvBlock(32, 64, 3, (3, 1), 1), *_res(64, 2),
            ConvBlock(64, 128, 3, 3, 1), *_res(128, 2),
            ConvBlock(128, 256, 3, (3, 2), 1), *_res(256, 1),
            ConvBlock(256, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),  # 1
            nn.Sequential(ConvTransposeBlock(1024, 512, 3, 1, 0), *_res(512, 1)),  # 3
            _up(1024, 512, 2),  # 6
            _up(768, 384, 2),  # 12
            _up(512, 256, 2),  # 24
            _up(320, 128, 2),  # 48
            _up(160, 64, 2),  # 96
        ])
        self.output_block = nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """audio [B, 1, 80, 16] mel windows, faces [B, 6, 96, 96] -> [B, 3, 96, 96] in [0, 1] (BGR)."""
        if audio.dim() != 4 or faces.dim() != 4:
            raise ValueError(f"expected 4-D audio and faces, got {tuple(audio.shape)} and {tuple(faces.shape)}")
        features = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        x = self.audio_encoder(audio)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), features.pop()), dim=1)
        return self.output_block(x)


def strip_data_parallel(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official inference's `k.replace('module.', '')`, limited to the prefix (no Wav2Lip key has it inside)."""
    return {k[len(DATA_PARALLEL_PREFIX):] if k.startswith(DATA_PARALLEL_PREFIX) else k: v for k, v in state.items()}


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The generator's state dict from an official checkpoint: `{"state_dict": ..., "optimizer": ...,
    "global_step": ..., "global_epoch": ...}` as wav2lip_train.py / hq_wav2lip_train.py save it."""
    try:
        # weights_only: the official files hold tensors, the optimizer's state dict and two ints.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise WeightsUnavailable(f"{what}: cannot read {path}: {exc}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        found = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsUnavailable(
            f"{what}: {path} is not an official Wav2Lip checkpoint (expected a dict with 'state_dict', found "
            f"{found}); use wav2lip.pth or wav2lip_gan.pth from Rudrabha/Wav2Lip"
        )
    return strip_data_parallel(checkpoint["state_dict"])


def load_wav2lip(path: Path, device: str | torch.device = "cpu", what: str = "mouth_refiner") -> Wav2Lip:
    """Load an official checkpoint, checked key for key and shape for shape before anything is copied."""
    state = read_state_dict(path, what)
    with torch.device("meta"):  # names and shapes only: no time spent on a random init that is overwritten
        model = Wav2Lip()
    check_state_dict(model, state, f"{what} ({path.name})",
                     hint="; expected the official wav2lip.pth / wav2lip_gan.pth generator (not the discriminator "
                          "or lipsync_expert.pth)")
    # Only BatchNorm step counters may be absent (checked above); inference never reads them.
    counters = {k: torch.zeros((), dtype=torch.long) for k in model.state_dict() if k not in state}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict({**counters, **state}, strict=True, assign=True)
    LOG.info("loaded Wav2Lip from %s", path)
    return model.to(device).eval()
