"""`talkinghead export`: PyTorch, ONNX Runtime and tritonserver agree on the same official-layout checkpoint.

No official RetinaFace weights can be downloaded here, so the checkpoint is the real MobileNet-0.25
architecture with seeded random weights, saved exactly as Pytorch_Retinaface saves it (`module.` prefixes).
The face-class bias is raised so that random weights still produce confident detections to compare.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from client.server import ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, TalkingHeadClient
from python_backends import spec
from python_backends.face_detection import FaceDetectorSettings, build_face_detector
from python_backends.face_detection.retinaface import RetinaFace

pytestmark = pytest.mark.integration

BOX_ATOL_PX = 0.05  # fp32 graph in two runtimes: sub-pixel agreement expected


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    net = RetinaFace("mobilenet0.25").eval()
    with torch.no_grad():
        for head in net.ClassHead:
            head.conv1x1.bias[1::2] += 6.0  # (background, face) logits per anchor
    (root / "face_detector").mkdir()
    state = {f"module.{key}": value for key, value in net.state_dict().items()}
    torch.save(state, root / "face_detector" / "mobilenet0.25_Final.pth")
    return root


def test_export_then_three_runtimes_agree(weights_root, samples):
    result = subprocess.run(
        [sys.executable, "-m", "client.cli", "export", "face_detector", "--weights", str(weights_root)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout.strip().splitlines()[-1])
    assert exported["parity"] and exported["max_relative_difference"] <= exported["tolerance"]
    assert (weights_root / "face_detector" / "retinaface.onnx").exists()

    image = np.asarray(Image.open(samples / "astronaut.png").convert("RGB"))
    batch = {spec.IMAGE: image[None]}
    runs = {}
    for runtime in ("torch", "onnxruntime"):
        settings = FaceDetectorSettings(backbone="mobilenet0.25", runtime=runtime)
        runs[runtime] = build_face_detector(settings, "cpu", weights_root).predict(batch)[0]

    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            weights=weights_root, model_config_name="python_onnxruntime")
    with TritonServer(options), TalkingHeadClient(Endpoint(options.grpc_url)) as client:
        served = client.infer(spec.FACE_DETECTOR, batch)
    info = json.loads(served[spec.MODEL_INFO].reshape(-1)[0])
    assert info["source"] == "official" and "onnxruntime" in info["engine"]
    count = int(served[spec.FACE_COUNT].reshape(-1)[0])
    runs["triton"] = {spec.FACE_BOXES: served[spec.FACE_BOXES][0][:count],
                      spec.FACE_KEYPOINTS: served[spec.FACE_KEYPOINTS][0][:count]}

    reference = runs["torch"]
    assert len(reference[spec.FACE_BOXES]) > 0
    for name in ("onnxruntime", "triton"):
        for tensor in (spec.FACE_BOXES, spec.FACE_KEYPOINTS):
            np.testing.assert_allclose(runs[name][tensor], reference[tensor], atol=BOX_ATOL_PX, err_msg=name)
