"""Plosive detection on 16 kHz speech, to pick the frames the mouth pass regenerates.

A plosive (p, b, t, d, k, g) is a closure of the vocal tract, heard as near silence for tens of ms, then a
release burst: a sudden jump in energy whose spectrum is broadband (noise-like, much of it above 2 kHz). Video
generators get these mouths wrong most often (the lips must be pressed shut just before the burst). A vowel
onset after a pause also jumps in energy, but its energy sits in the low harmonics and formants, so the
high-band share tells the two apart.

Frames are 10 ms Hann windows every 5 ms. A burst is the first frame after >= `closure_ms` of frames at least
`silence_db` below the speech level (the 95th percentile of frame energies) whose energy rises `rise_db` above
the closure within `rise_ms`, comes within `burst_db` of the speech level and has at least `min_high_share` of
its energy above `high_band_hz`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class PlosiveSettings:
    hop_ms: float = 5.0
    window_ms: float = 10.0
    closure_ms: float = 30.0  # shortest near-silent closure before a burst
    silence_db: float = -40.0  # closure frames are at least this far below the speech level
    rise_db: float = 20.0  # the burst is this much louder than the closure ...
    rise_ms: float = 15.0  # ... within this long after the closure ends
    burst_db: float = -30.0  # and no quieter than this relative to the speech level
    high_band_hz: float = 2000.0
    min_high_share: float = 0.25  # share of the burst frame's energy above high_band_hz

    def __post_init__(self) -> None:
        if not 0 < self.hop_ms <= self.window_ms:
            raise ValueError("need 0 < hop_ms <= window_ms")
        if self.closure_ms <= 0 or self.rise_ms < 0 or self.rise_db <= 0:
            raise ValueError("closure_ms and rise_db must be > 0, rise_ms >= 0")
        if not 0 < self.high_band_hz < SAMPLE_RATE / 2 or not 0 < self.min_high_share < 1:
            raise ValueError("high_band_hz must be within (0, 8000) and min_high_share within (0, 1)")


def _frames(waveform: np.ndarray, settings: PlosiveSettings) -> tuple[np.ndarray, int]:
    """[count, size] Hann-windowed frames and the hop, in samples."""
    hop = int(round(settings.hop_ms * SAMPLE_RATE / 1000))
    size = int(round(settings.window_ms * SAMPLE_RATE / 1000))
    count = 1 + (len(waveform) - size) // hop
    index = np.arange(size)[None, :] + hop * np.arange(count)[:, None]
    return waveform[index] * np.hanning(size + 2)[1:-1], hop


def burst_times(waveform: np.ndarray, settings: PlosiveSettings | None = None) -> np.ndarray:
    """Times (s) at which plosive release bursts start in 16 kHz mono speech."""
    settings = settings or PlosiveSettings()
    wave = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if len(wave) < settings.window_ms * SAMPLE_RATE / 1000 or not np.isfinite(wave).all():
        return np.zeros(0)
    frames, hop = _frames(wave, settings)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(frames.shape[1], 1.0 / SAMPLE_RATE)
    total = power.sum(axis=1)
    energy_db = 10.0 * np.log10(total / frames.shape[1] + 1e-12)
    high_share = power[:, freqs >= settings.high_band_hz].sum(axis=1) / np.maximum(total, 1e-20)
    level = np.percentile(energy_db, 95)
    quiet = energy_db < level + settings.silence_db
    # A quiet run of n windows spans (n - 1) hops plus one window of silence.
    closure_frames = max(1, int(np.ceil((settings.closure_ms - settings.window_ms) / settings.hop_ms)) + 1)
    rise_frames = int(np.floor(settings.rise_ms / settings.hop_ms))
    times, quiet_run = [], 0
    for t in range(len(energy_db)):
        if quiet[t]:
            quiet_run += 1
            continue
        if quiet_run >= closure_frames:
            closure_db = float(np.max(energy_db[t - quiet_run : t]))
            window = slice(t, min(t + rise_frames + 1, len(energy_db)))
            peak = t + int(np.argmax(energy_db[window]))
            if (energy_db[peak] >= closure_db + settings.rise_db and energy_db[peak] >= level + settings.burst_db
                    and high_share[peak] >= settings.min_high_share):
                # The first loud window holds the burst's start somewhere inside: report the window's centre.
                times.append((t * hop + frames.shape[1] / 2) / SAMPLE_RATE)
        quiet_run = 0
    return np.asarray(times)


def plosive_frames(waveform: np.ndarray, fps: float, settings: PlosiveSettings | None = None) -> np.ndarray:
    """Sorted unique indices of the video frames (at `fps`) during which a plosive burst starts."""
    times = burst_times(waveform, settings)
    return np.unique(np.floor(times * fps).astype(np.int64))


def refine_runs(frames: np.ndarray, total_frames: int, before: int = 3, after: int = 2) -> list[tuple[int, int]]:
    """Half-open [start, stop) runs of frames to regenerate: each plosive frame widened by `before` frames (the
    lips close during the closure, before the burst) and `after` frames (they open again), clipped to the clip,
    overlapping or touching runs merged."""
    runs: list[tuple[int, int]] = []
    for frame in sorted(int(f) for f in frames):
        start, stop = max(0, frame - before), min(total_frames, frame + after + 1)
        if start >= stop:
            continue
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], stop))
        else:
            runs.append((start, stop))
    return runs
