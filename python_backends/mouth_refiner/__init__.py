"""mouth_refiner: the Wav2Lip mouth pass over runs of frames flagged by plosive detection or a low sync score."""

from .plosive import PlosiveSettings, burst_times, plosive_frames, refine_runs
from .predictor import MouthRefiner, build_mouth_refiner, choose_weights
from .refiner import Wav2LipRefiner, mel_windows
from .settings import MouthRefinerSettings
from .wav2lip import Wav2Lip, load_wav2lip

__all__ = [
    "MouthRefiner",
    "MouthRefinerSettings",
    "PlosiveSettings",
    "Wav2Lip",
    "Wav2LipRefiner",
    "build_mouth_refiner",
    "burst_times",
    "choose_weights",
    "load_wav2lip",
    "mel_windows",
    "plosive_frames",
    "refine_runs",
]
