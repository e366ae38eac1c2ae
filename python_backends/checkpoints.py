"""Strict checking of state dicts against a model: every official-checkpoint loader uses this one check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .errors import WeightsUnavailable

# BatchNorm rebuilds a missing step counter itself, and inference never reads it.
BN_COUNTER = (".num_batches_tracked",)
SHOWN = 6


def listed(keys: Sequence[str], shown: int = SHOWN) -> str:
    text = ", ".join(repr(k) for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def state_dict_problems(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], optional_suffixes: tuple = BN_COUNTER
) -> list[str]:
    """What is missing, unexpected or mis-shaped, each naming the keys (empty when the two match)."""
    problems = []
    missing = [k for k in expected if k not in state and not k.endswith(optional_suffixes)]
    if missing:
        problems.append(f"missing key(s) {listed(missing)}")
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        problems.append(f"unexpected key(s) {listed(unexpected)}")
    misshaped = [
        f"{k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if misshaped:
        problems.append("mis-shaped " + "; ".join(misshaped[:SHOWN]))
    return problems


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], what: str, hint: str = "",
    optional_suffixes: tuple = BN_COUNTER,
) -> None:
    """Raise WeightsUnavailable("<what>: <problems><hint>") unless `state` fits `model` key for key.

    Works on models built on the meta device (only names and shapes are compared).
    """
    problems = state_dict_problems(model.state_dict(), state, optional_suffixes)
    if problems:
        raise WeightsUnavailable(f"{what}: " + "; ".join(problems) + hint)
