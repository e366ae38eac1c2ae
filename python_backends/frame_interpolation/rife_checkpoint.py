"""RIFE 4.26's released checkpoint: train_log/flownet.pkl of RIFEv4.26_0921.zip (hzwer, MIT).

Layout: a torch-pickled state dict of the IFNet as trained under DistributedDataParallel, so every key carries
a `module.` prefix (`module.block0.conv0.0.0.weight`, ..., `module.encode.cnn3.bias`); the official loader
(RIFE_HDv3.Model.load_model with rank -1) strips it and loads non-strictly. The 4.26 file also holds the
training-only distillation teacher and time predictor (`module.teacher.*`, `module.caltime.*`: loading the
file strictly lists them as unexpected, ComfyUI-Frame-Interpolation issue 138), which inference never runs.

Here the prefix is stripped when present (a converted file without it loads too), the two training-only
groups are dropped, and everything else must match the IFNet key for key and shape for shape: a missing,
unexpected or mis-shaped key (e.g. another RIFE version's file) is refused with a message naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints import check_state_dict
from ..errors import WeightsUnavailable
from .rife import IFNet, RifeInterpolator

FILE_NAME = "flownet.pkl"
PREFIX = "module."
TRAINING_ONLY = ("teacher.", "caltime.")
RELEASE = "RIFE 4.26 (RIFEv4.26_0921.zip from hzwer/Practical-RIFE, the release LightX2V downloads)"


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The IFNet state of a flownet.pkl: prefix stripped, training-only keys dropped, nothing checked yet."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise WeightsUnavailable(f"cannot read the RIFE checkpoint {path}: {exc}; put the flownet.pkl of "
                                 f"{RELEASE} there") from None
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsUnavailable(f"the RIFE checkpoint {path} is not a state dict of tensors; put the flownet.pkl "
                                 f"of {RELEASE} there")
    state = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in raw.items()}
    return {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY)}


def load_rife(path: Path | str, device: torch.device | str = "cpu", scale: float = 1.0) -> RifeInterpolator:
    """RIFE interpolator from a released flownet.pkl, strictly checked, on `device` in float32."""
    path = Path(path)
    state = read_state(path)
    with torch.device("meta"):
        skeleton = IFNet()
    check_state_dict(skeleton, state, f"RIFE checkpoint {path}",
                     hint=f"; this loader takes the flownet.pkl of {RELEASE} (other RIFE versions differ)")
    net = IFNet()
    net.load_state_dict(state)
    return RifeInterpolator(net.to(device=device, dtype=torch.float32), scale)


def write_random_checkpoint(path: Path | str, seed: int = 0, training_only: bool = True) -> Path:
    """A flownet.pkl in the released layout with random weights (for tests and cost measurements).

    With `training_only`, teacher / caltime keys are written too, as in the release; their shapes here are
    placeholders (the loader drops them unread)."""
    torch.manual_seed(seed)
    net = IFNet()
    for parameter in net.parameters():  # finite through 45 convs, yet flows of a pixel or more
        torch.nn.init.normal_(parameter, std=0.05)
    state = {PREFIX + k: v for k, v in net.state_dict().items()}
    if training_only:
        state[PREFIX + "teacher.conv0.0.0.weight"] = torch.zeros(32, 31, 3, 3)
        state[PREFIX + "caltime.0.weight"] = torch.zeros(8, 25, 3, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
