"""The GPU profile (`--model-config-name gpu`): every configs/gpu.pbtxt keeps its default config's tensors and
parameter keys, runs on the GPU, batches where the default does (more), and its parameters load into the model's
settings; the orchestrators' request size fits the face models' batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from profile_repositories import GPU_PROFILE, ON_THE_GPU

from client.repository import REPOSITORIES, load_config, parameters
from python_backends.catalog import ROLES
from python_backends.settings import from_mapping

PROFILE = GPU_PROFILE
ORCHESTRATORS = {"talking_head", "video_qa"}
FACE_MODELS = ("face_detector", "face_landmarks", "face_embedder")


def _variants() -> dict[str, Path]:
    return {path.parent.parent.name: path for repository in REPOSITORIES
            for path in repository.glob(f"*/configs/{PROFILE}.pbtxt")}


def _kinds(config) -> set[str]:
    from tritonclient.grpc import model_config_pb2

    return {model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) for group in config.instance_group}


def test_the_profile_covers_the_models_that_need_a_gpu() -> None:
    assert set(_variants()) == ON_THE_GPU | ORCHESTRATORS


@pytest.mark.parametrize("model", sorted(ON_THE_GPU | ORCHESTRATORS))
def test_a_variant_keeps_its_defaults_interface(model: str) -> None:
    path = _variants()[model]
    variant, default = load_config(path), load_config(path.parent.parent / "config.pbtxt")
    assert variant.name == default.name == model and variant.backend == default.backend
    assert list(variant.input) == list(default.input) and list(variant.output) == list(default.output)
    assert variant.model_transaction_policy == default.model_transaction_policy
    assert set(parameters(variant)) == set(parameters(default))
    assert _kinds(default) == {"KIND_CPU"}  # the default profile stays on the CPU
    assert _kinds(variant) == ({"KIND_GPU"} if model in ON_THE_GPU else {"KIND_CPU"})
    if default.max_batch_size:
        assert variant.max_batch_size >= default.max_batch_size and variant.HasField("dynamic_batching")
        assert max(variant.dynamic_batching.preferred_batch_size) <= variant.max_batch_size
    else:
        assert variant.max_batch_size == 0


@pytest.mark.parametrize("model", sorted(ON_THE_GPU))
def test_a_variants_parameters_load_into_the_models_settings(model: str) -> None:
    package, settings_name, _ = ROLES[model]
    module = __import__(package, fromlist=[settings_name])
    assert from_mapping(getattr(module, settings_name), parameters(load_config(_variants()[model]))) is not None


def test_syncnet_and_wav2lip_take_batches_of_segments_on_the_gpu() -> None:
    variants = _variants()
    for model in ("lipsync_scorer", "mouth_refiner"):
        assert load_config(variants[model]).max_batch_size > 1
    assert int(parameters(load_config(variants["mouth_refiner"]))["batch_size"]) >= 64
    assert int(parameters(load_config(variants["lipsync_scorer"]))["batch_size"]) >= 100  # a 5 s segment's windows


@pytest.mark.parametrize("profile", [None, PROFILE])
def test_the_orchestrators_requests_fit_the_face_models_batches(profile: str | None) -> None:
    from client.repository import config_path
    from python_backends.pipeline import TalkingHeadSettings

    for orchestrator in sorted(ORCHESTRATORS):
        settings = from_mapping(TalkingHeadSettings, parameters(load_config(config_path(orchestrator, profile))))
        for model in FACE_MODELS:
            assert settings.quality.request_frames <= load_config(config_path(model, profile)).max_batch_size
        if profile:  # a 5 s segment at 30 fps in one request per face model
            assert settings.quality.request_frames >= 150


def test_the_profile_on_the_cpu_changes_only_the_instance_kind(tmp_path: Path) -> None:
    from profile_repositories import profile_on_cpu

    copies = profile_on_cpu(tmp_path, PROFILE)
    for model, path in _variants().items():
        copy = next(c for c in copies if (c / model).is_dir()) / model
        assert (copy / "config.pbtxt").read_text() == (path.parent.parent / "config.pbtxt").read_text()
        rewritten = (copy / "configs" / f"{PROFILE}.pbtxt").read_text()
        assert "KIND_GPU" not in rewritten and rewritten == path.read_text().replace("KIND_GPU", "KIND_CPU")
    with pytest.raises(ValueError, match="no model has a configs/nothing.pbtxt"):
        profile_on_cpu(tmp_path / "other", "nothing")
