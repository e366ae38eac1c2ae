"""80-bin log-mel spectrogram exactly as Wav2Lip's audio.py / hparams.py compute it (SyncNet's input).

Wav2Lip: pre-emphasis 0.97, librosa.stft(n_fft=800, hop_length=200, win_length=800) with librosa 0.7's
defaults (periodic Hann window, centred frames, reflect padding), magnitude, librosa's Slaney mel filterbank
(80 mels, 55-7600 Hz, area-normalised), 20*log10(max(1e-5, x)) - 20 dB, then symmetric normalisation to
[-4, 4] with clipping. librosa is not a dependency: the STFT and the filterbank are re-implemented here and
checked live against librosa in tests/parity/test_mel.py.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
FPS = SAMPLE_RATE / HOP  # 80 mel frames per second

# Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = _F_SP * mel
    log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


@functools.lru_cache(maxsize=4)
def mel_filterbank(rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = NUM_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney"): float32
    [n_mels, 1 + n_fft // 2]."""
    fft_freqs = np.linspace(0.0, rate / 2.0, 1 + n_fft // 2)
    mel_freqs = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    # Rounded to float32 before the area normalisation, as librosa stores the ramps: the weights then equal
    # librosa's bit for bit (one rounding after the normalisation instead is 1 ulp off in places).
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]  # equal area per filter
    return weights


def stft_magnitude(x: np.ndarray) -> np.ndarray:
    """|librosa.stft(x, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode="reflect")|."""
    padded = np.pad(np.asarray(x, dtype=np.float64), N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN) / WIN)  # periodic Hann (fftbins=True)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    return np.abs(np.fft.rfft(frames * window, axis=1)).T  # [bins, frames]


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.melspectrogram for a 16 kHz waveform: float32 [80, 1 + len // 200]."""
    wav = np.asarray(wav, dtype=np.float64)
    if len(wav) <= N_FFT // 2:
        # Reflect padding needs more samples than the half window; pad with silence like a short clip.
        wav = np.pad(wav, (0, N_FFT // 2 + 1 - len(wav)))
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    mel = mel_filterbank() @ stft_magnitude(emphasised)
    min_level = np.exp(MIN_LEVEL_DB / 20.0 * np.log(10.0))
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    normalised = (2.0 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
    return np.clip(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)
