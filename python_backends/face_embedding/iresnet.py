"""ArcFace IResNet backbones, layer for layer as insightface's recognition/arcface_torch/backbones/iresnet.py.

Module and parameter names match the official code exactly so that an arcface_torch `backbone.pth`
(`torch.save(backbone.module.state_dict(), ...)`) loads strictly. Activation checkpointing and the fp16
autocast flag of the official code only matter for training on GPU and are left out.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import check_state_dict as strict_check
from ..errors import ConfigError, WeightsUnavailable

log = logging.getLogger(__name__)

# Blocks per stage, from the official iresnetNN constructors.
ARCH_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation style block: BN -> conv -> BN -> PReLU -> conv(stride) -> BN, plus the shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """Input [N, 3, 112, 112] RGB in [-1, 1]; output [N, num_features], not normalised."""

    fc_scale = 7 * 7

    def __init__(self, layers: Sequence[int], dropout: float = 0.0, num_features: int = 512):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {list(layers)}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512 * IBasicBlock.expansion, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * IBasicBlock.expansion * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * IBasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * IBasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * IBasicBlock.expansion, eps=1e-05),
            )
        stage = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * IBasicBlock.expansion
        stage += [IBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


def build_iresnet(arch: str, num_features: int = 512) -> IResNet:
    if arch not in ARCH_LAYERS:
        raise ConfigError(f"unknown ArcFace backbone {arch!r}; choose one of {sorted(ARCH_LAYERS)}")
    return IResNet(ARCH_LAYERS[arch], num_features=num_features)


def _stage_depths(keys: Sequence[str]) -> tuple[int, ...]:
    depths = []
    for stage in range(1, 5):
        blocks = {key.split(".")[1] for key in keys if key.startswith(f"layer{stage}.")}
        depths.append(len(blocks))
    return tuple(depths)


def _arch_hint(state_dict: Mapping[str, torch.Tensor]) -> str:
    depths = _stage_depths(list(state_dict))
    names = [name for name, layers in ARCH_LAYERS.items() if layers == depths]
    if names:
        return f"; the checkpoint's stage depths {list(depths)} are those of {names[0]}: set arch to it"
    return f"; the checkpoint's stage depths are {list(depths)}"


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise WeightsUnavailable naming every missing, unexpected or mis-shaped key."""
    strict_check(
        model, state_dict, f"{source} is not an arcface_torch IResNet state dict of this architecture",
        hint=_arch_hint(state_dict),
    )


def load_backbone(model: IResNet, path: Path) -> IResNet:
    """Load an official arcface_torch `backbone.pth` into `model` strictly; returns it in eval mode."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download or a pickled whole model, not a state dict
        raise WeightsUnavailable(f"cannot read {path} as a torch state dict: {exc}") from None
    if not isinstance(state_dict, Mapping):
        raise WeightsUnavailable(f"{path} holds a {type(state_dict).__name__}, not a state dict")
    check_state_dict(model, state_dict, str(path))
    model.load_state_dict(state_dict, strict=True)
    log.info("loaded ArcFace backbone %s", path)
    return model.eval()


def export_onnx(model: IResNet, path: Path, opset: int = 17, input_name: str = "input.1") -> Path:
    """Export `model` to ONNX with a dynamic batch axis.

    The input is named like insightface's w600k_r50.onnx and takes the same [-1, 1] RGB input, so the
    ONNX runner serves both files the same way.
    """
    model = model.eval()
    dummy = torch.zeros(2, 3, 112, 112)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # We pick the legacy exporter on purpose (see below); its deprecation notice is noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[input_name],
            output_names=["embedding"],
            dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and gives plain node names
        )
    return path
