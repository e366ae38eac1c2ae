"""The lipsync_scorer model's logic: SyncNet (official syncnet_v2 checkpoint) judging face crops against speech."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import spec
from ..errors import WeightsUnavailable
from ..licences import LicencePolicy
from ..weights import WeightsChoice
from .lipsync import LipSyncGateSettings, lipsync_gate, warm_syncnet
from .syncnet import choose_weights as _choose_syncnet
from .syncnet import load_syncnet


@dataclass(frozen=True)
class LipSyncScorerSettings(LipSyncGateSettings):
    """The gate thresholds (qa/lipsync.py: defaults against published LSE values) and CPU threads."""

    threads: int = 0
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)


def choose_weights(settings: LipSyncScorerSettings, root: Path | None = None) -> WeightsChoice:
    return _choose_syncnet(root)


class LipSyncScorer:
    def __init__(self, settings: LipSyncScorerSettings, device: str, root: Path | None = None) -> None:
        self.weights = choose_weights(settings, root)
        if not self.weights.available:
            raise WeightsUnavailable(f"lipsync_scorer: {self.weights.note}")
        if settings.threads and device == "cpu":
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.model = load_syncnet(self.weights.path, device)
        if next(self.model.parameters()).is_cuda:  # a segment's last partial batch differs in size every time
            warm_syncnet(self.model, settings.batch_size)

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = []
        for crops, waveform, fps in zip(batch[spec.FACE_CROPS], batch[spec.WAVEFORM], batch[spec.FPS]):
            result = lipsync_gate(self.model, crops, waveform, float(fps.reshape(-1)[0]), self.settings)
            out.append({spec.SYNC_REPORT: np.array([json.dumps(result.as_dict()).encode()], dtype=np.object_)})
        return out


def build_lipsync_scorer(settings: LipSyncScorerSettings, device: str, root: Path | None = None) -> LipSyncScorer:
    return LipSyncScorer(settings, device, root)
