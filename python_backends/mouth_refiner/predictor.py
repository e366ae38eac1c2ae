"""Weights choice and the predictor of the mouth_refiner Triton model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import spec
from ..errors import InputError, WeightsUnavailable
from ..weights import FORBIDDEN, OFFICIAL, UNAVAILABLE, WeightsChoice, official_path
from .refiner import Wav2LipRefiner
from .settings import AUTO, WAV2LIP, WAV2LIP_GAN, MouthRefinerSettings

log = logging.getLogger(__name__)

MODEL = spec.MOUTH_REFINER.name
FILES = {WAV2LIP_GAN: "wav2lip_gan.pth", WAV2LIP: "wav2lip.pth"}
ENGINES = {WAV2LIP_GAN: "wav2lip-gan", WAV2LIP: "wav2lip"}
LICENCE = (
    "Wav2Lip (Rudrabha/Wav2Lip) code and pretrained wav2lip.pth / wav2lip_gan.pth: personal / research / "
    "non-commercial use only (trained on LRS2); commercial use needs the authors' permission"
)
ALTERNATIVE = (
    "a lip-sync generator licensed for commercial use, e.g. MuseTalk (TMElyralab/MuseTalk, MIT code and "
    "weights), or a Wav2Lip licence from its authors; or leave mouth_refiner off"
)


def choose_weights(settings: MouthRefinerSettings, root: Path | None = None) -> WeightsChoice:
    """auto: wav2lip_gan.pth (sharper mouths), else wav2lip.pth; no shipped fallback (no lip-sync generator
    comes with our dependencies), so without either the model is unavailable."""
    names = [WAV2LIP_GAN, WAV2LIP] if settings.checkpoint == AUTO else [settings.checkpoint]
    for name in names:
        path = official_path(MODEL, FILES[name], root)
        if path is not None:
            return WeightsChoice(MODEL, ENGINES[name], OFFICIAL, path, LICENCE,
                                 note=f"official {FILES[name]} (96x96 lower-face generator)",
                                 commercial_use=FORBIDDEN, alternative=ALTERNATIVE)
    wanted = " or ".join(FILES[n] for n in names)
    return WeightsChoice(
        MODEL, "-", UNAVAILABLE, None, LICENCE,
        note=f"no {wanted}: put the official Rudrabha/Wav2Lip checkpoint at <weights root>/{MODEL}/",
        commercial_use=FORBIDDEN, alternative=ALTERNATIVE,
    )


def _scalar(batch: dict[str, np.ndarray], name: str, index: int) -> np.ndarray:
    value = np.asarray(batch[name][index]).reshape(-1)
    if value.size != 1:
        raise InputError(f"{name} must hold one value, got {value.size}")
    return value[0]


class MouthRefiner:
    """The Triton predictor: one request refines a run of frames, or several runs one after another
    (`frame_index`), which then share the network's batches."""

    def __init__(self, refiner: Wav2LipRefiner, weights: WeightsChoice) -> None:
        self.refiner = refiner
        self.weights = weights

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        for name in (spec.FRAMES, spec.FACE_BOXES, spec.MEL, spec.START_FRAME, spec.FPS):
            if name not in batch:
                raise InputError(f"missing input {name!r}")
        results = []
        for i in range(len(batch[spec.FRAMES])):
            optional = {key: batch[name][i] for key, name in (("contours", spec.MOUTH_CONTOUR),
                                                              ("frame_index", spec.FRAME_INDEX)) if name in batch}
            frames = self.refiner.refine(
                batch[spec.FRAMES][i], batch[spec.FACE_BOXES][i], batch[spec.MEL][i],
                start_frame=int(_scalar(batch, spec.START_FRAME, i)), fps=float(_scalar(batch, spec.FPS, i)),
                **optional,
            )
            results.append({spec.FRAMES: frames})
        return results


def build_mouth_refiner(settings: MouthRefinerSettings, device: str, root: Path | None = None) -> MouthRefiner:
    """The predictor for `settings`; WeightsUnavailable (saying what to supply) when there are no weights."""
    choice = choose_weights(settings, root)
    if not choice.available:
        raise WeightsUnavailable(f"{MODEL}: {choice.note}")
    import torch

    from .wav2lip import load_wav2lip

    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = load_wav2lip(choice.path, device, what=MODEL)
    refiner = Wav2LipRefiner(model, pads=settings.pads, box_smoothing=settings.box_smoothing,
                             feather=settings.feather, batch_size=settings.batch_size, device=device)
    log.info("%s: %s from %s", MODEL, choice.engine, choice.path)
    return MouthRefiner(refiner, choice)
