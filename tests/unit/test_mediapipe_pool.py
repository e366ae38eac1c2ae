"""The MediaPipe models' interpreter pools (mediapipe_models/pool.py): a request's frames in parallel give the
same outputs, bit for bit and in order, as one after another; an error in one frame is the request's error; the
pool size is a checked setting."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from python_backends import spec
from python_backends.errors import ConfigError, WeightsUnavailable
from python_backends.face_detection import FaceDetectorSettings, build_face_detector
from python_backends.face_landmarks import FaceLandmarksSettings, build_face_landmarks
from python_backends.mediapipe_models import files
from python_backends.mediapipe_models.pool import InterpreterPool
from python_backends.mediapipe_models.tflite import TFLiteNetwork
from python_backends.settings import from_mapping

ROOT = Path(__file__).resolve().parents[2]
FRAME = (480, 832)  # the Wan profiles' frame
POOLED = 3


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """The sample portrait fitted to 832x480, shifted by a few pixels per frame, and two noise frames."""
    try:
        files.require("face_landmark")
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
    photo = np.asarray(Image.open(ROOT / "client" / "samples" / "astronaut.png").convert("RGB"))
    frame = np.zeros((*FRAME, 3), np.uint8)
    frame[:, 176:656] = cv2.resize(photo, (480, 480), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    shifted = [np.roll(frame, (3 * k, 9 * k), axis=(0, 1)) for k in range(6)]
    noise = [rng.integers(0, 256, frame.shape, dtype=np.uint8) for _ in range(2)]
    return np.stack([*shifted[:3], noise[0], *shifted[3:], noise[1]])


def _detectors(pool: int):
    return build_face_detector(FaceDetectorSettings(backbone="blazeface", mediapipe_threads=pool), "cpu")


def _landmarks(pool: int):
    return build_face_landmarks(FaceLandmarksSettings(engine="mediapipe", mediapipe_threads=pool), "cpu")


def _assert_same(serial: list[dict], pooled: list[dict]) -> None:
    assert len(serial) == len(pooled)
    for one, other in zip(serial, pooled):
        assert one.keys() == other.keys()
        for name in one:
            np.testing.assert_array_equal(one[name], other[name], err_msg=name)


def test_pooled_detection_equals_serial_on_real_frames(frames):
    """Every image and its faces' mesh keypoints; the first noise frame without a hint searches the tiles (their
    mesh checks go through the mesh's pool from the detector's pool threads)."""
    hint = np.full((len(frames), 1), 200.0, np.float32)
    hint[3] = 0.0
    inputs = {spec.IMAGE: frames, spec.EXPECTED_FACE_PX: hint}
    serial = _detectors(1).predict(inputs)
    pooled = _detectors(POOLED)
    assert pooled.engine.detectors.size == POOLED and pooled.engine.mesh.pool.size == POOLED
    _assert_same(serial, pooled.predict(inputs))
    counts = [int(found[spec.FACE_COUNT][0]) for found in serial]
    assert counts == [1, 1, 1, 0, 1, 1, 1, 0]  # the portrait in every shifted frame, nothing in the noise


def test_pooled_landmarks_equal_serial_in_order(frames):
    serial_model, pooled_model = _landmarks(1), _landmarks(POOLED)
    box = _detectors(1).predict({spec.IMAGE: frames[:1]})[0][spec.FACE_BOXES][0]
    shifts = np.array([[9 * k, 3 * k] for k in range(6)], np.float32)
    boxes = np.concatenate([box + np.tile(shifts[:3], 2), box[None], box + np.tile(shifts[3:], 2), box[None]])
    inputs = {spec.IMAGE: frames, spec.FACE_BOX: boxes.astype(np.float32)}
    serial = serial_model.predict(inputs)
    _assert_same(serial, pooled_model.predict(inputs))
    # In order: frame k's mesh follows frame k's shift (the portrait moved right by 9k, down by 3k pixels).
    moved = [(serial[k][spec.LANDMARKS] - serial[0][spec.LANDMARKS]).mean(axis=0) for k in (1, 2, 4, 5, 6)]
    np.testing.assert_allclose(moved, shifts[1:], atol=1.0)
    # One crop per invoke is also what one invoke over every crop gives (the network is batch-invariant).
    network = serial_model.engine.mesh.pool.workers[0]
    crops = np.random.default_rng(1).random((5, *network.size, 3), dtype=np.float32)
    together = network(crops)
    for k in range(len(crops)):
        for whole, alone in zip(together, network(crops[k: k + 1])):
            np.testing.assert_array_equal(whole[k], alone[0])


def test_the_pool_keeps_the_order_and_never_shares_a_worker():
    busy: set[int] = set()
    threads: set[str] = set()
    lock = threading.Lock()

    def task(worker: int, item: int) -> tuple[int, int]:
        with lock:
            assert worker not in busy, "two threads on one interpreter"
            busy.add(worker)
            threads.add(threading.current_thread().name)
        time.sleep(random.Random(item).uniform(0.0, 0.004))
        with lock:
            busy.discard(worker)
        return item, worker

    pool = InterpreterPool(iter(range(4)).__next__, 4, "test")
    found = pool.map(task, list(range(40)))
    assert [item for item, _worker in found] == list(range(40))
    assert {worker for _item, worker in found} <= {0, 1, 2, 3} and len(threads) > 1
    single = InterpreterPool(lambda: 0, 1, "test")
    assert single.map(task, [1, 2]) == [(1, 0), (2, 0)]


def test_an_error_in_one_frame_is_the_requests_error(frames, monkeypatch):
    """A uniform crop (the grey frame) makes the stand-in interpreter fail: the request raises that error, and the
    pool answers the next request (every interpreter went back to it)."""
    model = _landmarks(POOLED)
    box = np.array([300, 100, 540, 380], np.float32)
    grey = frames.copy()
    grey[4] = 128
    invoke = TFLiteNetwork.__call__

    def failing(self, inputs):
        if inputs.min() == inputs.max():
            raise RuntimeError("invoke failed on a uniform crop")
        return invoke(self, inputs)

    monkeypatch.setattr(TFLiteNetwork, "__call__", failing)
    with pytest.raises(RuntimeError, match="uniform crop"):
        model.predict({spec.IMAGE: grey, spec.FACE_BOX: np.repeat(box[None], len(grey), axis=0)})
    assert model.engine.mesh.pool._idle.qsize() == POOLED  # no item of the failed request still runs
    good = model.predict({spec.IMAGE: frames[:2], spec.FACE_BOX: np.repeat(box[None], 2, axis=0)})
    assert len(good) == 2


@pytest.mark.parametrize("settings", [FaceDetectorSettings, FaceLandmarksSettings])
@pytest.mark.parametrize("value, message", [("0", "mediapipe_threads must be 1"), ("65", "mediapipe_threads must be 1"),
                                            ("two", "parameter 'mediapipe_threads': expected int")])
def test_the_pool_size_is_a_checked_setting(settings, value, message):
    assert from_mapping(settings, {"mediapipe_threads": "8"}).mediapipe_threads == 8
    with pytest.raises(ConfigError, match=message):
        from_mapping(settings, {"mediapipe_threads": value})
    with pytest.raises(ValueError, match="a pool of 1 to 64"):
        InterpreterPool(lambda: 0, 0, "test")
