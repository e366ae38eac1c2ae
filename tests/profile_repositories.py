"""A `--model-config-name` profile served on a machine without its hardware: copies of the project's repositories
in which every configs/<profile>.pbtxt is rewritten from KIND_GPU to KIND_CPU and nothing else, so the profile's
batching, request sizes and parameters run through a real tritonserver on the CPU (Triton refuses to load a
KIND_GPU instance without a GPU). Where a GPU is present the profile is served as checked in (the reliability
suite's fault cases on the H200). `pytest --model-config-name gpu` serves the session's tritonserver this way
(tests/conftest.py); tests/integration/test_gpu_profile_server.py is the CI smoke test."""

from __future__ import annotations

import pytest

from client.repository import gpu_present, profile_on_cpu

GPU_PROFILE = "gpu"  # --model-config-name of the GPU profile (every model's configs/gpu.pbtxt)
# the models the GPU profile puts on the GPU: Wan and every QA model (the orchestrators stay on the CPU)
ON_THE_GPU = frozenset({"video_generator", "face_detector", "face_landmarks", "face_embedder", "content_safety",
                        "lipsync_scorer", "mouth_refiner"})


def served_profile(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ServerOptions fields for the session's --model-config-name profile: {} for the defaults."""
    profile = config.getoption("--model-config-name")
    if not profile:
        return {}
    if gpu_present():  # the profile's own hardware: served as checked in
        return {"model_config_name": profile}
    return {"model_config_name": profile,
            "repositories": profile_on_cpu(tmp_path_factory.mktemp(f"{profile}-profile"), profile)}
