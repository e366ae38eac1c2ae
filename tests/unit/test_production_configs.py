"""Production configs for the NGC Triton container: the python fronts (model_repository/<m>/configs/
onnxruntime_onnx.pbtxt, tensorrt_plan.pbtxt) and the exported networks they call through BLS
(deploy/triton/networks/<m>_net). The networks' onnxruntime / tensorrt backends are not in the pytriton
server, so the BLS path runs here against a stand-in that serves the exported ONNX file with ONNX Runtime:
the front with `runtime: triton` must give what the in-process torch network gives."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from client.repository import load_config, parameters
from client.server import PROJECT_ROOT
from python_backends import spec
from python_backends.errors import WeightsUnavailable
from python_backends.settings import from_mapping
from python_backends.triton_network import NETWORKS

NETWORKS_DIR = PROJECT_ROOT / "deploy" / "triton" / "networks"
VARIANTS = ("onnxruntime_onnx", "tensorrt_plan")
PLATFORMS = {"config.pbtxt": ("onnxruntime_onnx", "model.onnx"), "tensorrt_plan.pbtxt": ("tensorrt_plan", "model.plan")}


def _network_configs():
    for front, network in NETWORKS.items():
        folder = NETWORKS_DIR / network.model
        for path in [folder / "config.pbtxt", *sorted((folder / "configs").glob("*.pbtxt"))]:
            yield pytest.param(front, path, id=str(path.relative_to(NETWORKS_DIR)))


@pytest.mark.parametrize(("front", "path"), list(_network_configs()))
def test_network_configs_declare_the_exported_tensors(front, path):
    config = load_config(path)
    network = NETWORKS[front]
    folder = path.parent if path.name == "config.pbtxt" else path.parent.parent
    assert config.name == network.model == folder.name
    platform, filename = PLATFORMS[path.name]
    assert (config.platform, config.default_model_filename) == (platform, filename)
    assert config.max_batch_size >= spec.ALL_MODELS[front].max_batch_size  # a front batch fits one request
    assert [t.name for t in config.input] == [network.input]
    assert [t.name for t in config.output] == list(network.outputs)
    assert {t.data_type for t in (*config.input, *config.output)} == {model_config_pb2.TYPE_FP32}
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert config.HasField("dynamic_batching")


@pytest.mark.parametrize("front", list(NETWORKS))
def test_network_variants_differ_only_in_backend(front):
    folder = NETWORKS_DIR / NETWORKS[front].model
    onnx, plan = load_config(folder / "config.pbtxt"), load_config(folder / "configs" / "tensorrt_plan.pbtxt")
    assert list(onnx.input) == list(plan.input) and list(onnx.output) == list(plan.output)
    assert onnx.max_batch_size == plan.max_batch_size


@pytest.mark.parametrize("front", list(NETWORKS))
def test_front_variants_call_their_network(front):
    from python_backends.catalog import ROLES

    paths = [PROJECT_ROOT / "model_repository" / front / "configs" / f"{v}.pbtxt" for v in VARIANTS]
    configs = [load_config(p) for p in paths]
    # One front serves both: the network's config variant picks ONNX Runtime or TensorRT.
    assert text_format.MessageToString(configs[0]) == text_format.MessageToString(configs[1])
    config = configs[0]
    assert config.backend == "python"
    package, settings_name, _ = ROLES[front]
    settings = from_mapping(getattr(__import__(package, fromlist=[settings_name]), settings_name), parameters(config))
    assert settings.network_model == NETWORKS[front].model
    assert getattr(settings, "runtime", getattr(settings, "embedder", None)) in ("triton", "arcface-triton")


def test_exporters_write_the_names_the_networks_declare():
    import inspect

    from python_backends.face_detection import onnx_export as detector_export
    from python_backends.face_embedding import iresnet
    from python_backends.face_landmarks import onnx_export as landmarks_export

    assert (detector_export.INPUT_NAME, detector_export.OUTPUT_NAMES) == (
        NETWORKS["face_detector"].input, NETWORKS["face_detector"].outputs)
    assert (landmarks_export.INPUT_NAME, (landmarks_export.OUTPUT_NAME,)) == (
        NETWORKS["face_landmarks"].input, NETWORKS["face_landmarks"].outputs)
    assert inspect.signature(iresnet.export_onnx).parameters["input_name"].default == NETWORKS["face_embedder"].input
    export_source = (PROJECT_ROOT / "python_backends" / "export.py").read_text()
    for network in NETWORKS.values():
        assert f'"{network.onnx_name}"' in export_source


# ---------------------------------------------------------------- the BLS path against exported networks


def _stand_in_server(module: types.ModuleType, models: dict[str, Path], calls: list) -> types.ModuleType:
    """The fake `triton_python_backend_utils` (tests/conftest.py) whose BLS requests run the named ONNX files in
    ONNX Runtime, checking the request against the network's config (names, FP32, batch within max_batch_size)."""
    import onnxruntime

    sessions = {name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in models.items()}
    Tensor, TritonError = module.Tensor, module.TritonError

    class Response:
        def __init__(self, outputs=(), error=None):
            self.outputs, self._error = list(outputs), error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.outputs, self.inputs = model_name, list(requested_output_names), list(inputs)

        def exec(self):
            if self.model_name not in sessions:
                return Response(error=TritonError(f"Request for unknown model: '{self.model_name}'",
                                                  TritonError.NOT_FOUND))
            config = load_config(NETWORKS_DIR / self.model_name / "config.pbtxt")
            (tensor,) = self.inputs
            assert tensor.name() == config.input[0].name and tensor.as_numpy().dtype == np.float32
            assert 1 <= len(tensor.as_numpy()) <= config.max_batch_size
            calls.append((self.model_name, tensor.as_numpy().shape))
            results = sessions[self.model_name].run(self.outputs, {tensor.name(): tensor.as_numpy()})
            return Response([Tensor(n, r) for n, r in zip(self.outputs, results)])

    def get_output_tensor_by_name(response, name):
        return next((t for t in response.outputs if t.name() == name), None)

    module.InferenceRequest, module.get_output_tensor_by_name = InferenceRequest, get_output_tensor_by_name
    return module


@pytest.fixture
def serve_networks(monkeypatch, pb_utils_stand_in):
    calls: list = []

    def install(models: dict[str, Path]) -> list:
        module = _stand_in_server(pb_utils_stand_in(), models, calls)
        monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
        return calls

    return install



@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(PROJECT_ROOT / "client" / "samples" / "astronaut.png").convert("RGB"))


def test_detector_front_through_bls_matches_torch(tmp_path, serve_networks, photo, random_bn):
    from python_backends.face_detection import FaceDetectorSettings, build_face_detector, export_onnx
    from python_backends.face_detection.detector import FaceDetector
    from python_backends.face_detection.retinaface import RetinaFace
    from python_backends.face_detection.retinaface_runtime import RetinaFaceEngine, TorchRunner

    torch.manual_seed(0)
    net = random_bn(RetinaFace("mobilenet0.25"))
    onnx_path = export_onnx(net, tmp_path / "retinaface.onnx")
    calls = serve_networks({"face_detector_net": onnx_path})
    settings = FaceDetectorSettings(runtime="triton", confidence_threshold=0.3, max_side=160)
    front = build_face_detector(settings, "cpu", root=tmp_path)
    assert front.weights.engine == "retinaface-export-triton" and "face_detector_net" in front.weights.note
    reference = FaceDetector(RetinaFaceEngine(TorchRunner(net, "cpu"), 0.3, settings.nms_threshold), settings, None)
    images = np.stack([photo[:240, :320], photo[200:440, 100:420], photo[-240:, -320:]])
    got, want = front.predict({spec.IMAGE: images}), reference.predict({spec.IMAGE: images})
    assert calls == [("face_detector_net", (3, 3, 120, 160))]  # one request, the whole batch, downsized
    assert sum(int(w[spec.FACE_COUNT][0]) for w in want) > 0  # random weights still find candidates at 0.3
    for g, w in zip(got, want):
        assert g[spec.FACE_COUNT] == w[spec.FACE_COUNT]
        for name in (spec.FACE_BOXES, spec.FACE_SCORES, spec.FACE_KEYPOINTS):
            np.testing.assert_allclose(g[name], w[name], rtol=1e-4, atol=1e-2)


def test_landmarks_front_through_bls_matches_torch(tmp_path, serve_networks, photo, random_bn):
    from python_backends.face_landmarks import FaceLandmarksSettings, build_face_landmarks
    from python_backends.face_landmarks.hrnet import HighResolutionNet, HRNetConfig
    from python_backends.face_landmarks.onnx_export import export_onnx
    from python_backends.face_landmarks.predictor import FaceLandmarksPredictor, HRNetEngine

    torch.manual_seed(1)
    # Every kind of layer W18 has, narrower and with fewer repeats: a quick export with the WFLW head.
    net = random_bn(HighResolutionNet(HRNetConfig(98, stem_width=8, widths=(4, 8, 16, 32), num_blocks=1,
                                                   stage_modules=(1, 1, 1))))
    calls = serve_networks({"face_landmarks_net": export_onnx(net, tmp_path / "hrnet.onnx")})
    settings = FaceLandmarksSettings(runtime="triton", engine="hrnet", hrnet_dataset="wflw")
    front = build_face_landmarks(settings, "cpu", root=tmp_path)
    assert front.weights.engine == "hrnet-w18-wflw98-triton"
    torch_engine = HRNetEngine.__new__(HRNetEngine)  # the in-process engine around the same network
    torch_engine._torch, torch_engine.device, torch_engine.net = torch, torch.device("cpu"), net
    torch_engine.crop_scale = settings.crop_scale
    reference = FaceLandmarksPredictor(front.weights, torch_engine, settings)
    batch = {spec.IMAGE: np.stack([photo, photo]),
             spec.FACE_BOX: np.array([[180, 60, 330, 250], [170, 70, 320, 240]], np.float32)}
    got, want = front.predict(batch), reference.predict(batch)
    assert calls == [("face_landmarks_net", (2, 3, 256, 256))]
    for g, w in zip(got, want):
        assert g[spec.LANDMARKS].shape == (98, 2)
        np.testing.assert_allclose(g[spec.LANDMARKS], w[spec.LANDMARKS], atol=1e-2)
        np.testing.assert_allclose(g[spec.HEAD_POSE], w[spec.HEAD_POSE], atol=1e-2)


def test_embedder_front_through_bls_matches_torch(tmp_path, serve_networks, random_bn):
    from python_backends.face_embedding import (
        ARCFACE_TEMPLATE,
        FaceEmbedderSettings,
        IResNet,
        build_face_embedder,
        export_onnx,
    )
    from python_backends.face_embedding.arcface import ArcFaceEmbedder, ArcFaceTorchRunner
    from python_backends.face_embedding.predictor import FaceEmbedder

    torch.manual_seed(2)
    net = random_bn(IResNet((1, 1, 1, 1), num_features=512))
    with torch.no_grad():
        net.fc.weight.mul_(0.1)
    calls = serve_networks({"face_embedder_net": export_onnx(net, tmp_path / "backbone.onnx")})
    front = build_face_embedder(FaceEmbedderSettings(embedder="arcface-triton"), "cpu", root=tmp_path)
    assert front.weights.engine == "arcface-triton"
    reference = FaceEmbedder(ArcFaceEmbedder(ArcFaceTorchRunner(net)), front.weights)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 200, 200, 3), dtype=np.uint8)
    keypoints = np.stack([ARCFACE_TEMPLATE * 1.2 + offset for offset in (30.0, 40.0, 50.0)]).astype(np.float32)
    boxes = np.stack([[k[:, 0].min() - 20, k[:, 1].min() - 30, k[:, 0].max() + 20, k[:, 1].max() + 20]
                      for k in keypoints]).astype(np.float32)
    batch = {spec.IMAGE: images, spec.FACE_BOX: boxes, spec.FACE_KEYPOINTS: keypoints}
    got, want = front.predict(batch), reference.predict(batch)
    assert calls == [("face_embedder_net", (3, 3, 112, 112))]
    for g, w in zip(got, want):
        assert g[spec.EMBEDDING].shape == (512,)
        np.testing.assert_allclose(g[spec.EMBEDDING], w[spec.EMBEDDING], atol=1e-4)


def test_a_missing_network_is_unavailable_with_what_to_do(tmp_path, serve_networks, photo):
    from python_backends.face_detection import FaceDetectorSettings, build_face_detector

    serve_networks({})
    front = build_face_detector(FaceDetectorSettings(runtime="triton", network_model="nowhere_net"), "cpu")
    with pytest.raises(WeightsUnavailable, match="'nowhere_net' did not answer.*docs/deployment.md"):
        front.predict({spec.IMAGE: photo[None]})


@pytest.mark.parametrize("front", list(NETWORKS))
def test_weights_report_names_the_network_model(front):
    from python_backends.catalog import ROLES

    package, settings_name, _ = ROLES[front]
    module = __import__(package, fromlist=[settings_name, "choose_weights"])
    config = load_config(PROJECT_ROOT / "model_repository" / front / "configs" / "tensorrt_plan.pbtxt")
    choice = module.choose_weights(from_mapping(getattr(module, settings_name), parameters(config)))
    assert choice.engine.endswith("-triton") or choice.engine == "arcface-triton"
    assert NETWORKS[front].model in choice.note
