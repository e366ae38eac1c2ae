"""Flicker and artifact metrics on real preview frames: the clean clip passes, each planted defect is caught."""

from __future__ import annotations

import wave

import cv2
import numpy as np
import pytest

from python_backends.errors import InputError
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.preview import PreviewEngine
from python_backends.quality import (
    EdgeSettings,
    EyeSettings,
    FlickerSettings,
    JawSettings,
    edge_bleeding,
    eye_misalignment,
    face_box_from_landmarks,
    flicker_report,
    inter_ocular,
    jaw_discontinuity,
)
from python_backends.quality.artifacts import JAW, LEFT_EYE

FPS, SECONDS, BAD = 10, 3, 14  # BAD: the frame each test damages, mid-clip


@pytest.fixture(scope="module")
def clip(samples, sample_face):
    """Source photo, its landmarks, a 3 s preview clip at 10 fps and dlib landmarks of every frame."""
    image, source, landmarks = sample_face
    with wave.open(str(samples / "speech.wav")) as handle:
        speech = np.frombuffer(handle.readframes(16000 * SECONDS), "<i2").astype(np.float32) / 32768
    job = GenerationJob(image, GenerationParams(fps=FPS, chunk_frames=16, seed=3), landmarks=source, waveform=speech)
    frames = np.concatenate([c.frames for c in PreviewEngine().generate(job)])
    assert len(frames) == FPS * SECONDS
    return image, source, frames, np.stack([landmarks(f) for f in frames])


def _rotate(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - centre) @ rotation.T + centre


def _face_ring(points: np.ndarray, width: float, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1)
    radius = max(1, round(width / 2))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return (cv2.dilate(mask, kernel) - cv2.erode(mask, kernel)).astype(bool)


def test_clean_clip_passes_every_metric(clip):
    image, source, frames, landmarks = clip
    flicker = flicker_report(frames, face_box_from_landmarks(landmarks))
    jaw = jaw_discontinuity(landmarks, source)
    eyes = eye_misalignment(landmarks, source)
    edges = edge_bleeding(frames, landmarks, image, source)
    assert not (flicker.flagged or jaw.flagged or eyes.flags.flagged or edges.flagged)
    # With margin, not by luck: every clean value sits well under its threshold.
    assert flicker.luminance.max() < 0.5 * FlickerSettings().luma_floor
    assert flicker.warping_error.max() < 0.6 * FlickerSettings().warp_floor
    assert jaw.values.max() < JawSettings().floor
    assert eyes.flags.values.max() < 0.8
    assert edges.values.max() < 0.5 * EdgeSettings().max_log_ratio


def test_injected_flicker_is_flagged_at_that_frame(clip):
    _, _, frames, landmarks = clip
    box = face_box_from_landmarks(landmarks)
    x0, y0, x1, y1 = box.astype(int)
    damaged = frames.copy()
    damaged[BAD, y0:y1, x0:x1] = np.clip(damaged[BAD, y0:y1, x0:x1] * 1.25, 0, 255).astype(np.uint8)
    report = flicker_report(damaged, box)
    assert report.flagged
    assert set(report.spikes) == {BAD - 1, BAD}  # the pairs into and out of the bright frame
    assert report.suspect_frames.tolist() == [BAD]
    assert report.luminance_z[BAD] > 10 and report.warping_error[BAD] > FlickerSettings().warp_floor


def test_global_exposure_change_is_not_face_flicker(clip):
    _, _, frames, landmarks = clip
    box = face_box_from_landmarks(landmarks)
    brighter = frames.copy()
    brighter[BAD:] = np.clip(brighter[BAD:].astype(np.int16) + 12, 0, 255).astype(np.uint8)  # whole scene
    report = flicker_report(brighter, box)
    assert report.luminance[BAD - 1] < FlickerSettings().luma_floor


def test_pasted_jaw_discontinuity_is_flagged_at_that_frame(clip):
    _, source, _, landmarks = clip
    step = 0.15 * inter_ocular(source)
    for offset in ([0.0, step], [step, 0.0]):  # jaw dropped, jaw slid sideways
        damaged = landmarks.copy()
        damaged[BAD, JAW] += offset
        report = jaw_discontinuity(damaged, source)
        assert report.frames.tolist() == [BAD]
        assert report.values[BAD] == pytest.approx(0.15, abs=0.05)
    chin_only = landmarks.copy()
    chin_only[BAD, 5:12] += [0.0, step]  # a seam across the chin, jaw corners in place
    assert jaw_discontinuity(chin_only, source).frames.tolist() == [BAD]


def test_head_motion_is_not_a_jaw_discontinuity(clip):
    _, source, _, landmarks = clip
    # A brisk nod-and-turn: 12 degrees of roll, 40 px drift and 10 % zoom over the clip, applied rigidly.
    moved = np.empty_like(landmarks)
    for t, points in enumerate(landmarks):
        s = t / (len(landmarks) - 1)
        centre = points[30]
        moved[t] = (_rotate(points, 12 * np.sin(np.pi * s), centre) - centre) * (1 + 0.1 * s) + centre + [40 * s, 0]
    report = jaw_discontinuity(moved, source)
    assert not report.flagged
    np.testing.assert_allclose(report.values, jaw_discontinuity(landmarks, source).values, atol=0.01)
    assert not eye_misalignment(moved, source).flags.flagged


def test_rotated_eye_is_flagged(clip):
    _, source, _, landmarks = clip
    damaged = landmarks.copy()
    eye = damaged[BAD, LEFT_EYE]
    damaged[BAD, LEFT_EYE] = _rotate(eye, 15.0, eye.mean(0))
    report = eye_misalignment(damaged, source)
    assert report.flags.frames.tolist() == [BAD]
    assert report.eye_axis_deg[BAD] > EyeSettings().eye_axis_deg
    spaced = landmarks.copy()
    spaced[BAD, 42:48] += [0.2 * inter_ocular(source), 0.0]  # right eye drifted outwards
    assert eye_misalignment(spaced, source).flags.frames.tolist() == [BAD]


def test_edge_bleeding_raises_the_edge_metric(clip):
    image, source, frames, landmarks = clip
    clean = edge_bleeding(frames, landmarks, image, source)
    ring = _face_ring(landmarks[BAD], 0.2 * inter_ocular(source), frames.shape[1:])
    smeared = frames.copy()
    smeared[BAD][ring] = cv2.GaussianBlur(frames[BAD], (0, 0), 3)[ring]
    report = edge_bleeding(smeared, landmarks, image, source)
    assert report.frames.tolist() == [BAD]
    assert report.values[BAD] > 4 * clean.values.max()


def test_rejects_unusable_inputs(clip):
    image, source, frames, landmarks = clip
    with pytest.raises(InputError, match="68"):
        jaw_discontinuity(landmarks[:, :5], source)
    with pytest.raises(InputError, match="at least 2 frames"):
        flicker_report(frames[:1], face_box_from_landmarks(landmarks))
    with pytest.raises(InputError, match="empty"):
        flicker_report(frames, np.array([10, 10, 5, 5]))
    with pytest.raises(InputError, match="landmarks for"):
        edge_bleeding(frames, landmarks[:3], image, source)
