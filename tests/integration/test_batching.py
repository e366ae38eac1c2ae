"""Dynamic batching merges concurrent requests: read it back from Triton's statistics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from client.triton_client import Endpoint, RequestRejected, TalkingHeadClient
from python_backends import spec

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
