"""Temporal coherence of the face region: luminance flicker and optical-flow warping error per frame pair.

Pair i compares frame i with frame i + 1. Both metrics are judged against the clip itself (median + k * MAD)
and an absolute floor, so a clip that is uniformly a little noisy is not flagged while a single bad frame is.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from .frame_pool import map_frames
from .joined_frames import JoinedFrames, frames_of

# 1.4826 * MAD estimates the standard deviation of normally distributed values.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class FlickerSettings:
    """Thresholds and flow parameters; luma is on the 0-255 scale (BT.601 weights)."""

    # Face box grown by this fraction of its size on each side so the jaw line and hairline are inside.
    box_margin: float = 0.1
    # Robust z above which a pair is a spike. In a very steady clip MAD is tiny and talking alone reaches z ~6,
    # so the absolute floors below decide there; in a noisy clip this keeps ordinary noise from spiking.
    spike_k: float = 5.0
    # Face luma must jump by more than this (0-255, after removing the background's change) to be a spike:
    # below ~3 levels a brightness step is invisible, so tiny steps in a very steady clip are not flagged.
    luma_floor: float = 3.0
    # Mean absolute residual (0-255 luma) after flow warping that is always acceptable: talking mouths leave
    # ~3-5 levels of residual (teeth appear, lips occlude), so only larger errors can be spikes.
    warp_floor: float = 8.0
    # The face crop is resized so its longer side is at most this many pixels before flow: flow cost is
    # quadratic in size and the face's temporal errors are visible at this scale.
    flow_max_side: int = 160
    # Farneback parameters (OpenCV's documented typical values, window sized for a ~160 px face).
    flow_pyr_scale: float = 0.5
    flow_levels: int = 3
    flow_winsize: int = 15
    flow_iterations: int = 3
    flow_poly_n: int = 5
    flow_poly_sigma: float = 1.2


@dataclass(frozen=True)
class FlickerReport:
    luminance: np.ndarray  # (T-1,) |face luma change - background luma change| per pair
    luminance_z: np.ndarray  # (T-1,) robust z-score of `luminance` over the clip
    warping_error: np.ndarray  # (T-1,) masked mean |warp(frame i) - frame i+1| on the face, luma levels
    warping_z: np.ndarray  # (T-1,) robust z-score of `warping_error`
    spikes: np.ndarray  # pair indices flagged by either metric
    flagged: bool

    @property
    def suspect_frames(self) -> np.ndarray:
        """Frames whose every neighbouring pair spikes: a single bad frame spikes the pair before and after."""
        spiking = np.zeros(len(self.luminance) + 2, bool)
        spiking[1:-1][self.spikes] = True
        frames = len(self.luminance) + 1
        return np.array([t for t in range(frames) if spiking[t] and spiking[t + 1]
                         or (t == 0 and spiking[1]) or (t == frames - 1 and spiking[t])], np.int64)


def face_box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) bounding the landmarks; with (T, N, 2) input, the union over the clip."""
    flat = np.asarray(points, np.float64).reshape(-1, 2)
    return np.concatenate([flat.min(0), flat.max(0)])


def robust_z(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    median = np.median(values)
    mad = MAD_TO_SIGMA * np.median(np.abs(values - median))
    # A perfectly steady clip has MAD 0: fall back to a tiny scale so z stays finite; the floor decides.
    return (values - median) / max(mad, 1e-6)


def spike_indices(values: np.ndarray, floor: float, k: float) -> np.ndarray:
    """Indices above max(floor, median + k * sigma_MAD)."""
    return np.flatnonzero((values > floor) & (robust_z(values) > k))


LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma, float32 on the 0-255 scale, of RGB(A) frames or images."""
    return np.asarray(frames[..., :3], np.float32) @ LUMA_WEIGHTS


def _frame_luma_sums(frames: np.ndarray) -> np.ndarray:
    """(T,) sum of each whole frame's luma, from exact per-channel integer sums (luma is linear in RGB), so the
    background's mean needs no float copy of the frames."""
    channel_sums = np.array(map_frames(lambda frame: cv2.sumElems(np.ascontiguousarray(frame[..., :3]))[:3], frames))
    return channel_sums @ LUMA_WEIGHTS.astype(np.float64)


def _pixel_box(face_box: np.ndarray, shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = np.asarray(face_box, np.float64)
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"face box {tuple(face_box)} is empty: give (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    grow_x, grow_y = margin * (x1 - x0), margin * (y1 - y0)
    height, width = shape
    box = (max(0, int(x0 - grow_x)), max(0, int(y0 - grow_y)),
           min(width, int(np.ceil(x1 + grow_x))), min(height, int(np.ceil(y1 + grow_y))))
    if box[2] - box[0] < 8 or box[3] - box[1] < 8:
        raise InputError(f"face box {tuple(face_box)} is outside the {width}x{height} frame or under 8 px")
    return box


def luminance_flicker(face_luma: np.ndarray, frame_sums: np.ndarray, frame_pixels: int) -> np.ndarray:
    """Per pair: |mean face luma change - mean background luma change| (global exposure changes cancel).
    `face_luma` is the face box's luma (T, h, w); `frame_sums` each whole frame's luma sum over `frame_pixels`."""
    flat = face_luma.reshape(len(face_luma), -1)
    face = flat.mean(1)
    background_pixels = frame_pixels - flat.shape[1]
    # With no background (face fills the frame) there is no global reference: the raw change is reported.
    background = ((frame_sums - flat.sum(1, dtype=np.float64)) / background_pixels if background_pixels > 0
                  else np.zeros(len(flat)))
    return np.abs(np.diff(face) - np.diff(background))


def warping_errors(face_luma: np.ndarray, settings: FlickerSettings) -> np.ndarray:
    """Per pair: flow from frame i+1 back to frame i samples frame i at the positions frame i+1 came from,
    i.e. warps frame i onto frame i+1; the mean absolute residual on the face (`face_luma`, the face box's luma
    per frame) is the warping error. Pairs are independent and run on the frame pool."""
    crops = face_luma
    scale = min(1.0, settings.flow_max_side / max(crops.shape[1:]))
    if scale < 1.0:
        size = (max(8, round(crops.shape[2] * scale)), max(8, round(crops.shape[1] * scale)))
        crops = np.stack(map_frames(lambda c: cv2.resize(c, size, interpolation=cv2.INTER_AREA), crops))
    height, width = crops.shape[1:]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    as_u8 = np.clip(crops, 0, 255).astype(np.uint8)

    def pair_error(i: int) -> float:
        flow = cv2.calcOpticalFlowFarneback(
            as_u8[i + 1], as_u8[i], None, settings.flow_pyr_scale, settings.flow_levels, settings.flow_winsize,
            settings.flow_iterations, settings.flow_poly_n, settings.flow_poly_sigma, 0)
        warped = cv2.remap(crops[i], grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        return float(np.abs(warped - crops[i + 1]).mean())

    return np.array(map_frames(pair_error, range(len(crops) - 1)), np.float64)


def flicker_report(frames: np.ndarray | JoinedFrames, face_box: np.ndarray,
                   settings: FlickerSettings | None = None) -> FlickerReport:
    """Score a clip (T, H, W, 3) uint8 (an array, or a JoinedFrames read in place) for face flicker. `face_box` is
    (x0, y0, x1, y1) in frame pixels, e.g. `face_box_from_landmarks(per_frame_landmarks)`."""
    settings = settings or FlickerSettings()
    frames = frames_of(frames)
    if frames.ndim != 4 or frames.shape[-1] < 3 or len(frames) < 2:
        raise InputError(f"flicker needs at least 2 frames shaped (T, H, W, 3); got {frames.shape}")
    box = _pixel_box(face_box, frames.shape[1:3], settings.box_margin)
    x0, y0, x1, y1 = box
    # Only the face box is needed as float luma (flow, face mean); the background enters through whole-frame sums.
    face_luma = np.stack(map_frames(lambda frame: luma(frame[y0:y1, x0:x1]), frames))
    luminance = luminance_flicker(face_luma, _frame_luma_sums(frames), frames.shape[1] * frames.shape[2])
    warping = warping_errors(face_luma, settings)
    spikes = np.union1d(spike_indices(luminance, settings.luma_floor, settings.spike_k),
                        spike_indices(warping, settings.warp_floor, settings.spike_k))
    return FlickerReport(luminance, robust_z(luminance), warping, robust_z(warping), spikes.astype(np.int64),
                         bool(len(spikes)))
