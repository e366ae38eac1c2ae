"""ITU-R BS.1770-4 integrated loudness and loudness normalisation with a true-peak ceiling.

The K-weighting filter is specified by its 48 kHz biquad coefficients; to run at 16 kHz we re-derive both
stages from their analog prototypes (shelf and high-pass centre frequency, gain and Q, as in libebur128),
which reproduces the published 48 kHz coefficients exactly (tested) and stays correct at any rate.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.signal import lfilter, resample_poly

# Analog prototype of BS.1770 stage 1 (high shelf, +4 dB above ~1.7 kHz: the head's acoustic effect).
_SHELF_F0 = 1681.974450955533
_SHELF_GAIN_DB = 3.999843853973347
_SHELF_Q = 0.7071752369554196
# Stage 2: the "RLB" high-pass.
_HIGHPASS_F0 = 38.13547087602444
_HIGHPASS_Q = 0.5003270373238773

BLOCK_S = 0.4
OVERLAP = 0.75
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
_OFFSET = -0.691  # makes a 997 Hz sine read its RMS level


@functools.lru_cache(maxsize=8)
def k_weighting(rate: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((b, a) of the shelf, (b, a) of the high-pass) at `rate` Hz."""
    k = math.tan(math.pi * _SHELF_F0 / rate)
    vh = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf_b = np.array([(vh + vb * k / _SHELF_Q + k * k) / a0, 2.0 * (k * k - vh) / a0,
                        (vh - vb * k / _SHELF_Q + k * k) / a0])
    shelf_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _SHELF_Q + k * k) / a0])
    k = math.tan(math.pi * _HIGHPASS_F0 / rate)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    high_b = np.array([1.0, -2.0, 1.0])
    high_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _HIGHPASS_Q + k * k) / a0])
    return (shelf_b, shelf_a), (high_b, high_a)


def k_weight(x: np.ndarray, rate: int) -> np.ndarray:
    (b1, a1), (b2, a2) = k_weighting(rate)
    return lfilter(b2, a2, lfilter(b1, a1, np.asarray(x, dtype=np.float64)))


def block_powers(x: np.ndarray, rate: int) -> np.ndarray:
    """Mean square of the K-weighted signal over 400 ms blocks with 75 % overlap."""
    weighted = k_weight(x, rate)
    block = int(round(BLOCK_S * rate))
    step = int(round(BLOCK_S * (1.0 - OVERLAP) * rate))
    if len(weighted) < block:
        # Shorter than one gating block: BS.1770 defines nothing; measure the clip as a single block.
        return np.array([np.mean(weighted**2)]) if len(weighted) else np.zeros(0)
    squares = np.concatenate([[0.0], np.cumsum(weighted**2)])
    starts = np.arange(0, len(weighted) - block + 1, step)
    return (squares[starts + block] - squares[starts]) / block


def _lufs(power: np.ndarray | float) -> np.ndarray | float:
    return _OFFSET + 10.0 * np.log10(np.maximum(power, 1e-300))


def integrated_loudness(x: np.ndarray, rate: int) -> float | None:
    """Gated integrated loudness in LUFS (mono, channel weight 1); None when every block is below the
    -70 LUFS absolute gate (silence)."""
    powers = block_powers(x, rate)
    powers = powers[_lufs(powers) > ABSOLUTE_GATE_LUFS]
    if powers.size == 0:
        return None
    relative_gate = _lufs(powers.mean()) + RELATIVE_GATE_LU
    gated = powers[_lufs(powers) > relative_gate]
    return float(_lufs(gated.mean()))


def true_peak(x: np.ndarray, oversample: int = 4) -> float:
    """Peak |x| after 4x polyphase oversampling: catches the inter-sample peaks a DAC would produce."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return 0.0
    return float(max(np.abs(x).max(), np.abs(resample_poly(x, oversample, 1)).max()))


def to_db(amplitude: float, floor_db: float = -120.0) -> float:
    return float(max(20.0 * math.log10(amplitude), floor_db)) if amplitude > 0 else floor_db


def normalise(x: np.ndarray, rate: int, target_lufs: float, ceiling_dbfs: float,
              max_gain_db: float) -> tuple[np.ndarray, float]:
    """Scale `x` to `target_lufs`, never letting the true peak exceed `ceiling_dbfs` nor the gain exceed
    `max_gain_db` (so hiss under a near-silent clip is not blown up). Returns (signal, gain in dB)."""
    loudness = integrated_loudness(x, rate)
    if loudness is None:
        return np.asarray(x, dtype=np.float32), 0.0
    gain_db = min(target_lufs - loudness, max_gain_db)
    peak = true_peak(x)
    if peak > 0:
        gain_db = min(gain_db, ceiling_dbfs - 20.0 * math.log10(peak))
    return (np.asarray(x, dtype=np.float64) * 10.0 ** (gain_db / 20.0)).astype(np.float32), float(gain_db)
