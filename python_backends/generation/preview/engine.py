"""The preview engine: photo + dlib-68 landmarks + speech -> streamed frame chunks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from ...errors import InputError
from ..job import FrameChunk, GenerationJob, segment_range
from .face_warp import anchor_ring, warp_region
from .mouth_driver import SAMPLE_RATE, mouth_track

ENGINE_NAME = "preview-landmark-warp"

# dlib / iBUG 68-point indices.
JAW_WEIGHTS = {4: 0.1, 5: 0.25, 6: 0.45, 7: 0.65, 8: 0.75, 9: 0.65, 10: 0.45, 11: 0.25, 12: 0.1}
LOWER_LIP_WEIGHTS = {55: 0.5, 56: 0.85, 57: 1.0, 58: 0.85, 59: 0.5, 65: 0.8, 66: 1.0, 67: 0.8}
UPPER_LIP_WEIGHTS = {61: 0.08, 62: 0.1, 63: 0.08, 50: 0.04, 51: 0.05, 52: 0.04}
MOUTH_CORNERS = (48, 54, 60, 64)
INNER_LIP = list(range(60, 68))
EYES = ((36, (37, 38), 39, (41, 40)), (42, (43, 44), 45, (47, 46)))  # corner, upper lid, corner, lower lid
BROWS = list(range(17, 27))


@dataclass(frozen=True)
class PreviewSettings:
    """How the preview animates; fps, size, seed, duration and chunking come with each job."""

    max_mouth_open: float = 0.42  # of the mouth width
    head_motion_deg: float = 1.5
    blink_interval_s: float = 3.5


def _crop_to_aspect(photo: np.ndarray, landmarks: np.ndarray, width: int, height: int):
    """Crop around the face to the requested aspect ratio, then resize; landmarks follow."""
    h, w = photo.shape[:2]
    if not width or not height:
        return photo, landmarks
    aspect = width / height
    crop_w, crop_h = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    crop_w, crop_h = min(crop_w, w), min(crop_h, h)
    cx, cy = landmarks.mean(axis=0)
    x0 = int(np.clip(cx - crop_w / 2, 0, w - crop_w))
    y0 = int(np.clip(cy - crop_h / 2, 0, h - crop_h))
    crop = photo[y0 : y0 + crop_h, x0 : x0 + crop_w]
    scale = np.array([width / crop_w, height / crop_h])
    resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if scale[0] < 1 else cv2.INTER_CUBIC)
    return resized, (landmarks - [x0, y0]) * scale


def _blink_curve(frames: int, fps: float, interval_s: float, rng: np.random.Generator) -> np.ndarray:
    curve = np.zeros(frames, np.float32)
    t = rng.uniform(0.8, interval_s)
    duration = 0.18
    while t * fps < frames:
        start = int(t * fps)
        length = max(3, int(round(duration * fps)))
        shape = np.sin(np.linspace(0, math.pi, length)) ** 0.7
        end = min(frames, start + length)
        curve[start:end] = np.maximum(curve[start:end], shape[: end - start])
        t += rng.uniform(0.6, 1.4) * interval_s
    return curve


def _head_motion(frames: int, fps: float, amplitude_deg: float, rng: np.random.Generator) -> np.ndarray:
    """[T, 3] smooth (angle_deg, dx, dy in face widths) from a few incommensurate sines."""
    t = np.arange(frames) / fps
    motion = np.zeros((frames, 3), np.float32)
    for axis, scale in enumerate((amplitude_deg, 0.012, 0.01)):
        for freq in rng.uniform(0.08, 0.45, size=3):
            motion[:, axis] += scale / 3 * np.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi))
    return motion


class PreviewEngine:
    """Landmark-driven face animation; `generate` streams chunks of frames as they are rendered."""

    name = ENGINE_NAME
    renders_segments = True  # starts at params.start_frame without rendering the frames before it

    def __init__(self, settings: PreviewSettings | None = None) -> None:
        self.settings = settings or PreviewSettings()

    def prepare(self) -> None:
        """Nothing to do at load."""

    def generate(self, job: GenerationJob) -> Iterator[FrameChunk]:
        s, p = self.settings, job.params
        if job.landmarks is None or np.asarray(job.landmarks).shape != (68, 2):
            shape = None if job.landmarks is None else np.asarray(job.landmarks).shape
            raise InputError(f"the preview engine needs 68 landmarks (dlib / 300-W order), got {shape}",
                             "landmarks_unsupported")
        waveform = job.waveform
        if waveform is None or len(waveform) < SAMPLE_RATE // 10:
            raise InputError("the speech is shorter than 0.1 s: upload a longer recording", "audio_too_short")
        landmarks = np.asarray(job.landmarks, np.float64)
        image, points = _crop_to_aspect(np.ascontiguousarray(job.photo, np.uint8), landmarks, p.width, p.height)
        seconds = min(len(waveform) / SAMPLE_RATE, p.max_duration_s)
        frames = max(1, int(math.ceil(seconds * p.fps)))
        track = mouth_track(waveform[: int(frames / p.fps * SAMPLE_RATE) + 1], p.fps, frames)
        rng = np.random.default_rng(p.seed)
        blinks = _blink_curve(frames, p.fps, s.blink_interval_s, rng)
        motion = _head_motion(frames, p.fps, s.head_motion_deg, rng)
        rig = _FaceRig(image, points)
        # Every frame is a function of (audio, seed, index), so a segment renders exactly the frames a whole-clip
        # request would: motion frames carry nothing the preview needs.
        segment = segment_range(p, frames)
        for start in range(segment.start, segment.stop, p.chunk_frames):
            stop = min(segment.stop, start + p.chunk_frames)
            rendered = [
                rig.render(track.openness[i] * s.max_mouth_open, track.roundness[i], blinks[i], motion[i])
                for i in range(start, stop)
            ]
            yield FrameChunk(start, np.stack(rendered), p.fps, frames)


class _FaceRig:
    """Precomputed geometry of one face: its axes, warp region and fixed anchors."""

    def __init__(self, image: np.ndarray, points: np.ndarray) -> None:
        self.image, self.points = image, points
        eyes = points[36:48].mean(axis=0)
        mouth = points[48:68].mean(axis=0)
        down = mouth - eyes
        self.face_height = float(np.linalg.norm(down)) * 2.6
        self.down = down / (np.linalg.norm(down) + 1e-9)
        self.right = np.array([self.down[1], -self.down[0]])
        self.mouth_width = float(np.linalg.norm(points[54] - points[48]))
        self.centre = points.mean(axis=0)
        # Forehead points move with the head so the skull, not just the face, turns.
        forehead = points[BROWS] - self.down * 0.35 * self.face_height
        self.sources = np.concatenate([points, forehead])
        box = np.concatenate([self.sources.min(0), self.sources.max(0)])
        h, w = image.shape[:2]
        self.anchors = anchor_ring(box, (h, w))
        x1, y1 = np.floor(self.anchors.min(0)).astype(int)
        x2, y2 = np.ceil(self.anchors.max(0)).astype(int) + 1
        self.region = (max(0, x1), max(0, y1), min(w, x2), min(h, y2))

    def targets(self, mouth_open: float, roundness: float, motion: np.ndarray) -> np.ndarray:
        t = self.points.copy()
        open_px = mouth_open * self.mouth_width
        for index, weight in JAW_WEIGHTS.items():
            t[index] += self.down * open_px * weight * 0.8
        for index, weight in LOWER_LIP_WEIGHTS.items():
            t[index] += self.down * open_px * weight
        for index, weight in UPPER_LIP_WEIGHTS.items():
            t[index] -= self.down * open_px * weight
        for index in MOUTH_CORNERS:
            inward = np.sign(np.dot(self.centre - self.points[index], self.right)) * self.right
            t[index] += inward * roundness * 0.12 * self.mouth_width + self.down * 0.15 * open_px
        forehead = self.sources[68:]
        moving = np.concatenate([t, forehead])
        angle, dx, dy = float(motion[0]), float(motion[1]), float(motion[2])
        rotation = cv2.getRotationMatrix2D(tuple(self.centre), angle, 1.0)
        moving = moving @ rotation[:, :2].T + rotation[:, 2] + np.array([dx, dy]) * self.face_height
        return moving

    def render(self, mouth_open: float, roundness: float, blink: float, motion: np.ndarray) -> np.ndarray:
        targets = self.targets(mouth_open, roundness, motion)
        sources = np.concatenate([self.sources, self.anchors])
        frame = warp_region(self.image, sources, np.concatenate([targets, self.anchors]), self.region)
        if mouth_open > 0.02:
            shift = targets[62] - self.points[62]  # the original opening rides on the upper lip
            self._paint_mouth(frame, targets[INNER_LIP], self.points[INNER_LIP] + shift, mouth_open)
        if blink > 0.02:
            for eye in EYES:
                _close_eyelid(frame, targets, eye, blink)
        return frame

    def _paint_mouth(self, frame: np.ndarray, inner: np.ndarray, original: np.ndarray, mouth_open: float) -> None:
        """Darken the newly opened part of the mouth: the photo has no texture for it, but what was already
        open in the photo (teeth of a smile) keeps its own pixels."""
        x1, y1 = np.floor(inner.min(0)).astype(int) - 3
        x2, y2 = np.ceil(inner.max(0)).astype(int) + 4
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if x2 <= x1 or y2 <= y1:
            return
        opened, kept = (np.zeros((y2 - y1, x2 - x1), np.float32) for _ in range(2))
        cv2.fillPoly(opened, [np.round((inner - [x1, y1]) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
        cv2.fillPoly(kept, [np.round((original - [x1, y1]) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
        mask = cv2.GaussianBlur(np.clip(opened - kept, 0, 1), (0, 0), 0.8)
        rows = np.arange(y2 - y1, dtype=np.float32)[:, None]
        top = original[:, 1].max() - y1
        span = max(1.0, inner[:, 1].max() - original[:, 1].max())
        # Darker further from the lips, as a mouth cavity is lit from the front.
        shade = np.clip((rows - top) / span, 0, 1)[..., None]
        colour = np.array([95, 40, 45], np.float32) * (1 - shade) + np.array([35, 12, 16], np.float32) * shade
        alpha = (mask * min(1.0, mouth_open * 6.0))[..., None]
        patch = frame[y1:y2, x1:x2].astype(np.float32)
        frame[y1:y2, x1:x2] = np.clip(patch * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def _close_eyelid(frame: np.ndarray, points: np.ndarray, eye: tuple, blink: float) -> None:
    """Pull the lid skin above the eye down over it; a smooth spline warp cannot close a gap of a few pixels."""
    left, (u1, u2), right, (l1, l2) = eye
    xs = np.array([points[left, 0], points[u1, 0], points[u2, 0], points[right, 0]])
    upper_y = np.array([points[left, 1], points[u1, 1], points[u2, 1], points[right, 1]])
    lower_y = np.array([points[left, 1], points[l1, 1], points[l2, 1], points[right, 1]])
    width = xs[-1] - xs[0]
    if width < 4:
        return
    gap = float(np.max(lower_y - upper_y))
    h, w = frame.shape[:2]
    x1, x2 = int(max(0, xs[0] - 0.15 * width)), int(min(w, xs[-1] + 0.15 * width + 1))
    y1, y2 = int(max(0, upper_y.min() - 1.5 * gap - 2)), int(min(h, lower_y.max() + 0.5 * gap + 2))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return
    cols = np.arange(x1, x2, dtype=np.float32)
    order = np.argsort(xs)
    upper = np.interp(cols, xs[order], upper_y[order])
    lower = np.interp(cols, xs[order], lower_y[order])
    # Taper towards the corners so the lid bends like skin instead of sliding as a block.
    taper = np.clip(1.0 - np.abs((cols - (xs[0] + xs[-1]) / 2) / (0.6 * width)) ** 2, 0.0, 1.0)
    lid = upper + blink * taper * (lower - upper)  # where the lid edge is drawn now
    rows = np.arange(y1, y2, dtype=np.float32)[:, None]
    top = float(y1)
    above = top + (rows - top) * (upper - top) / np.maximum(lid - top, 1e-3)  # stretch the skin down
    slit = upper + (rows - lid) * (lower - upper) / np.maximum(lower - lid, 1e-3)  # what is left of the eye
    map_y = np.where(rows <= lid, above, np.where(rows <= lower, slit, rows)).astype(np.float32)
    map_x = np.broadcast_to(cols[None, :], map_y.shape).astype(np.float32)
    frame[y1:y2, x1:x2] = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
