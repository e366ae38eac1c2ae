"""Read the checked-in Triton model configs (config.pbtxt and the --model-config-name variants)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .server import PROJECT_ROOT

REPOSITORIES = (PROJECT_ROOT / "model_repository", PROJECT_ROOT / "ensembles")


def model_dir(name: str) -> Path:
    for repository in REPOSITORIES:
        if (repository / name / "config.pbtxt").exists():
            return repository / name
    raise FileNotFoundError(f"no model {name!r} in {', '.join(str(r) for r in REPOSITORIES)}")


def config_path(name: str, config_name: str | None = None) -> Path:
    """Triton's rule: configs/<config_name>.pbtxt if given and present, else config.pbtxt."""
    folder = model_dir(name)
    if config_name and (folder / "configs" / f"{config_name}.pbtxt").exists():
        return folder / "configs" / f"{config_name}.pbtxt"
    return folder / "config.pbtxt"


def load_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}
