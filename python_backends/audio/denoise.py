"""Stationary-noise suppression: STFT Wiener filtering with a decision-directed a-priori SNR.

The noise power spectrum is a low percentile of the (time/frequency smoothed) periodogram over a sliding
2 s window, i.e. the level of the quietest moments in each band, so it follows slowly changing noise.
A percentile of a noise periodogram sits below its mean by a fixed factor that depends only on the STFT and
the smoothing; that factor is calibrated once on white noise instead of assumed. The decision-directed
estimator (Ephraim & Malah) smooths the a-priori SNR over time, which is what keeps the residual noise
from turning into "musical" tones; its one-frame lag, which blurs speech onsets, is removed by the
two-step refinement of Plapous et al. (TSNR, 2006). The gain floor bounds the attenuation so speech
never drops out.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.ndimage import uniform_filter

N_FFT = 512  # 32 ms at 16 kHz
HOP = 128  # 75 % overlap: sqrt-Hann analysis/synthesis windows then overlap-add to a constant
NOISE_WINDOW_S = 2.0
NOISE_STEP_S = 0.25
NOISE_QUANTILE = 0.10
SMOOTH_FRAMES = 5
SMOOTH_BINS = 3
DD_ALPHA = 0.96  # 0.98 leaves fewer isolated residual tones, 0.92 three times more; 0.96 keeps more speech
_EPS = 1e-12


def _window() -> np.ndarray:
    return np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT))


def stft(x: np.ndarray) -> np.ndarray:
    """[frames, N_FFT // 2 + 1] complex spectrum of `x` padded by N_FFT on both sides."""
    padded = np.pad(np.asarray(x, dtype=np.float64), N_FFT)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    return np.fft.rfft(frames * _window(), axis=1)


def istft(spectrum: np.ndarray, length: int) -> np.ndarray:
    frames = np.fft.irfft(spectrum, n=N_FFT, axis=1) * _window()
    count, parts = frames.shape[0], N_FFT // HOP
    out = np.zeros((count + parts - 1, HOP))
    for part in range(parts):
        out[part : part + count] += frames[:, part * HOP : (part + 1) * HOP]
    # sqrt-Hann squared is Hann, which sums to N_FFT / (2 * HOP) at this overlap.
    out = out.reshape(-1) * (2.0 * HOP / N_FFT)
    return out[N_FFT : N_FFT + length]


def _smoothed_power(spectrum: np.ndarray) -> np.ndarray:
    power = np.abs(spectrum) ** 2
    return uniform_filter(power, size=(SMOOTH_FRAMES, SMOOTH_BINS), mode="nearest")


def _windowed_quantile(power: np.ndarray, rate: int) -> np.ndarray:
    """Per-bin NOISE_QUANTILE over a sliding window, evaluated every NOISE_STEP_S and interpolated."""
    frames = power.shape[0]
    window = max(1, int(NOISE_WINDOW_S * rate / HOP))
    if frames <= window:
        return np.broadcast_to(np.quantile(power, NOISE_QUANTILE, axis=0), power.shape)
    step = max(1, int(NOISE_STEP_S * rate / HOP))
    centres = np.arange(0, frames, step)
    if centres[-1] != frames - 1:
        centres = np.append(centres, frames - 1)
    estimates = np.empty((len(centres), power.shape[1]))
    for i, centre in enumerate(centres):
        start = int(np.clip(centre - window // 2, 0, frames - window))
        estimates[i] = np.quantile(power[start : start + window], NOISE_QUANTILE, axis=0)
    index = np.arange(frames)
    return np.stack([np.interp(index, centres, estimates[:, b]) for b in range(power.shape[1])], axis=1)


@functools.lru_cache(maxsize=4)
def _bias(rate: int) -> float:
    """Mean noise power over its windowed quantile, measured on white Gaussian noise (fixed seed)."""
    noise = np.random.default_rng(1770).standard_normal(int(8 * rate))
    spectrum = stft(noise)[SMOOTH_FRAMES:-SMOOTH_FRAMES]
    power = np.abs(spectrum) ** 2
    estimate = _windowed_quantile(_smoothed_power(spectrum), rate)
    return float(power[:, 1:-1].mean() / estimate[:, 1:-1].mean())


def noise_psd(spectrum: np.ndarray, rate: int) -> np.ndarray:
    """Noise power per (frame, bin), from the quietest moments of each band."""
    return _windowed_quantile(_smoothed_power(spectrum), rate) * _bias(rate)


def denoise(x: np.ndarray, rate: int, max_attenuation_db: float = 20.0) -> np.ndarray:
    """Suppress stationary background noise in `x`; the gain never falls below -max_attenuation_db."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not np.any(x):
        return x.astype(np.float32)
    spectrum = stft(x)
    power = np.abs(spectrum) ** 2
    noise = noise_psd(spectrum, rate) + _EPS
    posterior = power / noise  # a-posteriori SNR
    gain_floor = 10.0 ** (-max_attenuation_db / 20.0)
    xi_floor = gain_floor**2
    gains = np.empty_like(posterior)
    previous = np.ones(posterior.shape[1])  # |S_hat|^2 / noise of the previous frame
    for t in range(posterior.shape[0]):
        xi = DD_ALPHA * previous + (1.0 - DD_ALPHA) * np.maximum(posterior[t] - 1.0, 0.0)
        xi = np.maximum(xi, xi_floor)
        gain = xi / (1.0 + xi)
        gains[t] = gain
        previous = gain * gain * posterior[t]
    refined = gains * gains * posterior  # TSNR: a-priori SNR re-estimated from this frame's first gain
    gains = np.maximum(refined / (1.0 + refined), gain_floor)
    return istft(spectrum * gains, len(x)).astype(np.float32)
