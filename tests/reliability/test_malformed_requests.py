"""Malformed Triton requests sent straight at the models, over gRPC and HTTP with tritonclient, and as raw HTTP
bodies: wrong dtypes and shapes, missing, extra and empty inputs, boxes and embeddings that are garbage, BYTES
that are not what they claim. Each is refused with Triton's own validation message or our clear error (never an
internal error), and the server stays healthy."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from client.triton_client import Endpoint, RequestRejected, TalkingHeadClient
from python_backends import spec

from .conftest import ANSWER_BOUND_S, assert_clear, assert_healthy

pytestmark = pytest.mark.integration

_STATUS = {"INVALID_ARGUMENT": "invalid", "400": "invalid", "NOT_FOUND": "not_found", "404": "not_found",
           "UNIMPLEMENTED": "unsupported", "501": "unsupported", "INTERNAL": "internal", "500": "internal",
           "UNAVAILABLE": "unavailable", "503": "unavailable"}

IMAGE = np.zeros((1, 64, 64, 3), np.uint8)
BOX = np.array([[8, 8, 56, 56]], np.float32)
KEYPOINTS = np.array([[[20, 25], [44, 25], [32, 35], [22, 45], [42, 45]]], np.float32)
HUGE_BOX = np.array([[-1e30, -1e30, 1e30, 1e30]], np.float32)


def _bytes(*items: bytes, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.array(list(items), dtype=np.object_)
    return array.reshape(shape) if shape else array


@dataclass(frozen=True)
class Malformed:
    name: str
    model: str
    inputs: tuple[tuple[str, np.ndarray, str], ...]  # (name, array, Triton dtype)
    expect: str  # "invalid" | "not_found" | "unsupported"
    says: str  # a fragment the message must contain
    version: str = ""
    # the inputs are one item, sent max_batch_size + 1 times: the served profile's limit (16 on the CPU, 160 in the
    # GPU profile), and `says` gets the limit appended
    over_max: bool = False

    def served(self, max_batch_size: int) -> Malformed:
        """The case as sent to a model served with `max_batch_size`."""
        if not self.over_max:
            return self
        inputs = tuple((name, np.repeat(array, max_batch_size + 1, axis=0), dtype)
                       for name, array, dtype in self.inputs)
        return Malformed(self.name, self.model, inputs, self.expect, f"{self.says}{max_batch_size}", self.version)


CASES = (
    Malformed("wrong_dtype", "face_detector", (("image", IMAGE.astype(np.float32), "FP32"),), "invalid", "data-type"),
    Malformed("rank_too_low", "face_detector", (("image", IMAGE[..., 0], "UINT8"),), "invalid", "unexpected shape"),
    Malformed("four_channels", "face_detector", (("image", np.zeros((1, 64, 64, 4), np.uint8), "UINT8"),),
              "invalid", "unexpected shape"),
    Malformed("empty_batch", "face_detector", (("image", np.zeros((0, 64, 64, 3), np.uint8), "UINT8"),),
              "invalid", "image"),
    Malformed("batch_over_max", "face_detector", (("image", np.zeros((1, 8, 8, 3), np.uint8), "UINT8"),),
              "invalid", "batch-size must be <= ", over_max=True),
    Malformed("zero_size_image", "face_detector", (("image", np.zeros((1, 0, 0, 3), np.uint8), "UINT8"),),
              "invalid", "empty"),
    Malformed("extra_input", "face_detector", (("image", IMAGE, "UINT8"), ("bogus", np.zeros((1, 1), np.float32),
                                                                          "FP32")), "invalid", "bogus"),
    Malformed("no_inputs", "face_detector", (), "invalid", "missing required input"),
    Malformed("missing_box", "face_landmarks", (("image", IMAGE, "UINT8"),), "invalid", "face_box"),
    Malformed("nan_box", "face_landmarks", (("image", IMAGE, "UINT8"), ("face_box", np.full((1, 4), np.nan,
                                                                                            np.float32), "FP32")),
              "invalid", "face_box"),
    # Found by this suite: dlib's integer rectangle overflowed and the client got an internal error.
    Malformed("huge_box_landmarks", "face_landmarks", (("image", IMAGE, "UINT8"), ("face_box", HUGE_BOX, "FP32")),
              "invalid", "far outside"),
    Malformed("huge_box_embedder", "face_embedder", (("image", IMAGE, "UINT8"), ("face_box", HUGE_BOX, "FP32"),
                                                     ("face_keypoints", KEYPOINTS, "FP32")), "invalid", "far outside"),
    Malformed("inverted_box", "face_embedder", (("image", IMAGE, "UINT8"),
                                                ("face_box", np.array([[50, 50, 10, 10]], np.float32), "FP32"),
                                                ("face_keypoints", KEYPOINTS, "FP32")), "invalid", "empty"),
    Malformed("keypoints_elsewhere", "face_embedder", (("image", IMAGE, "UINT8"), ("face_box", BOX, "FP32"),
                                                       ("face_keypoints", KEYPOINTS * 1000, "FP32")),
              "invalid", "keypoints"),
    Malformed("nan_embedding", "content_safety", (("image", IMAGE, "UINT8"), ("face_box", BOX, "FP32"),
                                                  ("face_keypoints", KEYPOINTS, "FP32"),
                                                  ("embedding", np.full((1, 128), np.nan, np.float32), "FP32")),
              "invalid", "embedding"),
    Malformed("photo_missing", "preprocess", (("audio_bytes", _bytes(b"x"), "BYTES"),), "invalid", "photo_bytes"),
    Malformed("photo_two_elements", "preprocess", (("photo_bytes", _bytes(b"x", b"y"), "BYTES"),), "invalid",
              "unexpected shape"),
    Malformed("photo_as_uint8", "preprocess", (("photo_bytes", np.frombuffer(b"abc", np.uint8).copy(), "UINT8"),),
              "invalid", "data-type"),
    Malformed("photo_rank_2", "preprocess", (("photo_bytes", _bytes(b"x", shape=(1, 1)), "BYTES"),), "invalid",
              "unexpected shape"),
    Malformed("audio_batch_over_max", "audio_features", (("audio_bytes", _bytes(b"x", shape=(1, 1)), "BYTES"),),
              "invalid", "batch-size must be <= ", over_max=True),
    Malformed("audio_empty_bytes", "audio_features", (("audio_bytes", _bytes(b"", shape=(1, 1)), "BYTES"),),
              "invalid", "empty"),
    Malformed("frames_zero", "video_qa", (("photo_bytes", _bytes(b"x"), "BYTES"),
                                          ("audio_bytes", _bytes(b"x"), "BYTES"),
                                          ("frames", np.zeros((0, 8, 8, 3), np.uint8), "UINT8"),
                                          ("fps", np.array([25], np.float32), "FP32")), "invalid", "frames"),
    Malformed("model_name_traversal", "../../etc/passwd", (("image", IMAGE, "UINT8"),), "not_found", ""),
    Malformed("unknown_version", "face_detector", (("image", IMAGE, "UINT8"),), "not_found", "version 99",
              version="99"),
    Malformed("unary_call_to_streaming_model", "video_generator", (("image", IMAGE[0], "UINT8"),), "unsupported",
              "decoupled"),
)


def _max_batch_size(server, model: str) -> int:
    client = http.InferenceServerClient(server.http_url)
    try:
        return int(client.get_model_config(model)["max_batch_size"])
    finally:
        client.close()


def _status(exc: InferenceServerException) -> str:
    status = str(exc.status() or "").replace("StatusCode.", "")
    return _STATUS.get(status, status or "none")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_malformed_request_is_refused_clearly(case: Malformed, protocol: str, triton_server, ledger):
    module, url = (grpc, triton_server.grpc_url) if protocol == "grpc" else (http, triton_server.http_url)
    client = module.InferenceServerClient(url)
    if case.over_max:
        case = case.served(_max_batch_size(triton_server, case.model))
    wire = []
    for name, array, dtype in case.inputs:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        wire.append(tensor)
    started = time.monotonic()
    try:
        client.infer(case.model, wire, model_version=case.version)
        outcome, message = "accepted", ""
    except InferenceServerException as exc:
        outcome, message = _status(exc), exc.message() or ""
    finally:
        client.close()
    seconds = time.monotonic() - started
    ledger.record("malformed_request", f"{protocol}-{case.name}", case.expect, outcome, seconds, model=case.model,
                  message=message[:200])
    assert outcome == case.expect, message
    assert case.says in message, message
    assert_clear(message)
    assert seconds < ANSWER_BOUND_S
    assert_healthy(triton_server)


@dataclass(frozen=True)
class RawBody:
    name: str
    body: bytes
    header_length: int | None  # Inference-Header-Content-Length for binary bodies
    expect: int  # HTTP status
    says: str


def _header(binary_size: int) -> bytes:
    return json.dumps({"inputs": [{"name": "photo_bytes", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": binary_size}}]}).encode()


def _json(shape, datatype, data) -> bytes:
    tensor = {"name": "photo_bytes", "shape": shape, "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


# Triton's HTTP front end answers 500 (not 400) for a body its JSON parser cannot read; the message still says why.
RAW = (
    RawBody("not_json", b"{this is not json", None, 500, "parse"),
    RawBody("bytes_element_is_a_number", _json([1], "BYTES", [12345]), None, 500, "non-string"),
    RawBody("negative_shape", _json([-1], "BYTES", ["a"]), None, 500, "shape"),
    RawBody("more_elements_than_shape", _json([1], "BYTES", ["a", "b", "c"]), None, 400, "string elements"),
    RawBody("shape_of_4_billion", _json([4294967296], "BYTES", ["a"]), None, 400, "unexpected shape"),
    RawBody("unknown_datatype", _json([1], "COMPLEX", ["a"]), None, 400, "datatype"),
    RawBody("binary_size_lies", _header(100) + b"\x05\x00\x00\x00abc", len(_header(100)), 400, "expecting"),
    RawBody("length_prefix_lies", _header(8) + b"\xff\xff\xff\x7fabcd", len(_header(8)), 400, "incomplete string"),
    RawBody("header_length_lies", _header(8) + b"\x04\x00\x00\x00abcd", 999_999, 400, "header size"),
)


@pytest.mark.parametrize("case", RAW, ids=lambda c: c.name)
def test_raw_http_body_is_refused(case: RawBody, triton_server, ledger):
    headers = {"Content-Type": "application/json"}
    if case.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(case.header_length)
    request = urllib.request.Request(f"http://{triton_server.http_url}/v2/models/preprocess/infer", data=case.body,
                                     headers=headers)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_BOUND_S) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    seconds = time.monotonic() - started
    ledger.record("malformed_request", f"raw-http-{case.name}", f"http_{case.expect}", f"http_{status}", seconds,
                  model="preprocess", message=text[:200])
    assert status == case.expect, text
    assert case.says in json.loads(text)["error"], text
    assert_healthy(triton_server)


def test_malformed_streaming_requests(triton_server, ledger):
    """The decoupled models get the same validation over the gRPC stream; the stream ends with the error."""
    with TalkingHeadClient(Endpoint(triton_server.grpc_url, "grpc")) as client:
        cases = (
            ("stream-photo_two_elements", spec.TALKING_HEAD,
             {spec.PHOTO_BYTES: _bytes(b"x", b"y"), spec.AUDIO_BYTES: _bytes(b"x")}, ("unexpected shape",)),
            ("stream-generator_without_face", spec.VIDEO_GENERATOR, {spec.IMAGE: IMAGE[0]}, ("landmarks",)),
            ("stream-generator_no_speech", spec.VIDEO_GENERATOR,
             {spec.IMAGE: IMAGE[0], spec.LANDMARKS: np.full((68, 2), 32, np.float32)}, ("speech",)),
            ("stream-generator_zero_image", spec.VIDEO_GENERATOR,
             {spec.IMAGE: np.zeros((0, 0, 3), np.uint8), spec.LANDMARKS: np.zeros((68, 2), np.float32),
              spec.WAVEFORM: np.zeros(16000, np.float32)}, ("image must be an RGB photo",)),
        )
        for name, model, inputs, says in cases:
            started = time.monotonic()
            # Triton's own validation errors arrive on the stream without a status: not RequestRejected.
            with pytest.raises((RequestRejected, InferenceServerException)) as caught:
                list(client.stream(model, inputs, {}, deadline_s=ANSWER_BOUND_S))
            seconds = time.monotonic() - started
            message = str(caught.value)
            ledger.record("malformed_request", name, "refused", "refused", seconds, model=model.name,
                          message=message[:200])
            assert any(fragment in message for fragment in says), message
            assert_clear(message)
            assert seconds < ANSWER_BOUND_S
    assert_healthy(triton_server)
