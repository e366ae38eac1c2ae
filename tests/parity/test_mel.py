"""librosa (the oracle Wav2Lip's audio.py calls) against audio/mel.py, computed live on the same waveforms.

Wav2Lip's mel is librosa's Slaney filterbank over librosa's STFT magnitude, with Wav2Lip's pre-emphasis before and
its decibel scaling and [-4, 4] normalisation after. librosa is compared here: the filterbank, the STFT (librosa
0.7, which Wav2Lip pins, padded centred frames by reflection; librosa 0.10+ pads with zeros by default, so the test
passes pad_mode="reflect") and their product as librosa.feature.melspectrogram computes it, on our pre-emphasised
signal. Wav2Lip's own code is not installable (not on PyPI); its wrapper is anchored by the reference values in
tests/unit/test_audio_features.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from python_backends.audio import mel

# Whole hops, not whole hops, barely more than half a window (the shortest a reflected frame allows), 3 s.
LENGTHS = (16000, 12345, 401, 48000)
WHY = "float64 FFTs of the same frames; librosa's float32 filterbank"


def _speech_like(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / mel.SAMPLE_RATE
    voiced = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 2100 * t + 900 * t * t)
    return 0.3 * voiced * (1 + np.sin(2 * np.pi * 4 * t)) + 0.05 * rng.standard_normal(length)


@pytest.fixture(scope="module")
def librosa():
    import librosa

    return librosa


def test_filterbank(librosa, parity) -> None:
    theirs = librosa.filters.mel(sr=mel.SAMPLE_RATE, n_fft=mel.N_FFT, n_mels=mel.NUM_MELS, fmin=mel.FMIN,
                                 fmax=mel.FMAX)
    ours = mel.mel_filterbank()
    assert ours.dtype == theirs.dtype == np.float32
    parity.check("Wav2Lip mel: Slaney filterbank (librosa.filters.mel)", ours, theirs, tolerance=0.0,
                 why="the same float32 weights", case="80 mels, 55-7600 Hz, n_fft 800")


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large for input signal")  # 401 samples: on purpose
@pytest.mark.parametrize("length", LENGTHS)
def test_stft_and_mel(librosa, parity, length) -> None:
    emphasised = lfilter([1.0, -mel.PREEMPHASIS], [1.0], _speech_like(length, seed=length))
    case = f"{length} samples ({length / mel.SAMPLE_RATE:.3g} s)"
    stft = dict(n_fft=mel.N_FFT, hop_length=mel.HOP, win_length=mel.WIN, center=True, pad_mode="reflect")
    magnitude = mel.stft_magnitude(emphasised)
    parity.check("Wav2Lip mel: STFT magnitude (librosa.stft, reflect padding)", magnitude,
                 np.abs(librosa.stft(emphasised, **stft)), why=WHY, case=case)
    theirs = librosa.feature.melspectrogram(y=emphasised, sr=mel.SAMPLE_RATE, power=1.0, n_mels=mel.NUM_MELS,
                                            fmin=mel.FMIN, fmax=mel.FMAX, **stft)
    parity.check("Wav2Lip mel: mel magnitudes (librosa.feature.melspectrogram)", mel.mel_filterbank() @ magnitude,
                 theirs, why=WHY, case=case)
    assert mel.melspectrogram(_speech_like(length, seed=length)).shape == theirs.shape
