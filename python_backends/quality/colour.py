"""Colour correction of generated frames to the source photo (Reinhard et al. 2001 statistics transfer in Lab).

Statistics come from the face region only (the photo's face box, the segment's tracked boxes), so a changed
background does not pull the skin tone; one transform per segment, never per frame, so the correction itself
cannot flicker.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .frame_pool import map_frames

# CIE76 just-noticeable difference (Sharma, Digital Color Imaging Handbook): below it, and with contrast within
# MAX_CONTRAST_CHANGE, a segment already looks like the photo and is left untouched.
JND_DELTA_E = 2.3
MAX_CONTRAST_CHANGE = 0.1
# Gains outside this range would mean the segment's face region is not comparable with the photo's (e.g. the
# face left the frame): correct at most this much rather than amplify noise.
MAX_GAIN = 2.0
# Frames converted together: ~10 MB of Lab per chunk at 832x480, in cache-friendly pieces.
TRANSFER_CHUNK = 8


@dataclass(frozen=True)
class ColourCorrection:
    applied: bool
    delta_e_before: float  # CIE76 distance of the face region's mean colour to the photo's
    delta_e_after: float
    gain: tuple[float, float, float]  # per Lab channel

    def as_dict(self) -> dict:
        return {"applied": self.applied, "delta_e_before": round(self.delta_e_before, 2),
                "delta_e_after": round(self.delta_e_after, 2), "gain": [round(g, 3) for g in self.gain]}


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(image, np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)


def _region(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = np.round(np.asarray(box, np.float64)).astype(int)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return np.zeros((0, 3), np.float32)
    return _lab(image[y1:y2, x1:x2]).reshape(-1, 3)


def _to_cie(lab_mean: np.ndarray) -> np.ndarray:
    # OpenCV's 8-bit Lab: L scaled to 0-255, a and b offset by 128.
    return np.array([lab_mean[0] * 100.0 / 255.0, lab_mean[1] - 128.0, lab_mean[2] - 128.0])


def _channel_lut(mu: np.ndarray, gain: np.ndarray, mu_ref: np.ndarray) -> np.ndarray:
    """The per-channel transfer as a (1, 256, 3) uint8 table: 8-bit Lab has 256 values per channel, so the table
    holds exactly the float32 result each pixel would get, rounded and clipped the same way."""
    levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
    return np.clip(np.round((levels - mu) * gain + mu_ref), 0, 255).astype(np.uint8)[None]


def _transfer(frames: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Every frame to Lab, through `lut`, back to RGB: three OpenCV calls per chunk of frames stacked into one tall
    image (each call is per pixel, so stacking changes nothing), chunks on the frame pool; a chunk's Lab copy is
    all the memory it adds."""
    frames = np.ascontiguousarray(frames, np.uint8)
    width = frames.shape[2]
    out = np.empty_like(frames)

    def chunk(start: int) -> None:
        lab = cv2.cvtColor(frames[start:start + TRANSFER_CHUNK].reshape(-1, width, 3), cv2.COLOR_RGB2LAB)
        cv2.LUT(lab, lut, dst=lab)
        cv2.cvtColor(lab, cv2.COLOR_LAB2RGB, dst=out[start:start + TRANSFER_CHUNK].reshape(-1, width, 3))

    map_frames(chunk, range(0, len(frames), TRANSFER_CHUNK))
    return out


def match_colour(frames: np.ndarray, boxes: np.ndarray, photo: np.ndarray, photo_box: np.ndarray,
                 enabled: bool = True) -> tuple[np.ndarray, ColourCorrection]:
    """Frames [T, H, W, 3] RGB corrected so their face region's Lab mean/std match the photo's face region."""
    reference = _region(photo, photo_box)
    step = max(1, len(frames) // 8)  # a few frames describe a segment's tint; all of them cost more, add nothing
    pixels = [_region(frame, box) for frame, box in zip(frames[::step], boxes[::step])]
    pixels = np.concatenate(pixels) if pixels else np.zeros((0, 3), np.float32)
    if len(reference) == 0 or len(pixels) == 0:
        return frames, ColourCorrection(False, float("nan"), float("nan"), (1.0, 1.0, 1.0))
    mu_ref, sd_ref = reference.mean(0), reference.std(0) + 1e-3
    mu, sd = pixels.mean(0), pixels.std(0) + 1e-3
    before = float(np.linalg.norm(_to_cie(mu) - _to_cie(mu_ref)))
    gain = np.clip(sd_ref / sd, 1.0 / MAX_GAIN, MAX_GAIN)
    if not enabled or (before < JND_DELTA_E and np.all(np.abs(gain - 1.0) < MAX_CONTRAST_CHANGE)):
        return frames, ColourCorrection(False, before, before, (1.0, 1.0, 1.0))
    out = _transfer(frames, _channel_lut(mu, gain, mu_ref))
    corrected = np.concatenate([_region(frame, box) for frame, box in zip(out[::step], boxes[::step])])
    after = float(np.linalg.norm(_to_cie(corrected.mean(0)) - _to_cie(mu_ref)))
    return out, ColourCorrection(True, before, after, tuple(float(g) for g in gain))
