"""Strict loading of official state dicts: every key and shape must match the network we built.

torch's own strict load reports problems in a long message after the fact; here a checkpoint that does
not belong to the architecture is refused before anything is copied, with the offending keys named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import check_state_dict
from ..errors import WeightsUnavailable

logger = logging.getLogger(__name__)

# BatchNorm's step counter is training state; checkpoints saved by old torch versions lack it.


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from {"state_dict": ...} as the official load_model does."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, an HTML error page saved as .pth, ...
        raise WeightsUnavailable(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsUnavailable(f"checkpoint {path} is not a state dict of tensors")
    return dict(data)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop the prefix nn.DataParallel adds to every key (official checkpoints may carry it)."""
    return {(key[len(prefix) :] if key.startswith(prefix) else key): value for key, value in state.items()}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `module`, refusing missing, unexpected or mis-shaped keys (message names them)."""
    state = strip_prefix(state)
    expected = module.state_dict()
    check_state_dict(module, state, f"{source} does not match the {type(module).__name__} architecture")
    full = {k: state.get(k, v) for k, v in expected.items()}
    module.load_state_dict(full, strict=True)
    logger.debug("loaded %d tensors from %s", len(state), source)
