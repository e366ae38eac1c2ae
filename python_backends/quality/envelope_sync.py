"""Lip-sync without learned weights: mouth opening (landmarks) against the speech envelope, over AV offsets.

The mouth's inner-lip opening follows the loudness of speech (Chandrasekaran et al., "The natural statistics
of audiovisual speech", PLoS Comput Biol 2009: mouth area and the acoustic envelope correlate at 0.1-0.5 across
talkers, most strongly in the 2-7 Hz syllable band). Shifting one against the other and taking the lag with the
highest correlation gives the AV offset, as SyncNet's offset search does with embeddings. It is a coarser judge
than SyncNet: it sees how far the mouth opens, not its shape, and natural speech can show the mouth a little
ahead of the sound. It runs when no SyncNet weights are supplied, and the report names it.

Sign convention as SyncScore: offset_frames > 0 means the audio leads the video (a mouth opening appears that
many frames after the sound that goes with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from ..errors import InputError
from ..mediapipe_models.mesh_layout import INNER_LIP_PAIRS, MESH_POINTS

SAMPLE_RATE = 16000
SPEECH_BAND_HZ = (300.0, 3000.0)  # where voiced speech energy sits; removes hum and hiss from the envelope
UPPER_LIP, LOWER_LIP = np.array([61, 62, 63]), np.array([67, 66, 65])  # inner lips, dlib / 300-W order
EYE_CORNERS = (36, 45)
# Face Mesh: nine facing pairs along the whole inner-lip contour (corner to corner), outer eye corners.
MESH_UPPER_LIP, MESH_LOWER_LIP = INNER_LIP_PAIRS[:, 0], INNER_LIP_PAIRS[:, 1]
MESH_EYE_CORNERS = (33, 263)


@dataclass(frozen=True)
class EnvelopeSync:
    offset_frames: int
    correlation: float  # Pearson r of opening vs envelope at the best offset
    confidence: float  # best r minus the median r over all offsets
    per_offset_r: np.ndarray  # [2 * vshift + 1]; index i is offset i - vshift

    def as_dict(self) -> dict:
        return {"offset_frames": self.offset_frames, "correlation": round(self.correlation, 4),
                "confidence": round(self.confidence, 4),
                "per_offset_r": [round(float(r), 4) for r in self.per_offset_r]}


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """[T] inner-lip gap over the inter-ocular distance, from [T, 68, 2] (dlib: the three middle pairs) or
    [T, 468, 2] (Face Mesh: nine pairs along the dense inner-lip contour) landmarks (scale-free)."""
    points = np.asarray(landmarks, np.float64)
    if points.ndim != 3 or points.shape[1:] not in ((68, 2), (MESH_POINTS, 2)):
        raise InputError(f"mouth opening needs [frames, 68 or {MESH_POINTS}, 2] landmarks; got {points.shape}")
    mesh = points.shape[1] == MESH_POINTS
    upper, lower = (MESH_UPPER_LIP, MESH_LOWER_LIP) if mesh else (UPPER_LIP, LOWER_LIP)
    corners = MESH_EYE_CORNERS if mesh else EYE_CORNERS
    gap = np.linalg.norm(points[:, upper] - points[:, lower], axis=-1).mean(1)
    eyes = np.linalg.norm(points[:, corners[1]] - points[:, corners[0]], axis=-1)
    return gap / np.maximum(eyes, 1e-6)


def speech_envelope(waveform: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """[frames] log RMS (dB) of band-passed 16 kHz speech in a two-frame Hann window centred on each frame."""
    audio = np.asarray(waveform, np.float64).reshape(-1)
    if len(audio) > 64:
        sos = butter(4, SPEECH_BAND_HZ, btype="bandpass", fs=SAMPLE_RATE, output="sos")
        audio = sosfiltfilt(sos, audio)
    width = max(8, int(round(2 * SAMPLE_RATE / fps)))
    centres = np.round((np.arange(frames) + 0.5) * SAMPLE_RATE / fps).astype(int)
    padded = np.concatenate([np.zeros(width), audio, np.zeros(width)])
    index = centres[:, None] - width // 2 + width + np.arange(width)[None, :]
    windows = padded[np.clip(index, 0, len(padded) - 1)] * np.hanning(width)[None, :]
    return 10.0 * np.log10(np.mean(windows**2, axis=1) + 1e-10)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 1e-12 else 0.0


def envelope_sync(opening: np.ndarray, envelope: np.ndarray, vshift: int = 15) -> EnvelopeSync:
    """Correlate opening[t + k] with envelope[t] for k in -vshift..vshift over the overlapping frames."""
    opening, envelope = np.asarray(opening, np.float64), np.asarray(envelope, np.float64)
    if opening.shape != envelope.shape or opening.ndim != 1:
        raise ValueError(f"need equal [T] series, got {opening.shape} and {envelope.shape}")
    if len(opening) < 2 * vshift + 1:
        raise InputError(f"lip-sync by envelope needs at least {2 * vshift + 1} frames; got {len(opening)}")
    rs = np.empty(2 * vshift + 1)
    for i, k in enumerate(range(-vshift, vshift + 1)):
        rs[i] = _pearson(opening[max(k, 0): len(opening) + min(k, 0)], envelope[max(-k, 0): len(envelope) - max(k, 0)])
    best = int(np.argmax(rs))
    return EnvelopeSync(best - vshift, float(rs[best]), float(rs[best] - np.median(rs)), rs)
