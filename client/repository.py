"""Read the checked-in Triton model configs (config.pbtxt and the --model-config-name variants), and copy the
repositories with edited configs for a server that must serve something the checkout does not say."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Collection
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .server import PROJECT_ROOT

REPOSITORIES = (PROJECT_ROOT / "model_repository", PROJECT_ROOT / "ensembles")

ConfigEdit = Callable[[str, str], str]
"""(model name, text of the config Triton will serve) -> the text to serve instead."""


def model_dir(name: str) -> Path:
    for repository in REPOSITORIES:
        if (repository / name / "config.pbtxt").exists():
            return repository / name
    raise FileNotFoundError(f"no model {name!r} in {', '.join(str(r) for r in REPOSITORIES)}")


def served_config(folder: Path, config_name: str | None = None) -> Path:
    """Triton's rule for a model folder: configs/<config_name>.pbtxt if given and present, else config.pbtxt."""
    if config_name and (folder / "configs" / f"{config_name}.pbtxt").exists():
        return folder / "configs" / f"{config_name}.pbtxt"
    return folder / "config.pbtxt"


def config_path(name: str, config_name: str | None = None) -> Path:
    return served_config(model_dir(name), config_name)


def load_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def copy_repositories(target: Path, edit: ConfigEdit, config_name: str | None = None,
                      models: Collection[str] | None = None, variants: bool = True) -> tuple[Path, ...]:
    """Copies of the checked-in repositories under `target` (one folder each, named as the original), in which
    every model's served config (`served_config` with `config_name`, the file `--model-config-name` will make
    Triton read) is replaced by `edit(model, text)`; the checkout is never touched. `models` limits the copy to
    those models (and the repositories holding them); `variants=False` leaves every configs/ folder out, so the
    copy serves its config.pbtxt files whatever --model-config-name says. Returns the copies, for
    ServerOptions.repositories."""
    if config_name and not variants:
        raise ValueError(f"config_name {config_name!r} selects a variant, and variants=False leaves them out")
    ignore = shutil.ignore_patterns("__pycache__", *(() if variants else ("configs",)))
    wanted = set(models) if models is not None else None
    if wanted is not None and (unknown := wanted - {d.name for r in REPOSITORIES for d in _models(r)}):
        raise FileNotFoundError(f"no model {', '.join(sorted(unknown))} in "
                                f"{', '.join(str(r) for r in REPOSITORIES)}")
    copies = []
    for repository in REPOSITORIES:
        chosen = [d for d in _models(repository) if wanted is None or d.name in wanted]
        if not chosen:
            continue
        copy = target / repository.name
        if wanted is None:
            shutil.copytree(repository, copy, ignore=ignore)
        for folder in chosen:
            if wanted is not None:
                shutil.copytree(folder, copy / folder.name, ignore=ignore)
            config = served_config(copy / folder.name, config_name)
            text = config.read_text()
            edited = edit(folder.name, text)
            if edited != text:
                config.write_text(edited)
        copies.append(copy)
    return tuple(copies)


def _models(repository: Path) -> list[Path]:
    return sorted(d for d in repository.iterdir() if (d / "config.pbtxt").exists())


KINDS = ("KIND_CPU", "KIND_GPU")


def set_instance_kind(config: str, kind: str) -> str:
    """A config text with every `kind: KIND_CPU` / `kind: KIND_GPU` of the other kind made `kind` (instance
    groups, and comments that quote one, alike); nothing else changes."""
    if kind not in KINDS:
        raise ValueError(f"instance kind {kind!r}: use {' or '.join(KINDS)}")
    (other,) = set(KINDS) - {kind}
    return config.replace(f"kind: {other}", f"kind: {kind}")


def set_parameter(config: str, key: str, value: str) -> str:
    """A config text with its `parameters` entry `key` set to `value`; KeyError when the config has none (a
    renamed parameter must fail loudly, not be silently ignored)."""
    pattern = re.compile(r'(\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")[^"]*(")')
    if not pattern.search(config):
        raise KeyError(f"config has no parameter {key!r}")
    return pattern.sub(lambda m: m.group(1) + value + m.group(2), config)


def profile_on_cpu(root: Path, profile: str) -> tuple[Path, ...]:
    """The repositories copied under `root`, the profile's variants moved to the CPU (Triton refuses to load a
    KIND_GPU instance without a GPU), nothing else changed; their paths."""
    if not any(path for repository in REPOSITORIES for path in repository.glob(f"*/configs/{profile}.pbtxt")):
        raise ValueError(f"no model has a configs/{profile}.pbtxt: --model-config-name {profile} would serve the "
                         "defaults")
    return copy_repositories(root, lambda _model, config: set_instance_kind(config, "KIND_CPU"), profile)


def gpu_present() -> bool:
    """An NVIDIA GPU this process can use (nvidia-smi lists one)."""
    if not shutil.which("nvidia-smi"):
        return False
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return done.returncode == 0 and "GPU" in done.stdout
