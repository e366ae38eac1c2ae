"""CI smoke test of the GPU profile (`--model-config-name gpu`) through a real tritonserver on the CPU: its
configs with KIND_GPU moved to KIND_CPU (tests/profile_repositories.py) load, serve their larger batches, and a
talking_head job with every gate on streams whole segments through the face models, while bad input keeps its
clear refusal. The whole reliability suite runs the same way with `pytest tests/reliability --model-config-name
gpu`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from profile_repositories import profile_on_cpu

from client.server import PROJECT_ROOT, ServerOptions, TritonServer, free_port
from client.triton_client import Endpoint, RequestRejected, TalkingHeadClient
from python_backends import spec

pytestmark = pytest.mark.integration

# 2 s at 25 fps: 50 frames in one segment, more than the CPU profile's 16 frames a request
PARAMETERS = {"fps": 25, "width": 128, "height": 128, "chunk_frames": 25, "max_duration_s": 2.0}


@pytest.fixture(scope="module")
def gpu_profile(tmp_path_factory):
    options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            repositories=profile_on_cpu(tmp_path_factory.mktemp("gpu-profile"), "gpu"),
                            model_config_name="gpu", weights=tmp_path_factory.mktemp("no-weights"))
    with TritonServer(options, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log"):
        with TalkingHeadClient(Endpoint(options.grpc_url, "grpc"), timeout_s=300) as client:
            yield options, client


def test_the_profiles_configs_are_served(gpu_profile):
    import tritonclient.http as http

    options, _ = gpu_profile
    server = http.InferenceServerClient(options.http_url)
    for model, batch in (("face_detector", 160), ("face_landmarks", 160), ("lipsync_scorer", 4),
                         ("mouth_refiner", 4), ("content_safety", 16)):
        config = server.get_model_config(model)
        assert config["max_batch_size"] == batch and "dynamic_batching" in config, model
    parameters = server.get_model_config("talking_head")["parameters"]
    assert parameters["request_frames"]["string_value"] == "160"


def test_content_safety_judges_a_batch_in_one_request(gpu_profile):
    _, client = gpu_profile
    frames = np.random.default_rng(0).integers(0, 255, (5, 96, 96, 3), dtype=np.uint8)
    outputs = client.infer(spec.CONTENT_SAFETY, {spec.IMAGE: frames})
    reports = [json.loads(r) for r in outputs[spec.SAFETY_REPORT].reshape(-1)]
    assert len(reports) == 5 and all(r["nsfw"]["status"] in ("pass", "fail") for r in reports)


def test_a_job_with_every_gate_streams_and_bad_input_is_refused(gpu_profile):
    _, client = gpu_profile
    samples = PROJECT_ROOT / "client" / "samples"
    photo, audio = (samples / "astronaut.png").read_bytes(), (samples / "speech.wav").read_bytes()
    *chunks, last = list(client.generate(photo, audio, parameters=PARAMETERS, deadline_s=300))
    assert sum(len(c.frames) for c in chunks) == 50
    segments = last.qa_report["segments"]
    gates = {g["gate"]: g for g in segments[0]["gates"]}
    assert len(segments) == 1 and set(gates) >= {"face_presence", "identity", "lipsync", "flicker", "content_safety"}
    # the batched requests were answered: the face and safety gates judged (the envelope judges lip-sync here)
    assert {gates[name]["status"] for name in ("face_presence", "identity", "content_safety")} <= {"pass", "fail"}
    with pytest.raises(RequestRejected) as refused:
        list(client.generate(photo[: len(photo) // 3], audio, parameters=PARAMETERS, deadline_s=60))
    assert refused.value.code and "photo" in str(refused.value).lower()
