"""QA face tracking tells the detector the face size to expect (face_detector's expected_face_px), and the QA of
the bundled sample's clip comes out the same with it as without it."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from perf_scripts import load_perf_script
from PIL import Image

from python_backends import spec
from python_backends.errors import WeightsUnavailable
from python_backends.quality import segment_job, tracking
from python_backends.quality.colour import ColourCorrection
from python_backends.quality.segment_qa import Boundary, JobContext, SourceFace
from python_backends.quality.settings import QualitySettings
from python_backends.quality.tracking import photo_face_px, track_faces

ROOT = Path(__file__).resolve().parents[2]


class RecordingCaller:
    """A ModelCaller that finds no face and records what face_detector was sent."""

    def __init__(self) -> None:
        self.detector_requests: list[dict[str, np.ndarray]] = []

    async def __call__(self, model: spec.ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(inputs[spec.IMAGE])
        info = np.array([[json.dumps({"engine": "recorder"}).encode()]] * n, dtype=np.object_)
        if model.name == spec.FACE_DETECTOR.name:
            self.detector_requests.append(inputs)
            return {spec.FACE_BOXES: np.zeros((n, 0, 4), np.float32), spec.FACE_SCORES: np.zeros((n, 0), np.float32),
                    spec.FACE_KEYPOINTS: np.zeros((n, 0, 5, 2), np.float32),
                    spec.FACE_COUNT: np.zeros((n, 1), np.int32), spec.MODEL_INFO: info}
        return {spec.LANDMARKS: np.zeros((n, 68, 2), np.float32), spec.HEAD_POSE: np.zeros((n, 3), np.float32),
                spec.MODEL_INFO: info}

    def hints(self) -> list[float] | None:
        sent = [r.get(spec.EXPECTED_FACE_PX) for r in self.detector_requests]
        if all(h is None for h in sent):
            return None
        return sorted({float(v) for h in sent for v in h.reshape(-1)})


def _tracked(frames: np.ndarray, **kwargs) -> RecordingCaller:
    call = RecordingCaller()
    asyncio.run(track_faces(frames, call, 10, request_frames=16, **kwargs))
    return call


def test_tracking_sends_the_smaller_known_face_size_with_every_detector_request():
    frames = np.zeros((40, 48, 64, 3), np.uint8)
    box = np.array([10, 10, 30, 40], np.float32)  # 30 px on its longer side
    assert _tracked(frames).hints() is None  # nothing known: the detector searches every size, as before
    assert _tracked(frames, expected_face_px=0.0).hints() is None
    assert _tracked(frames, expected_face_px=45.0).hints() == [45.0]
    assert _tracked(frames, start_box=box).hints() == [30.0]
    call = _tracked(frames, start_box=box, expected_face_px=45.0)
    assert call.hints() == [30.0]
    assert sum(len(r[spec.IMAGE]) for r in call.detector_requests) == 5  # frames 0, 10, 20, 30 and the last
    assert all(r[spec.EXPECTED_FACE_PX].shape == (len(r[spec.IMAGE]), 1) for r in call.detector_requests)


def test_the_photo_face_is_scaled_as_the_generator_fits_the_photo_into_the_frame():
    box = np.array([100, 50, 194, 150], np.float32)  # 100 px tall
    assert photo_face_px((512, 512, 3), box, (480, 832), covers=True) == pytest.approx(100 * 832 / 512)
    assert photo_face_px((600, 400, 3), box, (480, 832), covers=True) == pytest.approx(100 * 832 / 400)
    assert photo_face_px((512, 512, 3), box, (480, 832), covers=False) == pytest.approx(100 * 480 / 512)
    assert photo_face_px((512, 512, 3), box, (256, 256), covers=False) == pytest.approx(50.0)


def test_only_animate_letterboxes_the_photo():
    from python_backends.contract import ANIMATE
    from python_backends.generation.engines import ENGINES

    assert {key for key, engine in ENGINES.items() if not engine.photo_covers_frame} == {ANIMATE}


def _context(photo_shape: tuple[int, int], box: np.ndarray) -> JobContext:
    source = SourceFace(np.zeros((*photo_shape, 3), np.uint8), box, np.zeros((5, 2), np.float32),
                        np.zeros((68, 2)), np.ones(128) / np.sqrt(128), "recorder")
    return JobContext(source, None, 25.0, QualitySettings())


def test_a_segment_is_tracked_with_the_photo_face_or_the_previous_segments_box():
    ctx = _context((512, 512), np.array([100, 50, 194, 150], np.float64))
    frames = np.zeros((12, 240, 416, 3), np.uint8)
    call = RecordingCaller()
    asyncio.run(segment_job.track_segment(frames, ctx, call, None))
    assert call.hints() == [pytest.approx(100 * 240 / 512)]  # how the photo was fitted is not known: the smaller
    ctx.photo_covers_frame = True
    call = RecordingCaller()
    asyncio.run(segment_job.track_segment(frames, ctx, call, None))
    assert call.hints() == [pytest.approx(100 * 416 / 512)]
    call = RecordingCaller()
    boundary = Boundary(frames[0], np.zeros((68, 2)), np.array([0, 0, 60, 70], np.float32))
    asyncio.run(segment_job.track_segment(frames, ctx, call, boundary))
    assert call.hints() == [70.0]


class LandmarkWaitsForColour(RecordingCaller):
    """Landmarks answer only once the colour match has started; any other model has no weights."""

    def __init__(self, colour_started: threading.Event) -> None:
        super().__init__()
        self.colour_started = colour_started
        self.landmarks_started = threading.Event()

    async def __call__(self, model: spec.ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model.name == spec.FACE_LANDMARKS.name:
            self.landmarks_started.set()
            assert await asyncio.to_thread(self.colour_started.wait, 10), "the colour match did not run meanwhile"
        elif model.name != spec.FACE_DETECTOR.name:
            raise WeightsUnavailable(f"{model.name}: none in this test")
        return await super().__call__(model, inputs)


def test_the_colour_match_runs_while_the_landmarker_places_the_points(monkeypatch):
    colour_started = threading.Event()
    call = LandmarkWaitsForColour(colour_started)
    seen = {}

    def colour(frames, boxes, *_args):
        colour_started.set()
        seen["landmarks_running"] = call.landmarks_started.wait(10)
        seen["boxes"] = boxes
        return frames, ColourCorrection(False, 0.0, 0.0, (1.0, 1.0, 1.0))

    monkeypatch.setattr(segment_job, "match_colour", colour)
    ctx = _context((512, 512), np.array([100, 50, 194, 150], np.float64))
    frames = np.zeros((12, 240, 416, 3), np.uint8)
    _, qa = asyncio.run(segment_job.process_segment(frames, 0, 0, ctx, call, None))
    assert seen["landmarks_running"]
    np.testing.assert_array_equal(seen["boxes"], qa.track.boxes)  # the detector's boxes, as the track has them
    timings = qa.timings_ms
    assert timings["wall"] >= max(timings["tracking"], timings["total"])
    assert 0 <= timings["detection"] <= timings["tracking"]
    assert timings["wall"] >= timings["colour"]


@pytest.mark.usefixtures("one_torch_thread")
def test_qa_of_the_sample_clip_is_the_same_with_the_expected_face(monkeypatch):
    """The preview clip of the bundled sample (with a stretch of noise frames where the face is lost), judged by
    the real detector, landmarker and embedder: every gate's verdict and figures, and the tracks, equal those of
    the old path (no hint), while the hinted run never searched the tiles."""
    from python_backends.face_detection import FaceDetectorSettings, build_face_detector
    from python_backends.face_embedding import FaceEmbedderSettings, build_face_embedder
    from python_backends.face_landmarks import FaceLandmarksSettings, build_face_landmarks
    from python_backends.generation.job import GenerationJob, GenerationParams
    from python_backends.generation.preview import PreviewEngine
    from python_backends.mediapipe_models.blazeface import BlazeFaceEngine

    bench = load_perf_script("bench_quality")
    call = bench.LocalCaller(predictors={
        spec.FACE_DETECTOR.name: build_face_detector(FaceDetectorSettings(threads=1), "cpu"),
        spec.FACE_LANDMARKS.name: build_face_landmarks(FaceLandmarksSettings(threads=1), "cpu"),
        spec.FACE_EMBEDDER.name: build_face_embedder(FaceEmbedderSettings(), "cpu"),
    })
    photo = np.asarray(Image.open(ROOT / "client" / "samples" / "astronaut.png").convert("RGB"))
    source, landmarks = asyncio.run(bench._source(call, photo, "dlib-resnet-v1-128"))
    speech = bench._speech(2.0)
    job = GenerationJob(photo=photo, landmarks=landmarks, waveform=speech,
                        params=GenerationParams(width=416, height=240, fps=25.0, max_duration_s=2.0))
    frames = np.concatenate([c.frames for c in PreviewEngine().generate(job)])
    frames[20:31] = np.random.default_rng(0).integers(0, 256, frames[20:31].shape, dtype=np.uint8)

    tiled = []
    original = BlazeFaceEngine._tiled
    monkeypatch.setattr(BlazeFaceEngine, "_tiled", lambda self, *args: tiled.append(1) or original(self, *args))

    def judged() -> list:
        # fresh: it remembers which models answered; the preview engine covers the frame with the photo
        ctx = JobContext(source, speech, 25.0, QualitySettings(), photo_covers_frame=True)
        segments = asyncio.run(segment_job.judge_video(frames, ctx, call))
        return [([g.as_dict() for g in s.gates], s.track) for s in segments]

    hinted = judged()
    hinted_tiles = len(tiled)
    monkeypatch.setattr(tracking, "_expected_face", lambda expected, box: 0.0)
    plain = judged()
    assert hinted_tiles == 0 and len(tiled) == 2  # frames 20 and 30 lost the face: the old path searched tiles
    assert [gates for gates, _ in hinted] == [gates for gates, _ in plain]
    for (_, a), (_, b) in zip(hinted, plain):
        assert list(a.found) == list(b.found) and not all(a.found)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
