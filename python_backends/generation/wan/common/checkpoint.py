"""Strict loader (and writer) for the official Wan2.2-S2V-14B transformer folder layout.

The released folder (Wan-AI/Wan2.2-S2V-14B) holds, next to the T5, VAE and wav2vec2 files:

    config.json                                         diffusers ConfigMixin file, _class_name WanModel_S2V
    diffusion_pytorch_model.safetensors.index.json      {"metadata": {"total_size": N}, "weight_map": {key: shard}}
    diffusion_pytorch_model-00001-of-00004.safetensors  ... the shards (bf16)

which wan/speech2video.py reads with `WanModel_S2V.from_pretrained(checkpoint_dir)`. Here the config is mapped
onto our dataclass, the module tree is built on the meta device, and each tensor is read on its own with
safetensors' safe_open (straight onto the target device), cast, and assigned. Any key the model needs but the
checkpoint lacks, any key the checkpoint has but the model does not, or any shape that differs is refused
with a CheckpointError naming the first keys and the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ....errors import ConfigError, WeightsUnavailable
from ..s2v.model import WanS2VTransformer, default_dtype, meta_model
from .configs import WanS2VTransformerConfig, from_diffusers_config, to_diffusers_config

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_FILE = "diffusion_pytorch_model.safetensors"
SHOWN_KEYS = 5


class CheckpointError(WeightsUnavailable):
    """The transformer folder does not match the model it describes."""


def shard_name(index: int, count: int) -> str:
    """Official (diffusers) shard file name, 1-based: diffusion_pytorch_model-00001-of-00004.safetensors."""
    return f"diffusion_pytorch_model-{index:05d}-of-{count:05d}.safetensors"


def _first(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (and {len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def read_config(folder: Path) -> WanS2VTransformerConfig:
    """config.json of the folder mapped onto WanS2VTransformerConfig."""
    path = Path(folder) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: point at the Wan2.2-S2V-14B folder (it holds config.json, "
                              f"{INDEX_FILE} and the shards)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    try:
        return from_diffusers_config(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_weight_map(folder: Path) -> tuple[dict[str, str], Path]:
    """key -> shard file name from the index (or every key of a single unsharded file), and that source file."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a safetensors index (needs a 'weight_map'): {exc}") from None
        return dict(weight_map), index
    single = folder / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as handle:
            return {key: SINGLE_FILE for key in handle.keys()}, single
    raise CheckpointError(f"{folder} has neither {INDEX_FILE} nor {SINGLE_FILE}")


def _check_keys(expected: Mapping[str, tuple[int, ...]], found: Iterable[str], source: Path) -> None:
    found = set(found)
    missing = set(expected) - found
    unexpected = found - set(expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) the model needs are missing: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) the model does not have: {_first(unexpected)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def read_tensors(folder: Path, expected: Mapping[str, tuple[int, ...]], device: torch.device,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded (or single-file) safetensors folder, checked key by key against `expected`."""
    weight_map, source = read_weight_map(folder)
    _check_keys(expected, weight_map, source)
    by_file: dict[str, list[str]] = {}
    for key, file in weight_map.items():
        by_file.setdefault(file, []).append(key)
    state: dict[str, torch.Tensor] = {}
    for file, keys in sorted(by_file.items()):
        path = folder / file
        if not path.is_file():
            raise CheckpointError(f"{source} lists {len(keys)} key(s) in {file}, which is missing "
                                  f"(e.g. {_first(keys)})")
        with safe_open(path, framework="pt", device=str(device)) as handle:
            present = set(handle.keys())
            absent = set(keys) - present
            if absent:
                raise CheckpointError(f"{path}: {len(absent)} key(s) listed in {source.name} are not in the "
                                      f"file: {_first(absent)}")
            extra = present - set(keys)
            if extra:
                raise CheckpointError(f"{path}: {len(extra)} key(s) not listed in {source.name}: {_first(extra)}")
            for key in keys:
                shape = tuple(handle.get_slice(key).get_shape())
                if shape != expected[key]:
                    raise CheckpointError(f"{path}: {key} has shape {list(shape)}, the model needs "
                                          f"{list(expected[key])}")
                state[key] = handle.get_tensor(key).to(dtype=dtype)
    return state


def load_s2v_transformer(folder: Path | str, device: torch.device | str = "cpu",
                         dtype: torch.dtype | None = None) -> WanS2VTransformer:
    """Load the official transformer folder strictly onto `device` in `dtype` (bf16 on GPU, fp32 on CPU)."""
    folder = Path(folder)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    config = read_config(folder)
    model = meta_model(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = read_tensors(folder, expected, device, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded Wan S2V transformer from %s: %d tensors, %s on %s", folder, len(state), dtype, device)
    return model.eval().requires_grad_(False)


def write_sharded_checkpoint(folder: Path | str, config: WanS2VTransformerConfig,
                             state_dict: Mapping[str, torch.Tensor], num_shards: int = 2) -> Path:
    """Write config.json, the shards and the index exactly in the official layout; returns the folder.

    Keys go to shards in sorted order, split by size (as huggingface sharding does), with the safetensors
    metadata {"format": "pt"} that diffusers writes.
    """
    return write_shards(folder, state_dict, num_shards, to_diffusers_config(config))


def write_shards(folder: Path | str, state_dict: Mapping[str, torch.Tensor], num_shards: int, config: dict,
                 dtype: torch.dtype | None = None) -> Path:
    """The official folder layout for any Wan DiT: size-balanced safetensors shards, the index, config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to(dtype or value.dtype).contiguous().cpu()
               for key, value in sorted(state_dict.items())}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    budget = -(-total // num_shards)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > budget and len(shards) < num_shards:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) != num_shards:
        raise ValueError(f"cannot split {len(tensors)} tensors into {num_shards} shards")
    weight_map: dict[str, str] = {}
    for index, shard in enumerate(shards, start=1):
        name = shard_name(index, num_shards)
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index_doc, indent=2) + "\n", encoding="utf-8")
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def check_release_layout(folder: Path, entries: Mapping[str, str], release: str, repo: str, tiny_hint: str) -> None:
    """Raise WeightsUnavailable naming every entry of an official release folder that `folder` lacks.

    `entries` maps relative paths to what they are; the DiT's shard index (or single file) is always needed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsUnavailable(f"{release} release folder {folder} does not exist")
    missing = [f"{name} ({what})" for name, what in entries.items() if not (folder / name).exists()]
    if not (folder / INDEX_FILE).is_file() and not (folder / SINGLE_FILE).is_file():
        missing.append(f"{INDEX_FILE} (the DiT's shard index) or {SINGLE_FILE}")
    if missing:
        raise WeightsUnavailable(f"{release} release folder {folder} is incomplete: missing {'; '.join(missing)}. "
                                 f"Download the whole {repo} folder (or write a tiny one with {tiny_hint})")


def shared_release_entries(task) -> dict[str, str]:
    """Entries every Wan2.2 release folder has besides the DiT shards (S2V adds wav2vec2, Animate CLIP)."""
    return {
        task.transformer_config_file: "the DiT's config.json",
        task.vae_checkpoint: "the Wan 2.1 VAE",
        task.t5_checkpoint: "the umT5-XXL text encoder",
        task.t5_tokenizer: "the umT5 tokenizer folder",
    }
