"""The production fronts through a real tritonserver (`--model-config-name onnxruntime_onnx`): each face model
calls its network model through real BLS. The NGC backends are not in the pytriton server, so each network
is a python-backend stand-in that runs the exported ONNX in ONNX Runtime, declared with the inputs, outputs
and batching of its deploy/triton/networks config: Triton itself checks what the fronts send against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from client.repository import load_config
from client.server import PROJECT_ROOT, ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient
from python_backends import spec
from python_backends.triton_network import NETWORKS

pytestmark = pytest.mark.integration

STAND_IN = '''
import json

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]
        path = config["parameters"]["onnx_path"]["string_value"]
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            results = self.session.run(self.outputs, {self.input: x})
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r, dtype=np.float32))
                       for n, r in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''



def _stand_in(repository, front: str, onnx_path) -> None:
    """The network's deploy config, served by the python backend instead of ONNX Runtime / TensorRT."""
    name = NETWORKS[front].model
    config = load_config(PROJECT_ROOT / "deploy" / "triton" / "networks" / name / "config.pbtxt")
    config.ClearField("platform")
    config.ClearField("default_model_filename")
    config.ClearField("optimization")
    config.backend = "python"
    for group in config.instance_group:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
    config.parameters["onnx_path"].string_value = str(onnx_path)
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    (repository / name / "1" / "model.py").write_text(STAND_IN)


@pytest.fixture(scope="module")
def networks(tmp_path_factory, random_bn):
    from python_backends.face_detection import export_onnx as export_retinaface
    from python_backends.face_detection.retinaface import RetinaFace
    from python_backends.face_embedding import IResNet
    from python_backends.face_embedding import export_onnx as export_arcface
    from python_backends.face_landmarks.hrnet import HighResolutionNet, HRNetConfig
    from python_backends.face_landmarks.onnx_export import export_onnx as export_hrnet

    folder = tmp_path_factory.mktemp("networks")
    torch.manual_seed(0)
    nets = {
        "face_detector": random_bn(RetinaFace("mobilenet0.25"), 0),
        "face_landmarks": random_bn(HighResolutionNet(HRNetConfig(98, stem_width=8, widths=(4, 8, 16, 32),
                                                                   num_blocks=1, stage_modules=(1, 1, 1))), 1),
        "face_embedder": random_bn(IResNet((1, 1, 1, 1), num_features=512), 2),
    }
    with torch.no_grad():  # raise the face logits, so that the production threshold (0.9) keeps detections
        for head in nets["face_detector"].ClassHead:
            head.conv1x1.bias[1::2] += 3.0
    exports = {
        "face_detector": export_retinaface(nets["face_detector"], folder / "retinaface.onnx"),
        "face_landmarks": export_hrnet(nets["face_landmarks"], folder / "hrnet.onnx"),
        "face_embedder": export_arcface(nets["face_embedder"], folder / "backbone.onnx"),
    }
    repository = folder / "repository"
    for front, path in exports.items():
        _stand_in(repository, front, path)
    return nets, repository


@pytest.fixture(scope="module")
def production_server(networks, tmp_path_factory):
    _, repository = networks
    options = ServerOptions(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        repositories=(PROJECT_ROOT / "model_repository", PROJECT_ROOT / "ensembles", repository),
        model_config_name="onnxruntime_onnx", weights=tmp_path_factory.mktemp("no-weights"),
    )
    with TritonServer(options, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log"):
        with TalkingHeadClient(Endpoint(options.grpc_url, "grpc")) as client:
            yield client


@pytest.fixture(scope="module")
def photo():
    from PIL import Image

    return np.asarray(Image.open(PROJECT_ROOT / "client" / "samples" / "astronaut.png").convert("RGB"))


def _info(outputs) -> dict:
    import json

    return json.loads(outputs[spec.MODEL_INFO].ravel()[0])


def test_detector_front_calls_its_network(production_server, networks, photo):
    from python_backends.face_detection import FaceDetectorSettings
    from python_backends.face_detection.detector import FaceDetector
    from python_backends.face_detection.retinaface_runtime import RetinaFaceEngine, TorchRunner

    nets, _ = networks
    settings = FaceDetectorSettings(confidence_threshold=0.9)  # the production config's values
    reference = FaceDetector(RetinaFaceEngine(TorchRunner(nets["face_detector"], "cpu"), 0.9, 0.4), settings, None)
    images = np.stack([photo, photo[::-1].copy()])
    got = production_server.infer(spec.FACE_DETECTOR, {spec.IMAGE: images})
    assert _info(got)["engine"] == "retinaface-export-triton"
    for index, want in enumerate(reference.predict({spec.IMAGE: images})):
        assert int(got[spec.FACE_COUNT][index, 0]) == int(want[spec.FACE_COUNT][0]) == settings.max_faces
        # The best 8 (score gaps of ~1e-4, far above the ONNX-vs-torch noise; the 16th place is a near-tie).
        np.testing.assert_allclose(got[spec.FACE_SCORES][index, :8], want[spec.FACE_SCORES][:8], atol=1e-5)
        np.testing.assert_allclose(got[spec.FACE_BOXES][index, :8], want[spec.FACE_BOXES][:8], atol=1e-2)


def test_landmarks_front_calls_its_network(production_server, networks, photo):
    from python_backends.face_landmarks import FaceLandmarksSettings
    from python_backends.face_landmarks.predictor import FaceLandmarksPredictor, HRNetEngine

    nets, _ = networks
    engine = HRNetEngine.__new__(HRNetEngine)
    engine._torch, engine.device, engine.crop_scale = torch, torch.device("cpu"), 1.25
    engine.net = nets["face_landmarks"]
    reference = FaceLandmarksPredictor(None, engine, FaceLandmarksSettings())
    batch = {spec.IMAGE: photo[None], spec.FACE_BOX: np.array([[180, 60, 330, 250]], np.float32)}
    got = production_server.infer(spec.FACE_LANDMARKS, batch)
    (want,) = reference.predict(batch)
    assert _info(got)["engine"] == "hrnet-w18-wflw98-triton"
    np.testing.assert_allclose(got[spec.LANDMARKS][0], want[spec.LANDMARKS], atol=1e-2)
    np.testing.assert_allclose(got[spec.HEAD_POSE][0], want[spec.HEAD_POSE], atol=1e-2)


def test_embedder_front_calls_its_network(production_server, networks):
    from python_backends.face_embedding import ARCFACE_TEMPLATE
    from python_backends.face_embedding.arcface import ArcFaceEmbedder, ArcFaceTorchRunner
    from python_backends.face_embedding.predictor import FaceEmbedder

    nets, _ = networks
    reference = FaceEmbedder(ArcFaceEmbedder(ArcFaceTorchRunner(nets["face_embedder"])), None)
    image = np.random.default_rng(0).integers(0, 256, size=(1, 200, 200, 3), dtype=np.uint8)
    keypoints = (ARCFACE_TEMPLATE * 1.2 + 40.0)[None].astype(np.float32)
    boxes = np.array([[30, 40, 180, 190]], np.float32)
    batch = {spec.IMAGE: image, spec.FACE_BOX: boxes, spec.FACE_KEYPOINTS: keypoints}
    got = production_server.infer(spec.FACE_EMBEDDER, batch)
    (want,) = reference.predict(batch)
    assert _info(got)["engine"] == "arcface-triton"
    np.testing.assert_allclose(got[spec.EMBEDDING][0], want[spec.EMBEDDING], atol=1e-4)


def test_networks_were_called_by_the_fronts(production_server, networks):
    for network in NETWORKS.values():
        inferences, _ = production_server.batching_counts(network.model)
        assert inferences >= 1, f"{network.model} was never called"
