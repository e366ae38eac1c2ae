"""Wan-Animate's relighting LoRA (replacement mode), merged into the transformer's weights.

Officially (wan/animate.py, use_relighting_lora=True) a PEFT LoRA of rank 128, alpha 128 is added to every
nn.Linear whose module name contains "blocks" but neither "face" nor "modulation" (animate_utils.get_loraconfig):
the self-attention q/k/v/o, the cross-attention q/k/v/o/k_img/v_img and ffn.0/ffn.2 of each DiT block, and the
weights come from `relighting_lora.ckpt` via `torch.load(path)["state_dict"]` + peft's set_peft_model_state_dict.
That call only matches keys named `<module>.lora_A.weight` / `<module>.lora_B.weight` relative to the model,
so this is the layout read here (a `base_model.model.` or `diffusion_model.` prefix and a `.default` adapter
segment, as PEFT folders such as `relighting_lora/adapter_model.safetensors` may carry, are tolerated).
Merging W += (alpha / r) B A once gives the same outputs as PEFT's unmerged forward, at no run-time cost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from .checkpoint import CheckpointError, _first

log = logging.getLogger(__name__)

OFFICIAL_LORA_ALPHA = 128
_LORA_KEY = re.compile(r"^(?:base_model\.model\.|diffusion_model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])"
                       r"(?:\.default)?\.weight$")


def lora_target_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The modules the official LoRA config targets (get_loraconfig), by name."""
    return {name: module for name, module in model.named_modules()
            if "blocks" in name and "face" not in name and "modulation" not in name
            and isinstance(module, nn.Linear)}


def read_lora_state(path: Path | str) -> dict[str, torch.Tensor]:
    """`relighting_lora.ckpt` ({"state_dict": {...}}, as the official code reads it) or a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the relighting LoRA is needed for replacement mode")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds no LoRA state dict (expected {{'state_dict': {{...}}}})")
    return dict(state)


def _pairs(state: Mapping[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    strange = []
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if match is None:
            strange.append(key)
            continue
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    if strange:
        raise CheckpointError(f"{source}: {len(strange)} key(s) are not LoRA A/B weights: {_first(strange)}")
    return pairs


@torch.no_grad()
def merge_lora_(model: nn.Module, state: Mapping[str, torch.Tensor], alpha: float = OFFICIAL_LORA_ALPHA,
                source: str = "LoRA") -> nn.Module:
    """W += (alpha / r) B A for every target module, strictly: every target needs its pair, nothing else allowed."""
    targets = lora_target_modules(model)
    pairs = _pairs(state, source)
    unknown = set(pairs) - set(targets)
    if unknown:
        raise CheckpointError(f"{source}: LoRA weights for module(s) the official LoRA does not target: "
                              f"{_first(unknown)}")
    missing = set(targets) - set(pairs)
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} target module(s) have no LoRA weights: {_first(missing)}")
    for name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{source}: {name} has lora_{''.join(sorted(pair))} but not both A and B")
        layer = targets[name]
        a, b = pair["A"], pair["B"]
        out_dim, in_dim = layer.weight.shape
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_dim or b.shape[0] != out_dim or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{source}: {name}.lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit a "
                                  f"[{out_dim}, {in_dim}] layer")
        delta = (b.float() @ a.float()) * (alpha / a.shape[0])
        layer.weight.copy_((layer.weight.float() + delta.to(layer.weight.device)).to(layer.weight.dtype))
    log.info("merged %s into %d layers (alpha %s)", source, len(pairs), alpha)
    return model
