"""Dynamic batching merges concurrent requests: read it back from Triton's statistics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from client.triton_client import Endpoint, TalkingHeadClient
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
