"""The Triton seam: batching across requests, splitting back, padding, error isolation and codes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from python_backends.errors import InputError, split_code
from python_backends.spec import ModelSpec, TensorSpec
from python_backends.weights import SHIPPED, WeightsChoice

SPEC = ModelSpec(
    "counter",
    inputs=(TensorSpec("image", "UINT8", (-1, -1, 3)),),
    outputs=(TensorSpec("face_boxes", "FP32", (-1, 4)), TensorSpec("model_info", "BYTES", (1,))),
    max_batch_size=8,
)


@dataclass(frozen=True)
class Settings:
    scale: float = 1.0


class CountingPredictor:
    """Returns `value` boxes per image, where value is the image's first pixel; 255 is 'bad input'."""

    weights = WeightsChoice("counter", "test", SHIPPED, None, "MIT")

    def __init__(self):
        self.batch_sizes = []

    def predict(self, batch):
        self.batch_sizes.append(len(batch["image"]))
        results = []
        for image in batch["image"]:
            if image[0, 0, 0] == 255:
                raise InputError("image is all white: use a real photo", "blank")
            results.append({"face_boxes": np.full((int(image[0, 0, 0]), 4), 1.0, np.float32)})
        return results


def _model(triton_io):
    class Model(triton_io.BatchedModel):
        spec = SPEC
        settings_type = Settings

        def build(self, settings, device):
            self.device = device
            return CountingPredictor()

    model = Model()
    config = {"parameters": {"scale": {"string_value": "2"}}}
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU"})
    return model


def _request(pb, *values):
    images = np.stack([np.full((2, 2, 3), v, np.uint8) for v in values])
    return pb.InferenceRequest(inputs=[pb.Tensor("image", images)])


def _output(response, name):
    return next(t for t in response.output_tensors if t.name() == name).as_numpy()


def test_requests_share_one_predict_and_split_back_padded(fake_pb_utils):
    import triton_python_backend_utils as pb

    model = _model(fake_pb_utils)
    responses = model.execute([_request(pb, 1), _request(pb, 3, 2)])
    assert model.predictor.batch_sizes == [3]
    assert _output(responses[0], "face_boxes").shape == (1, 1, 4)
    second = _output(responses[1], "face_boxes")
    assert second.shape == (2, 3, 4)  # padded to the most faces in that request
    assert second[1, 2].tolist() == [0, 0, 0, 0]
    info = json.loads(_output(responses[1], "model_info")[1][0])
    assert info["engine"] == "test" and info["source"] == SHIPPED


def test_one_bad_request_does_not_fail_its_batch(fake_pb_utils):
    import triton_python_backend_utils as pb

    model = _model(fake_pb_utils)
    good, bad = model.execute([_request(pb, 2), _request(pb, 255)])
    assert good.error is None and _output(good, "face_boxes").shape == (1, 2, 4)
    assert bad.error.code() == pb.TritonError.INVALID_ARG
    assert split_code(bad.error.message()) == ("image is all white: use a real photo", "blank")


def test_internal_errors_hide_the_traceback(fake_pb_utils):
    import triton_python_backend_utils as pb

    model = _model(fake_pb_utils)
    model.predictor.predict = lambda batch: (_ for _ in ()).throw(ZeroDivisionError("secret detail"))
    (response,) = model.execute([_request(pb, 1)])
    assert response.error.code() == pb.TritonError.INTERNAL
    assert "secret detail" not in response.error.message() and "server log" in response.error.message()
    assert any("ZeroDivisionError" in m for m in pb.Logger.messages)


def test_stack_padded_keeps_equal_shapes(fake_pb_utils):
    stacked = fake_pb_utils.stack_padded([np.ones((2, 3)), np.zeros((2, 3))])
    assert stacked.shape == (2, 2, 3) and stacked[0].sum() == 6
