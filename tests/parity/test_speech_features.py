"""python_speech_features (the `python-speech-features` package on PyPI, what SyncNet's syncnet_python calls for its
audio input: `python_speech_features.mfcc(audio, 16000)`) against qa/syncnet.py, live on the same signals.

SyncNet's own code is not installable (not on PyPI); its network is anchored by the key layout of syncnet_v2.model
(tests/unit/test_lipsync_scorer.py). Its audio front end is this package, compared here: the mel filterbank and the
13 MFCCs per 10 ms, on int16 speech-like signals of lengths that are and are not whole hops, and one shorter
than a window (one zero-padded frame).
"""

from __future__ import annotations

import numpy as np
import pytest

from python_backends.lipsync_scorer.syncnet import NFFT, NFILT, SAMPLE_RATE, mfcc, mfcc_filterbank

LENGTHS = (16000, 4321, 250, 48000)


@pytest.fixture(scope="module")
def speech_features():
    import python_speech_features

    return python_speech_features


def test_filterbank(speech_features, parity) -> None:
    theirs = speech_features.get_filterbanks(nfilt=NFILT, nfft=NFFT, samplerate=SAMPLE_RATE)
    parity.check("SyncNet MFCC: mel filterbank (get_filterbanks)", mfcc_filterbank(), theirs, tolerance=0.0,
                 why="the same float64 arithmetic", case=f"{NFILT} filters, nfft {NFFT}")


@pytest.mark.parametrize("length", LENGTHS)
def test_mfcc(speech_features, parity, length) -> None:
    rng = np.random.default_rng(length)
    t = np.arange(length) / SAMPLE_RATE
    speech = 0.4 * np.sin(2 * np.pi * np.cumsum(150 + 1500 * t) / SAMPLE_RATE) + 0.05 * rng.standard_normal(length)
    signal = np.round(speech * 32767).astype(np.int16)  # what scipy.io.wavfile hands syncnet_python
    parity.check("SyncNet MFCC: 13 cepstra per 10 ms (mfcc)", mfcc(signal), speech_features.mfcc(signal, SAMPLE_RATE),
                 tolerance=1e-12, why="float64; the same FFTs and DCT", case=f"{length} samples")
