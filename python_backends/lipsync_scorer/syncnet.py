"""SyncNet (Chung & Zisserman 2016) exactly as joonson/syncnet_python's SyncNetModel.S, its official
`syncnet_v2.model` loader, and the audio front end it was trained on (python_speech_features' MFCC).

Inputs as the official SyncNetInstance.evaluate builds them:
- lips: 5 consecutive 224x224 face crops, BGR (cv2 order), raw 0..255 floats, stacked as [N, 3, 5, 224, 224];
- audio: 13 MFCCs x 20 frames (100 Hz, so 0.2 s = 5 video frames at 25 fps) of 16 kHz int16-scale samples,
  as [N, 1, 13, 20]. The log-energy in cepstrum 0 depends on the sample scale, so float audio is rescaled to int16.
"""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import numpy as np
import torch
from scipy.fft import dct
from torch import nn

from ..checkpoints import check_state_dict
from ..errors import WeightsUnavailable
from ..weights import ALLOWED, OFFICIAL, UNAVAILABLE, WeightsChoice, official_path

LOG = logging.getLogger(__name__)

MODEL_NAME = "lipsync_scorer"
CHECKPOINT = "syncnet_v2.model"
EMBED_DIM = 1024
CROP_SIZE = 224
WINDOW_FRAMES = 5  # video frames per lip window
MFCC_PER_FRAME = 4  # 100 Hz MFCC over 25 fps video
MFCC_WINDOW = 20  # MFCC frames per audio window (= WINDOW_FRAMES * MFCC_PER_FRAME)
SAMPLE_RATE = 16000
INT16_SCALE = 32768.0

# python_speech_features.mfcc defaults, which the official evaluate uses unchanged.
WINLEN = 0.025
WINSTEP = 0.01
NUMCEP = 13
NFILT = 26
NFFT = 512
PREEMPH = 0.97
CEPLIFTER = 22


class SyncNet(nn.Module):
    """SyncNetModel.S: attribute names and layer order match the official state dict keys."""

    def __init__(self, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = _fc_head(embed_dim)
        self.netfclip = _fc_head(embed_dim)
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 13, 20] MFCC windows -> [N, embed_dim]."""
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.reshape(mid.shape[0], -1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, 224, 224] BGR 0..255 crops -> [N, embed_dim]."""
        mid = self.netcnnlip(x)
        return self.netfclip(mid.reshape(mid.shape[0], -1))


def _fc_head(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))


def choose_weights(root: Path | None = None) -> WeightsChoice:
    """The official checkpoint under `<root>/lipsync_scorer/syncnet_v2.model`, or unavailable (no shipped fallback:
    no other lip-sync expert is bundled with our dependencies)."""
    path = official_path(MODEL_NAME, CHECKPOINT, root)
    if path is None:
        return WeightsChoice(
            MODEL_NAME, "syncnet-v2", UNAVAILABLE, None, "MIT (joonson/syncnet_python)",
            note=f"supply {CHECKPOINT} (syncnet_python's download_model.sh) as <weights>/{MODEL_NAME}/{CHECKPOINT}",
        )
    return WeightsChoice(MODEL_NAME, "syncnet-v2", OFFICIAL, path, "MIT (joonson/syncnet_python)",
                         commercial_use=ALLOWED)


def load_syncnet(path: Path, device: str | torch.device = "cpu") -> SyncNet:
    """Load the official pickled state dict (keys like 'netcnnaud.0.weight', as loadParameters copies them
    into SyncNetModel.S), checked strictly key for key and shape for shape."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise WeightsUnavailable(f"{MODEL_NAME}: cannot read {path}: {exc}") from None
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{MODEL_NAME}: {path} holds a {type(state).__name__}, expected a state dict")
    model = SyncNet()
    check_state_dict(model, state, f"{MODEL_NAME} ({path.name})",
                     hint=f"; expected the official {CHECKPOINT} from joonson/syncnet_python")
    model.load_state_dict(state, strict=False)  # only BatchNorm step counters may be absent, checked above
    LOG.info("loaded SyncNet from %s", path)
    return model.to(device).eval()


def load_default_syncnet(root: Path | None = None, device: str | torch.device = "cpu") -> SyncNet | None:
    """The official SyncNet when its checkpoint is under the weights root, else None."""
    choice = choose_weights(root)
    return load_syncnet(choice.path, device) if choice.available else None


# ---------------------------------------------------------------- MFCC (python_speech_features 0.6) ----

def _hz2mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595 * np.log10(1 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel2hz(mel: np.ndarray | float) -> np.ndarray:
    return 700 * (10 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1)


@functools.lru_cache(maxsize=4)
def mfcc_filterbank(nfilt: int = NFILT, nfft: int = NFFT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """get_filterbanks: HTK-mel triangles on integer FFT bins (floor((nfft+1)*f/rate)), unnormalised."""
    bins = np.floor((nfft + 1) * _mel2hz(np.linspace(_hz2mel(0.0), _hz2mel(rate / 2), nfilt + 2)) / rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    bank.setflags(write=False)
    return bank


def _round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def mfcc(signal: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """python_speech_features.mfcc(signal, rate) with its defaults: [frames, 13] at 100 frames per second.

    Frames are 25 ms rectangular windows every 10 ms, the last one zero-padded; a signal shorter than one
    window still gives one frame.
    """
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mfcc of an empty signal")
    x = np.append(x[0], x[1:] - PREEMPH * x[:-1])
    frame_len, step = _round_half_up(WINLEN * rate), _round_half_up(WINSTEP * rate)
    count = 1 if x.size <= frame_len else 1 + int(np.ceil((x.size - frame_len) / step))
    padded = np.concatenate([x, np.zeros((count - 1) * step + frame_len - x.size)])
    frames = padded[np.arange(frame_len)[None, :] + step * np.arange(count)[:, None]]
    power = np.abs(np.fft.rfft(frames, NFFT)) ** 2 / NFFT
    eps = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mfcc_filterbank(NFILT, NFFT, rate).T
    feat = np.where(feat == 0, eps, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :NUMCEP]
    cep *= 1 + (CEPLIFTER / 2.0) * np.sin(np.pi * np.arange(NUMCEP) / CEPLIFTER)
    cep[:, 0] = np.log(energy)
    return cep


def to_int16_scale(waveform: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] (our pipeline's convention) at the int16 scale scipy.io.wavfile gives the official
    code; integer PCM is taken as it is."""
    wave = np.asarray(waveform)
    if np.issubdtype(wave.dtype, np.integer):
        return wave.astype(np.float64)
    return wave.astype(np.float64) * INT16_SCALE
