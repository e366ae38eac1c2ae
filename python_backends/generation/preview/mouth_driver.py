"""Mouth opening and shape per video frame from the speech waveform.

Opening follows short-time energy (louder syllables open wider); roundness follows the spectral centroid
(back vowels such as "o"/"u" concentrate energy low and are spoken with rounded, narrower lips). A fast
attack and slower release mimic how jaws move: they open quickly on a syllable and close more gently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class MouthTrack:
    openness: np.ndarray  # [T] in [0, 1]
    roundness: np.ndarray  # [T] in [0, 1]
    energy_db: np.ndarray  # [T] frame RMS in dBFS, the raw cue (kept for QA and tests)


def _frame_windows(waveform: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """[T, W] windows centred on each video frame's time, two frame periods wide."""
    width = int(round(2 * SAMPLE_RATE / fps))
    centres = (np.arange(frames) + 0.5) * SAMPLE_RATE / fps
    starts = np.clip(np.round(centres - width / 2).astype(int), 0, None)
    padded = np.concatenate([waveform, np.zeros(width, np.float32)])
    index = starts[:, None] + np.arange(width)[None, :]
    return padded[np.clip(index, 0, len(padded) - 1)] * np.hanning(width)[None, :]


def _smooth(values: np.ndarray, attack: float, release: float) -> np.ndarray:
    out = np.empty_like(values)
    state = 0.0
    for i, value in enumerate(values):
        rate = attack if value > state else release
        state += rate * (value - state)
        out[i] = state
    return out


def mouth_track(waveform: np.ndarray, fps: float, frames: int, floor_db: float = -45.0) -> MouthTrack:
    """Per-frame mouth parameters for `frames` video frames of 16 kHz mono speech."""
    windows = _frame_windows(np.asarray(waveform, np.float32), fps, frames)
    rms = np.sqrt(np.mean(windows**2, axis=1) + 1e-12)
    energy_db = 20 * np.log10(rms + 1e-9)
    # Normalise to the clip's own loud level so quiet recordings still move the mouth.
    loud = float(np.percentile(energy_db, 95)) if frames else 0.0
    floor = max(floor_db, loud - 30.0)
    openness = np.clip((energy_db - floor) / max(loud - floor, 1e-3), 0.0, 1.0) ** 1.3
    spectrum = np.abs(np.fft.rfft(windows, axis=1))
    freqs = np.fft.rfftfreq(windows.shape[1], 1.0 / SAMPLE_RATE)
    centroid = (spectrum * freqs).sum(axis=1) / (spectrum.sum(axis=1) + 1e-9)
    roundness = np.clip((1800.0 - centroid) / 1200.0, 0.0, 1.0) * (openness > 0.05)
    return MouthTrack(
        openness=_smooth(openness, attack=0.85, release=0.45).astype(np.float32),
        roundness=_smooth(roundness, attack=0.5, release=0.3).astype(np.float32),
        energy_db=energy_db.astype(np.float32),
    )
