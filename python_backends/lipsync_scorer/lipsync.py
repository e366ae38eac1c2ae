"""LSE-D / LSE-C lip-sync scores and the lip-sync gate.

The scores are computed as syncnet_python's SyncNetInstance.evaluate computes them (and as Wav2Lip's
evaluation/scores_LSE reuses it): one SyncNet embedding per 5-frame window for video and audio, distances
of each video window to the audio windows shifted by -vshift..+vshift (zero-padded), averaged over time per
shift; the shift with the smallest mean distance is the AV offset, that distance is LSE-D, and the median
over shifts minus it is LSE-C (the confidence).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..errors import InputError
from ..shape_buckets import padded_forward, warm_buckets
from .syncnet import (
    CROP_SIZE,
    MFCC_PER_FRAME,
    MFCC_WINDOW,
    NUMCEP,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    SyncNet,
    mfcc,
    to_int16_scale,
)

LOG = logging.getLogger(__name__)

VSHIFT = 15  # run_syncnet.py's default search range, in video frames
FPS = 25  # SyncNet's audio windows assume 4 MFCC frames (100 Hz) per video frame
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640, the official `len(audio) / 640`
PASS, FAIL, UNAVAILABLE = "pass", "fail", "unavailable"


@dataclass(frozen=True)
class SyncScore:
    """offset_frames > 0: the audio leads the video (a mouth shape appears that many frames after its sound)."""

    offset_frames: int
    lse_d: float  # mean embedding distance at the best offset (lower is better)
    lse_c: float  # median over offsets minus lse_d (higher is better)
    per_offset_dist: np.ndarray  # [2 * vshift + 1] mean distance per shift; index i is offset vshift - i

    def as_dict(self) -> dict:
        return {"offset_frames": self.offset_frames, "lse_d": round(self.lse_d, 4), "lse_c": round(self.lse_c, 4),
                "per_offset_dist": [round(float(d), 4) for d in self.per_offset_dist]}


def calc_pdist(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """[T, 2 * vshift + 1] distances of video window t to audio window t + j - vshift (zeros outside),
    with torch's pairwise_distance eps as in the official calc_pdist."""
    win = 2 * vshift + 1
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    windows = padded.unfold(0, win, 1).permute(0, 2, 1)[: len(video)]  # [T, win, D]
    return torch.nn.functional.pairwise_distance(video[:, None, :].expand_as(windows), windows, eps=1e-6)


def sync_from_embeddings(video: torch.Tensor | np.ndarray, audio: torch.Tensor | np.ndarray,
                         vshift: int = VSHIFT) -> SyncScore:
    """Offset, LSE-D and LSE-C from per-window video and audio embeddings ([T, D] each)."""
    video = torch.as_tensor(video, dtype=torch.float32)
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if video.ndim != 2 or video.shape != audio.shape or len(video) == 0:
        raise ValueError(f"need equal non-empty [T, D] embeddings, got {tuple(video.shape)} and {tuple(audio.shape)}")
    mdist = calc_pdist(video, audio, vshift).mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return SyncScore(int(vshift - minidx), float(minval), float(conf), mdist.numpy())


def _bgr_crops(frames: np.ndarray, rgb: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """[T, H, W, 3] uint8 crops -> [3, T, 224, 224] float 0..255 in BGR on `device`, the official input convention.
    The uint8 crops cross to the device and become floats there (exact), a quarter of the bytes to copy."""
    if frames.shape[1:3] != (CROP_SIZE, CROP_SIZE):
        frames = np.stack([cv2.resize(f, (CROP_SIZE, CROP_SIZE)) for f in frames])
    if rgb:
        frames = frames[..., ::-1]
    crops = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8)).to(device)
    return crops.permute(3, 0, 1, 2).float()


BATCH_WINDOWS = 20  # the official evaluate's batch_size


def warm_syncnet(model: SyncNet, batch_size: int = BATCH_WINDOWS) -> None:
    """Both networks once at every batch size embed_clip runs on a GPU (shape_buckets), at load."""
    device = next(model.parameters()).device
    warm_buckets(model.forward_lip, lambda n: (torch.zeros(n, 3, WINDOW_FRAMES, CROP_SIZE, CROP_SIZE,
                                                           device=device),), batch_size)
    warm_buckets(model.forward_aud, lambda n: (torch.zeros(n, 1, NUMCEP, MFCC_WINDOW, device=device),), batch_size)


@torch.inference_mode()
def embed_clip(model: SyncNet, frames: np.ndarray, waveform16k: np.ndarray, *, rgb: bool = True,
               batch_size: int = BATCH_WINDOWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio embeddings of every 5-frame window, windows as the official evaluate takes them."""
    mfccs = torch.from_numpy(mfcc(to_int16_scale(waveform16k), SAMPLE_RATE).T.astype(np.float32))  # [13, M]
    length = min(len(frames), len(waveform16k) // SAMPLES_PER_FRAME)
    last = length - WINDOW_FRAMES  # the official range(0, lastframe): length - 5 windows
    if last < 1:
        raise InputError(f"lip-sync scoring needs at least {WINDOW_FRAMES + 1} frames of video with audio "
                         f"({(WINDOW_FRAMES + 1) / FPS:.2f} s); got {length}")
    device = next(model.parameters()).device
    # The windows (5 frames each, overlapping) are gathered where the model runs: on a GPU the host copies only
    # the crops once, not every window's five frames as floats.
    crops = _bgr_crops(np.asarray(frames)[:length], rgb, device)
    mfccs = mfccs.to(device)
    model.eval()
    video, audio = [], []
    for start in range(0, last, batch_size):
        starts = range(start, min(last, start + batch_size))
        lips = torch.stack([crops[:, s: s + WINDOW_FRAMES] for s in starts])
        cc = torch.stack([mfccs[None, :, s * MFCC_PER_FRAME: s * MFCC_PER_FRAME + MFCC_WINDOW] for s in starts])
        video.append(padded_forward(model.forward_lip, lips, largest=batch_size).float())
        audio.append(padded_forward(model.forward_aud, cc, largest=batch_size).float())
    return torch.cat(video).cpu(), torch.cat(audio).cpu()


def score_sync(frames_crops: np.ndarray, waveform16k: np.ndarray, fps: float = FPS, model: SyncNet | None = None,
               *, vshift: int = VSHIFT, rgb: bool = True, batch_size: int = BATCH_WINDOWS) -> SyncScore:
    """LSE-D, LSE-C and AV offset of face crops [T, H, W, 3] uint8 (resized to 224) against 16 kHz mono audio."""
    if model is None:
        raise ValueError("score_sync needs a loaded SyncNet")
    if abs(fps - FPS) > 1e-6:
        raise InputError(f"lip-sync scoring runs at {FPS} fps (SyncNet's audio windows assume it); "
                         f"resample the {fps:g} fps frames to {FPS} fps first")
    frames = np.asarray(frames_crops)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"face crops must be [frames, height, width, 3]; got shape {frames.shape}")
    video, audio = embed_clip(model, frames, np.asarray(waveform16k).reshape(-1), rgb=rgb, batch_size=batch_size)
    return sync_from_embeddings(video, audio, vshift)


# Published reference values (mean LSE-D / LSE-C, SyncNet v2, vshift 15), Prajwal et al., "A Lip Sync Expert Is
# All You Need" (Wav2Lip, ACM MM 2020), Table 1: real videos LRS2 6.736 / 7.838, LRS3 6.956 / 7.592,
# LRW 7.012 / 6.931; Wav2Lip (with and without GAN) about 6.4-7.0 / 7.6-7.9; LipGAN (visibly off) about
# 10.0-10.3 / 3.2-3.4; Speech2Vid about 13-14 / 1.6-1.8. The defaults sit between real speech and visibly
# unsynced output.
# The offset tolerance follows ITU-R BT.1359 acceptability (audio leading by > 90 ms, lagging by > 185 ms is
# objectionable): 2 frames = 80 ms at 25 fps keeps both sides inside it.
@dataclass(frozen=True)
class LipSyncGateSettings:
    max_lse_d: float = 8.0  # fail above: real video scores 6.7-7.0, LipGAN 10+
    min_lse_c: float = 5.0  # fail below: real video scores 6.9-7.8, LipGAN 3.2-3.4
    max_abs_offset_frames: int = 2  # fail when |AV offset| exceeds this many frames
    vshift: int = VSHIFT  # offset search range, +- frames
    batch_size: int = BATCH_WINDOWS  # 5-frame windows per SyncNet forward (larger on a GPU)

    def __post_init__(self) -> None:
        if self.max_lse_d <= 0 or self.min_lse_c < 0:
            raise ValueError("max_lse_d must be > 0 and min_lse_c >= 0")
        if not 0 <= self.max_abs_offset_frames < self.vshift:
            raise ValueError("max_abs_offset_frames must be in [0, vshift)")
        if self.vshift < 1 or self.batch_size < 1:
            raise ValueError("vshift and batch_size must be >= 1")


@dataclass(frozen=True)
class LipSyncGateResult:
    status: str  # PASS, FAIL or UNAVAILABLE (never a pass without a model)
    reason: str
    score: SyncScore | None
    settings: LipSyncGateSettings

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def as_dict(self) -> dict:
        return {"gate": "lipsync", "status": self.status, "reason": self.reason,
                "score": self.score.as_dict() if self.score else None,
                "thresholds": dataclasses.asdict(self.settings)}


def lipsync_gate(model: SyncNet | None, frames_crops: np.ndarray, waveform16k: np.ndarray, fps: float = FPS,
                 settings: LipSyncGateSettings = LipSyncGateSettings(), *, rgb: bool = True) -> LipSyncGateResult:
    """Judge one clip: pass only when LSE-D, LSE-C and the offset are all within the thresholds."""
    if model is None:
        return LipSyncGateResult(UNAVAILABLE, "no SyncNet weights (supply lipsync_scorer/syncnet_v2.model)",
                                 None, settings)
    try:
        score = score_sync(frames_crops, waveform16k, fps, model, vshift=settings.vshift, rgb=rgb,
                           batch_size=settings.batch_size)
    except InputError as exc:
        return LipSyncGateResult(UNAVAILABLE, str(exc), None, settings)
    failures = []
    if score.lse_d > settings.max_lse_d:
        failures.append(f"LSE-D {score.lse_d:.2f} > {settings.max_lse_d:g}")
    if score.lse_c < settings.min_lse_c:
        failures.append(f"LSE-C {score.lse_c:.2f} < {settings.min_lse_c:g}")
    if abs(score.offset_frames) > settings.max_abs_offset_frames:
        failures.append(f"AV offset {score.offset_frames:+d} frames exceeds +-{settings.max_abs_offset_frames}")
    if failures:
        return LipSyncGateResult(FAIL, "; ".join(failures), score, settings)
    return LipSyncGateResult(PASS, f"LSE-D {score.lse_d:.2f}, LSE-C {score.lse_c:.2f}, offset "
                                   f"{score.offset_frames:+d}", score, settings)
