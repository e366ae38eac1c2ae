"""Strict loading of the official HRNet face-alignment checkpoints (HR18-WFLW.pth, HR18-300W.pth).

The released files are bare state dicts of the un-wrapped network (the official tools/test.py loads them
with `model.module.load_state_dict`); checkpoints written by the official training loop wrap the weights
as {"state_dict": ...} with the "module." prefix nn.DataParallel adds. Both are accepted. A file that is
not a state dict of tensors (e.g. a pickled nn.Module such as the training loop's model_best.pth) is
refused: it could only be read by unpickling arbitrary code. Every key and shape must match the network;
the error names the offending keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints import check_state_dict
from ..errors import WeightsUnavailable
from .hrnet import HEAD_WEIGHT, HighResolutionNet, HRNetConfig

logger = logging.getLogger(__name__)

# BatchNorm's step counter is training state; files saved by torch < 0.4.1 do not carry it.
PREFIX = "module."


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint, unwrapped from {"state_dict": ...} and "module." prefixes."""
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, HTML page saved as .pth, pickled module, ...
        raise WeightsUnavailable(
            f"cannot read HRNet checkpoint {path} as a state dict ({exc.__class__.__name__}: {exc}); "
            "use the official HR18-WFLW.pth / HR18-300W.pth, or save `model.state_dict()` of your own model"
        ) from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if (
        not isinstance(data, Mapping)
        or not data
        or not all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise WeightsUnavailable(f"HRNet checkpoint {path} is not a state dict of tensors")
    return {(k[len(PREFIX) :] if k.startswith(PREFIX) else k): v for k, v in data.items()}


def load_strict(net: HighResolutionNet, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `net`, refusing missing, unexpected or mis-shaped keys (the message names them)."""
    expected = net.state_dict()
    check_state_dict(net, state, f"{source} is not an HRNet-W18 face-alignment checkpoint")
    net.load_state_dict({k: state.get(k, v) for k, v in expected.items()}, strict=True)


def num_joints_of(state: Mapping[str, torch.Tensor], source: str) -> int:
    """Landmarks the checkpoint predicts (98 for WFLW, 68 for 300W), read from the last head conv."""
    weight = state.get(HEAD_WEIGHT)
    if weight is None or weight.dim() != 4:
        raise WeightsUnavailable(
            f"{source} has no 4-d {HEAD_WEIGHT!r}: not an HRNet face-alignment checkpoint"
        )
    return int(weight.shape[0])


def load_hrnet(path: Path, config: HRNetConfig | None = None) -> HighResolutionNet:
    """Build the W18 network for the checkpoint at `path` and load it strictly (eval mode, CPU)."""
    state = read_state_dict(path)
    config = config or HRNetConfig.w18(num_joints_of(state, str(path)))
    net = HighResolutionNet(config)
    load_strict(net, state, str(path))
    logger.info("loaded HRNet (%d landmarks) from %s", config.num_joints, path)
    return net.eval()
