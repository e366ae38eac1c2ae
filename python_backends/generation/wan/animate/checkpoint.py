"""Strict loader (and writer) for the official Wan2.2-Animate-14B transformer folder layout.

The released folder (Wan-AI/Wan2.2-Animate-14B) holds, next to the T5, VAE, CLIP, relighting LoRA and
preprocessing files:

    config.json                                         diffusers ConfigMixin file, _class_name WanAnimateModel
    diffusion_pytorch_model.safetensors.index.json      {"metadata": {"total_size": N}, "weight_map": {key: shard}}
    diffusion_pytorch_model-00001-of-00004.safetensors  ... the shards (bf16)

which wan/animate.py reads with `WanAnimateModel.from_pretrained(checkpoint_dir)`. The index and shard handling
of checkpoint.py (the S2V loader) is reused; only the config and the module tree differ. Every key the model
needs (parameters and the motion encoder's blur-kernel buffers) must be present with its exact shape, and no
other key may be present, or a CheckpointError names the keys and the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from ....errors import ConfigError
from ..common.checkpoint import CONFIG_FILE, INDEX_FILE, CheckpointError, read_tensors, write_shards
from .configs import WanAnimateTransformerConfig, from_animate_config, to_animate_config
from .model import WanAnimateTransformer, default_dtype, meta_animate_model

log = logging.getLogger(__name__)

OFFICIAL_SHARDS = 4


def read_animate_config(folder: Path | str) -> WanAnimateTransformerConfig:
    """config.json of the folder mapped onto WanAnimateTransformerConfig."""
    path = Path(folder) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: point at the Wan2.2-Animate-14B folder (it holds config.json, "
                              f"{INDEX_FILE} and the shards)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    try:
        return from_animate_config(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_animate_transformer(folder: Path | str, device: torch.device | str = "cpu",
                             dtype: torch.dtype | None = None) -> WanAnimateTransformer:
    """Load the official transformer folder strictly onto `device` in `dtype` (bf16 on GPU, fp32 on CPU)."""
    folder = Path(folder)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    config = read_animate_config(folder)
    model = meta_animate_model(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = read_tensors(folder, expected, device, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded Wan Animate transformer from %s: %d tensors, %s on %s", folder, len(state), dtype, device)
    return model.eval().requires_grad_(False)


def write_animate_checkpoint(folder: Path | str, config: WanAnimateTransformerConfig,
                             state_dict: Mapping[str, torch.Tensor], num_shards: int = OFFICIAL_SHARDS,
                             dtype: torch.dtype | None = None) -> Path:
    """Write config.json, the shards and the index exactly in the official layout; returns the folder.

    Keys go to shards in sorted order, split by size (as huggingface sharding does), with the safetensors
    metadata {"format": "pt"} that diffusers writes; `dtype` (e.g. bf16, as released) casts every tensor.
    """
    return write_shards(folder, state_dict, num_shards, to_animate_config(config), dtype)
