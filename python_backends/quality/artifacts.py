"""Geometric and boundary artifacts judged from 68-point landmarks (dlib / iBUG 300-W order).

Every metric first removes head motion with a similarity transform fitted on points that do not move when a
person talks or blinks (nose bridge and eye corners), so turning or nodding is not mistaken for an artifact.
Distances are in units of the source photo's inter-ocular distance (outer eye corners 36-45, as in 300-W).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from .flicker import luma, robust_z
from .frame_pool import map_frames

JAW = np.arange(0, 17)
# Nose bridge 27-30 and the four eye corners: rigid with the skull, untouched by speech and blinks.
STABLE = np.array([27, 28, 29, 30, 36, 39, 42, 45])
LEFT_EYE, RIGHT_EYE = np.arange(36, 42), np.arange(42, 48)  # image left / image right


@dataclass(frozen=True)
class Flags:
    """A number per frame and which frames fail; `flagged` is the clip's verdict."""

    values: np.ndarray  # (T,)
    frames: np.ndarray  # indices of failing frames
    flagged: bool


@dataclass(frozen=True)
class JawSettings:
    # A jaw point must jump this far (inter-ocular units) off the path of its neighbours: 0.08 IOD is ~5 px on
    # a 512 px portrait, above dlib's jaw jitter (~0.02-0.04 IOD) yet under a visible 0.15 IOD seam.
    floor: float = 0.08
    # Robust z over the clip: talking moves the chin smoothly, so only outliers against the clip count.
    spike_k: float = 5.0


@dataclass(frozen=True)
class EyeSettings:
    # Degrees of change vs the source in the eye line (relative to the nose bridge) that is tolerated:
    # dlib's corner jitter and head yaw give a few degrees; a misplaced eye shows from ~8 degrees.
    eye_line_deg: float = 8.0
    # Degrees one eye's own corner-to-corner axis may tilt vs the eye line, compared with the source.
    eye_axis_deg: float = 10.0
    # Relative change of eye spacing (eye-centre distance over jaw width 0-16) vs the source: 10 %.
    spacing: float = 0.10


@dataclass(frozen=True)
class EdgeSettings:
    # Width of the band around the convex-hull face boundary, as a fraction of inter-ocular distance.
    band: float = 0.12
    # |ln(frame energy / source energy)| above this fails: ln(1.5), i.e. the boundary lost a third of its
    # gradient energy (blur, smear) or gained half again (a hard paste seam).
    max_log_ratio: float = 0.405


def _check_landmarks(points: np.ndarray, what: str) -> np.ndarray:
    points = np.asarray(points, np.float64)
    if points.shape[-2:] != (68, 2):
        raise InputError(f"{what} must be 68 (x, y) landmarks in dlib order; got shape {points.shape}")
    return points


def inter_ocular(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[..., 45, :] - points[..., 36, :], axis=-1)


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares (Umeyama) rotation + uniform scale + translation taking `source` to `target`, as 2x3."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src, dst = source - src_mean, target - dst_mean
    u, sigma, vt = np.linalg.svd(dst.T @ src)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / max((src**2).sum(), 1e-12)
    return np.hstack([scale * rotation, (dst_mean - scale * rotation @ src_mean)[:, None]])


def align_to_source(landmarks: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Each frame's landmarks mapped into the source photo's frame through its stable points."""
    aligned = np.empty_like(landmarks)
    for t, points in enumerate(landmarks):
        matrix = fit_similarity(points[STABLE], source[STABLE])
        aligned[t] = points @ matrix[:, :2].T + matrix[:, 2]
    return aligned


def _spikes(values: np.ndarray, floor: float, k: float) -> np.ndarray:
    return np.flatnonzero((values > floor) & (robust_z(values) > k)) if len(values) > 2 else \
        np.flatnonzero(values > floor)


def jaw_discontinuity(landmarks: np.ndarray, source: np.ndarray, settings: JawSettings | None = None) -> Flags:
    """Per frame: the largest distance of a jaw point (0-16) from the midpoint of its positions in the
    neighbouring frames, after head motion is removed, in source inter-ocular units. Smooth jaw motion (speech)
    is nearly linear over three frames and cancels; a one-frame jump of d scores d there and d/2 beside it."""
    settings = settings or JawSettings()
    landmarks, source = _check_landmarks(landmarks, "landmarks"), _check_landmarks(source, "source landmarks")
    if landmarks.ndim != 3 or len(landmarks) < 2:
        raise InputError(f"jaw discontinuity needs landmarks for at least 2 frames; got shape {landmarks.shape}")
    jaw = align_to_source(landmarks, source)[:, JAW]
    deviation = np.empty_like(jaw)
    deviation[1:-1] = jaw[1:-1] - 0.5 * (jaw[:-2] + jaw[2:])
    # Clip ends have one neighbour: a first difference, halved to match the interior's scale for one jump.
    deviation[0], deviation[-1] = 0.5 * (jaw[0] - jaw[1]), 0.5 * (jaw[-1] - jaw[-2])
    values = np.linalg.norm(deviation, axis=-1).max(1) / inter_ocular(source)
    spikes = _spikes(values, settings.floor, settings.spike_k)
    # One jump also lifts its neighbours to half its size: keep only the local peaks among flagged frames.
    peaks = np.array([t for t in spikes if values[t] >= values[max(t - 1, 0):t + 2].max()], np.int64)
    return Flags(values, peaks, bool(len(peaks)))


def _angle(vectors: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(vectors[..., 1], vectors[..., 0]))


def _wrap(degrees: np.ndarray) -> np.ndarray:
    return (degrees + 180.0) % 360.0 - 180.0


@dataclass(frozen=True)
class EyeReport:
    eye_line_deg: np.ndarray  # (T,) change vs source of the eye line's angle to the nose bridge
    eye_axis_deg: np.ndarray  # (T,) largest change vs source of one eye's axis relative to the eye line
    spacing_change: np.ndarray  # (T,) relative change of eye spacing over jaw width vs source
    flags: Flags  # values: worst of the three, each divided by its tolerance (> 1 fails)


def _eye_geometry(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Corners only: the lids move in blinks, the corners do not.
    left_centre = 0.5 * (points[..., 36, :] + points[..., 39, :])
    right_centre = 0.5 * (points[..., 42, :] + points[..., 45, :])
    eye_line = _angle(right_centre - left_centre)
    # Nose bridge runs top to bottom; rotating it by -90 degrees gives the direction eyes should lie along.
    bridge = _angle(points[..., 30, :] - points[..., 27, :]) - 90.0
    line_vs_bridge = _wrap(eye_line - bridge)
    axes = np.stack([_wrap(_angle(points[..., 39, :] - points[..., 36, :]) - eye_line),
                     _wrap(_angle(points[..., 45, :] - points[..., 42, :]) - eye_line)], -1)
    spacing = np.linalg.norm(right_centre - left_centre, axis=-1) / np.linalg.norm(
        points[..., 16, :] - points[..., 0, :], axis=-1)
    return line_vs_bridge, axes, spacing, eye_line


def eye_misalignment(landmarks: np.ndarray, source: np.ndarray, settings: EyeSettings | None = None) -> EyeReport:
    """Per frame: how far the eyes' placement departs from the source photo's, independent of head roll."""
    settings = settings or EyeSettings()
    landmarks = _check_landmarks(landmarks, "landmarks").reshape(-1, 68, 2)
    source = _check_landmarks(source, "source landmarks")
    line, axes, spacing, _ = _eye_geometry(landmarks)
    ref_line, ref_axes, ref_spacing, _ = _eye_geometry(source)
    line_change = np.abs(_wrap(line - ref_line))
    axis_change = np.abs(_wrap(axes - ref_axes)).max(-1)
    spacing_change = np.abs(spacing / ref_spacing - 1.0)
    score = np.maximum.reduce([line_change / settings.eye_line_deg, axis_change / settings.eye_axis_deg,
                               spacing_change / settings.spacing])
    frames = np.flatnonzero(score > 1.0)
    return EyeReport(line_change, axis_change, spacing_change, Flags(score, frames, bool(len(frames))))


def _band(points: np.ndarray, band: float, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The band of width `band` * IOD around the landmarks' convex hull, as a mask over the window (x0, y0, x1, y1)
    of the image that holds it with 2 px to spare: the hull is filled, dilated and eroded inside that window only
    (OpenCV's morphology treats outside pixels as neutral, and the window holds every pixel the kernel reaches), and
    a 3x3 Sobel at band pixels reads only pixels inside it, so the band's energy is the whole image's."""
    height, width = shape[:2]
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    radius = max(1, round(0.5 * band * float(inter_ocular(points))))
    x, y, w, h = cv2.boundingRect(hull)
    pad = radius + 2
    x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(width, x + w + pad), min(height, y + h + pad)
    if x1 <= x0 or y1 <= y0:
        raise InputError("the face boundary band is empty: the landmarks lie outside the image")
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(mask, hull - np.array([x0, y0], np.int32), 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    ring = (cv2.dilate(mask, kernel) - cv2.erode(mask, kernel)).astype(bool)
    if not ring.any():
        raise InputError("the face boundary band is empty: the landmarks lie outside the image")
    return ring, (x0, y0, x1, y1)


def _band_energy(window: np.ndarray, ring: np.ndarray) -> float:
    """Mean Sobel gradient magnitude (luma) over the `ring` pixels of an image window."""
    grey = luma(window)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.hypot(gx[ring], gy[ring]).mean())


def boundary_energy(image: np.ndarray, points: np.ndarray, band: float) -> float:
    """Mean Sobel gradient magnitude (luma) in a band of width `band` * IOD around the landmarks' convex hull."""
    ring, (x0, y0, x1, y1) = _band(points, band, image.shape)
    return _band_energy(image[y0:y1, x0:x1], ring)


def edge_bleeding(frames: np.ndarray, landmarks: np.ndarray, source_image: np.ndarray, source: np.ndarray,
                  settings: EdgeSettings | None = None) -> Flags:
    """Per frame: |ln(boundary gradient energy in the frame / in the source photo)|. Each frame is first
    resampled into the source photo's geometry (similarity on stable points) so scale and pose do not change
    the energy; blur or smear along the face edge lowers it, a pasted seam raises it."""
    settings = settings or EdgeSettings()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames, landmarks = frames[None], np.asarray(landmarks)[None]
    landmarks, source = _check_landmarks(landmarks, "landmarks"), _check_landmarks(source, "source landmarks")
    if len(frames) != len(landmarks):
        raise InputError(f"{len(frames)} frames but landmarks for {len(landmarks)}: give one set per frame")
    reference = boundary_energy(source_image, source, settings.band)
    height, width = source_image.shape[:2]

    def log_ratio(t: int) -> float:
        points = landmarks[t]
        matrix = fit_similarity(points[STABLE], source[STABLE])
        ring, (x0, y0, x1, y1) = _band(points @ matrix[:, :2].T + matrix[:, 2], settings.band, (height, width))
        # Warped only up to the band's far corner: each output pixel is computed from its own coordinates, so
        # these are the full warp's pixels, without the rows and columns past the band.
        aligned = cv2.warpAffine(frames[t], matrix, (x1, y1), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        energy = _band_energy(aligned[y0:y1, x0:x1], ring)
        return abs(np.log(max(energy, 1e-6) / max(reference, 1e-6)))

    values = np.array(map_frames(log_ratio, range(len(frames))), np.float64)
    failing = np.flatnonzero(values > settings.max_log_ratio)
    return Flags(values, failing, bool(len(failing)))
