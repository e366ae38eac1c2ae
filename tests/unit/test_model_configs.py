"""Every checked-in config.pbtxt matches python_backends/spec.py and parses into its settings."""

from __future__ import annotations

import pytest

from client.repository import REPOSITORIES, load_config, parameters
from python_backends import spec

TYPE_NAMES = {"BYTES": "TYPE_STRING"}


def _all_configs():
    for repository in REPOSITORIES:
        for path in sorted(repository.glob("*/config.pbtxt")) + sorted(repository.glob("*/configs/*.pbtxt")):
            yield pytest.param(path, id=str(path.relative_to(repository.parent)))


def _tensor_tuple(tensor) -> tuple:
    from tritonclient.grpc import model_config_pb2

    return (tensor.name, model_config_pb2.DataType.Name(tensor.data_type), tuple(tensor.dims),
            getattr(tensor, "optional", False))


@pytest.mark.parametrize("path", list(_all_configs()))
def test_config_matches_spec(path):
    config = load_config(path)
    model_name = path.parent.name if path.name == "config.pbtxt" else path.parent.parent.name
    assert config.name == model_name
    expected = spec.ALL_MODELS[config.name]
    if path.parent.name == "configs" and expected.max_batch_size > 0:
        # a variant may batch more (the GPU profile), never stop batching: callers send a batch dimension
        assert config.max_batch_size >= expected.max_batch_size
    else:
        assert config.max_batch_size == expected.max_batch_size
    for declared, wanted in ((config.input, expected.inputs), (config.output, expected.outputs)):
        assert [_tensor_tuple(t) for t in declared] == [
            (t.name, TYPE_NAMES.get(t.dtype, "TYPE_" + t.dtype), t.dims, t.optional) for t in wanted
        ]
    assert config.model_transaction_policy.decoupled == expected.decoupled
    if expected.max_batch_size > 1 and not path.parent.name == "configs":
        assert config.HasField("dynamic_batching"), "batched models must declare dynamic_batching"


def test_every_spec_model_has_a_folder():
    folders = {p.parent.name for repo in REPOSITORIES for p in repo.glob("*/config.pbtxt")}
    assert set(spec.ALL_MODELS) <= folders


@pytest.mark.parametrize(
    "model", ["face_detector", "face_landmarks", "face_embedder", "audio_features", "video_generator"]
)
def test_parameters_parse_into_settings(model):
    from client.repository import config_path
    from python_backends.catalog import ROLES
    from python_backends.settings import from_mapping

    package, settings_name, _ = ROLES[model]
    module = __import__(package, fromlist=[settings_name])
    settings = from_mapping(getattr(module, settings_name), parameters(load_config(config_path(model))))
    assert settings is not None


def test_preprocess_parameters_parse_into_limits():
    from client.repository import config_path
    from python_backends.settings import from_mapping
    from python_backends.validation import ValidationLimits

    limits = from_mapping(ValidationLimits, parameters(load_config(config_path("preprocess"))))
    assert limits.multi_face_policy in ("largest", "reject")
