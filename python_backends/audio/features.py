"""The audio_features model: one encoded audio file in, the waveform, mel, wav2vec2 states and a report out.

Per clip: decode (ffmpeg) -> measure the input -> denoise -> loudness-normalise -> measure the output ->
Wav2Lip mel. wav2vec2 then runs once over the whole batch. Without the official wav2vec2 folder the model
still serves everything else, with empty wav2vec2 features and the reason in the report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import spec
from ..errors import InputError, WeightsUnavailable
from ..licences import LicencePolicy
from ..weights import ALLOWED, OFFICIAL, UNAVAILABLE, WeightsChoice, official_path
from . import levels, loudness, mel
from .decode import SAMPLE_RATE, decode_audio
from .denoise import denoise
from .wav2vec2 import FPS as WAV2VEC2_FPS
from .wav2vec2 import Wav2Vec2Features, check_folder

log = logging.getLogger(__name__)

MODEL = spec.AUDIO_FEATURES.name
WAV2VEC2_FOLDER = "wav2vec2-large-xlsr-53-english"  # Wan2.2 wan/configs/wan_s2v_14B.py: s2v_14B.wav2vec
_DSP = "ffmpeg + BS.1770-4 loudness + Wiener denoiser + Wav2Lip mel"


@dataclass(frozen=True)
class AudioFeaturesSettings:
    target_lufs: float = -23.0  # EBU R128 programme loudness
    peak_ceiling_dbfs: float = -1.0  # true-peak (4x oversampled) limit after normalisation
    max_gain_db: float = 40.0  # never amplify more than this (near-silent clips stay quiet)
    denoise: bool = True
    max_attenuation_db: float = 20.0  # deepest noise suppression per time-frequency cell
    max_duration_s: float = 300.0  # = ValidationLimits.max_audio_s
    decode_timeout_s: float = 30.0
    wav2vec2: bool = True  # compute wav2vec2 features when the weights are present
    wav2vec2_folder: str = WAV2VEC2_FOLDER  # under <weights root>/audio_features/
    require_wav2vec2: bool = False  # refuse to serve (UNAVAILABLE) without wav2vec2 weights
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)

    def __post_init__(self) -> None:
        if not -70.0 < self.target_lufs < 0.0:
            raise ValueError(f"target_lufs must be between -70 and 0 LUFS, got {self.target_lufs}")
        if self.peak_ceiling_dbfs > 0.0:
            raise ValueError(f"peak_ceiling_dbfs must be <= 0 dBFS, got {self.peak_ceiling_dbfs}")
        if self.max_gain_db < 0.0:
            raise ValueError(f"max_gain_db must be >= 0, got {self.max_gain_db}")
        if not 0.0 < self.max_attenuation_db <= 60.0:
            raise ValueError(f"max_attenuation_db must be in (0, 60], got {self.max_attenuation_db}")
        if self.max_duration_s <= 0.0 or self.decode_timeout_s <= 0.0:
            raise ValueError("max_duration_s and decode_timeout_s must be positive")
        if not self.wav2vec2_folder or "/" in self.wav2vec2_folder or self.wav2vec2_folder in (".", ".."):
            raise ValueError(f"wav2vec2_folder must be a plain folder name, got {self.wav2vec2_folder!r}")
        if self.require_wav2vec2 and not self.wav2vec2:
            raise ValueError("require_wav2vec2 needs wav2vec2 = true")


def choose_weights(settings: AudioFeaturesSettings, root: Path | None = None) -> WeightsChoice:
    """The official wav2vec2 folder when present (and complete), else UNAVAILABLE with what to supply."""
    folder = official_path(MODEL, settings.wav2vec2_folder, root) if settings.wav2vec2 else None
    if folder is not None:
        check_folder(folder)
        return WeightsChoice(
            model=MODEL, engine=f"{_DSP} + {settings.wav2vec2_folder}", source=OFFICIAL, path=folder,
            licence="Apache-2.0 (jonatasgrosman/wav2vec2-large-xlsr-53-english)",
            note="wav2vec2 hidden states as Wan2.2-S2V's AudioEncoder computes them", commercial_use=ALLOWED,
        )
    if not settings.wav2vec2:
        note = "wav2vec2 disabled by the wav2vec2 parameter; waveform, mel and report are served"
    else:
        note = (f"no wav2vec2 weights: put the Hugging Face folder {settings.wav2vec2_folder} under "
                f"<weights root>/{MODEL}/ for wav2vec2 features; waveform, mel and report are served "
                f"without it")
    return WeightsChoice(model=MODEL, engine=_DSP, source=UNAVAILABLE, path=None, licence="", note=note)


@dataclass(frozen=True)
class ProcessedClip:
    waveform: np.ndarray
    mel: np.ndarray
    report: dict


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def process_clip(data: bytes, settings: AudioFeaturesSettings) -> ProcessedClip:
    """Everything but wav2vec2 for one encoded file."""
    decoded = decode_audio(data, max_duration_s=settings.max_duration_s, timeout_s=settings.decode_timeout_s)
    samples = decoded.samples
    loudness_in = loudness.integrated_loudness(samples, SAMPLE_RATE)
    levels_in = levels.measure(samples, SAMPLE_RATE)
    if settings.denoise:
        samples = denoise(samples, SAMPLE_RATE, settings.max_attenuation_db)
    waveform, gain_db = loudness.normalise(
        samples, SAMPLE_RATE, settings.target_lufs, settings.peak_ceiling_dbfs, settings.max_gain_db
    )
    levels_out = levels.measure(waveform, SAMPLE_RATE)
    mel_frames = mel.melspectrogram(waveform)
    report = {
        "duration_s": _round(decoded.duration_s, 3),
        "input_format": decoded.input_format,
        "input_codec": decoded.input_codec,
        "input_sample_rate_hz": decoded.input_sample_rate_hz,
        "input_channels": decoded.input_channels,
        "loudness_lufs_in": _round(loudness_in),  # null: silent (every block under the -70 LUFS gate)
        "loudness_lufs_out": _round(loudness.integrated_loudness(waveform, SAMPLE_RATE)),
        "gain_db": _round(gain_db),
        "peak_dbfs_in": _round(loudness.to_db(decoded.peak)),
        "clipped_fraction": round(decoded.clipped_fraction, 6),
        "active_fraction": round(levels_in.active_fraction, 4),
        "noise_floor_dbfs": _round(levels_in.noise_floor_dbfs),
        "snr_db_estimate_in": _round(levels_in.snr_db),
        "snr_db_estimate_out": _round(levels_out.snr_db),
        "denoised": bool(settings.denoise),
        "mel_frames": int(mel_frames.shape[1]),
        "mel_fps": mel.FPS,
    }
    return ProcessedClip(waveform=waveform, mel=mel_frames, report=report)


def _item_bytes(value: object) -> bytes:
    item = value[0] if isinstance(value, np.ndarray) and value.ndim else value
    if isinstance(item, (bytes, bytearray, np.bytes_)):
        return bytes(item)
    raise InputError(
        f"{spec.AUDIO_BYTES} must hold the encoded audio file as bytes, got {type(item).__name__}"
    )


class AudioFeaturesPredictor:
    """Triton predictor for spec.AUDIO_FEATURES."""

    def __init__(self, settings: AudioFeaturesSettings, weights: WeightsChoice,
                 encoder: Wav2Vec2Features | None) -> None:
        self.settings, self.weights, self.encoder = settings, weights, encoder
        if encoder is None:
            self.wav2vec2_status = f"unavailable: {weights.note}"
        else:
            self.wav2vec2_status = "available"

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        started = time.perf_counter()
        clips = [process_clip(_item_bytes(item), self.settings) for item in batch[spec.AUDIO_BYTES]]
        dsp_s = time.perf_counter() - started
        if self.encoder is not None:
            features = self.encoder.encode([clip.waveform for clip in clips])
        else:
            features = [np.zeros((0, 0, 0), dtype=np.float32) for _ in clips]
        audio_s = sum(len(clip.waveform) for clip in clips) / SAMPLE_RATE
        log.info("audio_features: %d clip(s), %.1f s of audio, dsp %.2f s, wav2vec2 %.2f s", len(clips),
                 audio_s, dsp_s, time.perf_counter() - started - dsp_s)
        results = []
        for clip, feature in zip(clips, features):
            # wav2vec2_frames: several clips in one request come back zero-padded to the longest.
            report = dict(clip.report, wav2vec2=self.wav2vec2_status, wav2vec2_fps=WAV2VEC2_FPS,
                          wav2vec2_frames=int(feature.shape[1]))
            results.append({
                spec.WAVEFORM: clip.waveform.astype(np.float32),
                spec.MEL: clip.mel,
                spec.WAV2VEC2_FEATURES: feature.astype(np.float32, copy=False),
                spec.AUDIO_REPORT: np.array([json.dumps(report).encode()], dtype=np.object_),
            })
        return results


def build_audio_features(settings: AudioFeaturesSettings, device: str,
                         root: Path | None = None) -> AudioFeaturesPredictor:
    weights = choose_weights(settings, root)
    encoder = None
    if weights.source == OFFICIAL:
        encoder = Wav2Vec2Features(weights.path, device)
        log.info("audio_features: wav2vec2 %s on %s", encoder.describe(), device)
    elif settings.require_wav2vec2:
        raise WeightsUnavailable(weights.note)
    return AudioFeaturesPredictor(settings, weights, encoder)
