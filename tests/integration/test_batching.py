"""Dynamic batching merges concurrent requests: read it back from Triton's statistics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from client.triton_client import Endpoint, RequestRejected, TalkingHeadClient
from python_backends import spec
from python_backends.errors import WEIGHTS_UNAVAILABLE

pytestmark = pytest.mark.integration


def test_concurrent_detector_requests_are_batched(triton_server, samples):
    image = np.asarray(Image.open(samples / "astronaut.png").convert("RGB"))
    endpoint = Endpoint(triton_server.grpc_url, "grpc")
    with TalkingHeadClient(endpoint) as client:
        before = client.batching_counts(spec.FACE_DETECTOR.name)

    def one(_: int) -> int:
        with TalkingHeadClient(endpoint) as worker:
            out = worker.infer(spec.FACE_DETECTOR, {spec.IMAGE: image[None]})
            return int(out[spec.FACE_COUNT].reshape(-1)[0])

    requests = 16
    with ThreadPoolExecutor(max_workers=requests) as pool:
        counts = list(pool.map(one, range(requests)))
    assert counts == [1] * requests
    with TalkingHeadClient(endpoint) as client:
        inferences, executions = (a - b for a, b in zip(client.batching_counts(spec.FACE_DETECTOR.name), before))
    assert inferences == requests
    # One model instance and a queue delay: concurrent requests must share executions.
    assert executions < requests, f"{requests} requests ran in {executions} executions: no batching happened"


def test_the_detector_takes_an_expected_face_size_alone_and_among_requests_without_one(triton_server, samples):
    """face_detector's optional expected_face_px (QA tracking sends it) is accepted by the served configuration,
    gives the same faces as a request without it, mixes with such requests under dynamic batching, and a bad value
    is refused as bad input."""
    image = np.asarray(Image.open(samples / "astronaut.png").convert("RGB"))
    noise = np.random.default_rng(0).integers(0, 256, (1, 240, 416, 3), dtype=np.uint8)
    endpoint = Endpoint(triton_server.grpc_url, "grpc")
    hint = np.array([[94.0]], np.float32)
    with TalkingHeadClient(endpoint) as client:
        plain = client.infer(spec.FACE_DETECTOR, {spec.IMAGE: image[None]})
        hinted = client.infer(spec.FACE_DETECTOR, {spec.IMAGE: image[None], spec.EXPECTED_FACE_PX: hint})
        lost = client.infer(spec.FACE_DETECTOR, {spec.IMAGE: noise, spec.EXPECTED_FACE_PX: hint * 0.6})
        with pytest.raises(RequestRejected, match="expected_face_px"):
            client.infer(spec.FACE_DETECTOR, {spec.IMAGE: image[None], spec.EXPECTED_FACE_PX: -hint})
    assert plain[spec.FACE_COUNT].tolist() == hinted[spec.FACE_COUNT].tolist() == [[1]]
    np.testing.assert_allclose(hinted[spec.FACE_BOXES], plain[spec.FACE_BOXES], atol=1e-4)
    assert lost[spec.FACE_COUNT].tolist() == [[0]]

    def one(index: int) -> int:
        inputs = {spec.IMAGE: image[None]}
        if index % 2:
            inputs[spec.EXPECTED_FACE_PX] = hint
        with TalkingHeadClient(endpoint) as worker:
            return int(worker.infer(spec.FACE_DETECTOR, inputs)[spec.FACE_COUNT].reshape(-1)[0])

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(one, range(8))) == [1] * 8


def test_the_mouth_refiner_takes_a_segments_runs_in_one_request(triton_server, samples):
    """mouth_refiner's optional frame_index (QA sends a segment's plosive runs in one request) is accepted by the
    served configuration: without Wav2Lip weights the answer is the model's own 'weights unavailable', not
    Triton's refusal of an unknown input."""
    image = np.asarray(Image.open(samples / "astronaut.png").convert("RGB"))
    frames = np.stack([image] * 4)[None]
    inputs = {spec.FRAMES: frames, spec.FACE_BOXES: np.tile(np.array([[150, 60, 330, 290]], np.float32), (1, 4, 1)),
              spec.MEL: np.zeros((1, 80, 200), np.float32), spec.START_FRAME: np.array([[3]], np.int64),
              spec.FPS: np.array([[25.0]], np.float32), spec.FRAME_INDEX: np.array([[3, 4, 9, 10]], np.int64)}
    with TalkingHeadClient(Endpoint(triton_server.grpc_url, "grpc")) as client:
        with pytest.raises(RequestRejected) as refused:
            client.infer(spec.MOUTH_REFINER, inputs)
    assert refused.value.code == WEIGHTS_UNAVAILABLE, str(refused.value)
