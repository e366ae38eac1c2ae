"""Frame-level measurements: noise floor, activity and an SNR estimate from 30 ms frame energies.

No reference signal exists at serving time, so the noise floor is the power of the quietest frames (10th
percentile) and the signal is what the active frames carry above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.030
NOISE_PERCENTILE = 10.0
ACTIVE_MIN_DBFS = -50.0
ACTIVE_ABOVE_FLOOR_DB = 6.0
FLOOR_DB = -120.0
MAX_SNR_DB = 100.0  # digital silence between words would make the estimate infinite


@dataclass(frozen=True)
class Levels:
    noise_floor_dbfs: float
    active_fraction: float
    snr_db: float


def frame_powers(x: np.ndarray, rate: int) -> np.ndarray:
    """Mean square of consecutive non-overlapping 30 ms frames (a last partial frame is dropped unless
    it is the only one)."""
    size = max(1, int(round(FRAME_S * rate)))
    x = np.asarray(x, dtype=np.float64)
    count = len(x) // size
    if count == 0:
        return np.array([np.mean(x**2)]) if len(x) else np.zeros(1)
    return np.mean(x[: count * size].reshape(count, size) ** 2, axis=1)


def power_db(power: float | np.ndarray) -> float | np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-300)), FLOOR_DB)


def measure(x: np.ndarray, rate: int) -> Levels:
    powers = frame_powers(x, rate)
    noise = float(np.percentile(powers, NOISE_PERCENTILE))
    noise_db = float(power_db(noise))
    threshold = max(ACTIVE_MIN_DBFS, noise_db + ACTIVE_ABOVE_FLOOR_DB)
    active = power_db(powers) > threshold
    if not active.any():
        return Levels(noise_db, 0.0, 0.0)
    signal = float(powers[active].mean()) - noise
    floor = 10.0 ** (FLOOR_DB / 10.0)
    snr = 10.0 * math.log10(max(signal, floor) / max(noise, floor))
    return Levels(noise_db, float(active.mean()), float(min(snr, MAX_SNR_DB)))
