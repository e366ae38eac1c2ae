"""client/repository.py's copies of the repositories with edited configs (the GPU profile served on the CPU in
CI, the served GPU benchmarks' parameters): each model's served config, and only that, goes through the edit."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from client.repository import (
    REPOSITORIES,
    copy_repositories,
    load_config,
    parameters,
    served_config,
    set_instance_kind,
    set_parameter,
)


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _models(repository: Path) -> list[str]:
    return sorted(d.name for d in repository.iterdir() if (d / "config.pbtxt").exists())


@pytest.mark.parametrize("config_name", [None, "gpu"])
def test_each_models_served_config_and_nothing_else_is_edited(tmp_path: Path, config_name: str | None) -> None:
    seen: dict[str, str] = {}

    def edit(model: str, config: str) -> str:
        seen[model] = config
        return config + f"\n# edited for {model}\n"

    copies = copy_repositories(tmp_path, edit, config_name)
    assert [c.name for c in copies] == [r.name for r in REPOSITORIES]
    assert sorted(seen) == sorted(m for r in REPOSITORIES for m in _models(r))
    for original, copy in zip(REPOSITORIES, copies):
        assert _files(copy) == _files(original)
        for model in _models(original):
            served = served_config(original / model, config_name)
            assert seen[model] == served.read_text()
            edited = copy / served.relative_to(original)
            assert edited.read_text() == served.read_text() + f"\n# edited for {model}\n"
        changed = {p for p in _files(original) if not filecmp.cmp(original / p, copy / p, shallow=False)}
        assert changed == {served_config(original / m, config_name).relative_to(original) for m in _models(original)}
    if config_name:  # the variant is what Triton serves: the default config stays as checked in
        assert (copies[0] / "video_generator" / "config.pbtxt").read_text() == (
            REPOSITORIES[0] / "video_generator" / "config.pbtxt").read_text()


def test_models_limit_the_copy_and_unknown_ones_are_named(tmp_path: Path) -> None:
    (copy,) = copy_repositories(tmp_path / "one", lambda _m, c: set_instance_kind(c, "KIND_GPU"),
                                models=("video_generator",))
    assert copy == tmp_path / "one" / "model_repository" and _models(copy) == ["video_generator"]
    groups = load_config(copy / "video_generator" / "config.pbtxt").instance_group
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in groups] == ["KIND_GPU"]
    with pytest.raises(FileNotFoundError, match="no model nonexistent_model"):
        copy_repositories(tmp_path / "two", lambda _m, c: c, models=("video_generator", "nonexistent_model"))


def test_instance_kind_moves_both_ways_and_rejects_other_kinds() -> None:
    config = 'instance_group [ { count: 1 kind: KIND_CPU } ]\nparameters [ { key: "k" value: { string_value: "v" } } ]'
    on_gpu = set_instance_kind(config, "KIND_GPU")
    assert on_gpu == config.replace("KIND_CPU", "KIND_GPU")
    assert set_instance_kind(on_gpu, "KIND_CPU") == config
    assert set_instance_kind(config, "KIND_CPU") == config
    with pytest.raises(ValueError, match="KIND_MODEL"):
        set_instance_kind(config, "KIND_MODEL")


def test_set_parameter_changes_one_value_and_refuses_a_missing_key(tmp_path: Path) -> None:
    path = served_config(REPOSITORIES[1] / "talking_head")
    text = set_parameter(path.read_text(), "max_rerolls", "0")
    edited = tmp_path / "config.pbtxt"
    edited.write_text(text)
    before, after = parameters(load_config(path)), parameters(load_config(edited))
    assert after == {**before, "max_rerolls": "0"} and before["max_rerolls"] != "0"
    with pytest.raises(KeyError, match="no_such_parameter"):
        set_parameter(text, "no_such_parameter", "1")


def test_a_copy_without_variants_serves_only_the_default_configs(tmp_path: Path) -> None:
    copies = copy_repositories(tmp_path, lambda _m, c: c, variants=False)
    assert not [p for c in copies for p in c.glob("*/configs")]
    assert all((c / m / "config.pbtxt").is_file() for r, c in zip(REPOSITORIES, copies) for m in _models(r))
    with pytest.raises(ValueError, match="variants=False"):
        copy_repositories(tmp_path / "other", lambda _m, c: c, "gpu", variants=False)
