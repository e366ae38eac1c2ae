"""RetinaFace network of biubug6/Pytorch_Retinaface (MIT), with its module names kept key for key.

Backbones: MobileNet-0.25 (cfg_mnet) and ResNet-50 (cfg_re50). The forward is the official 'test' phase:
image tensor in, (loc [B, P, 4], conf [B, P, 2] softmaxed, landms [B, P, 10]) out, and nothing else, so
that it exports to ONNX as it is; priors, decoding and NMS live in numpy (boxes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .checkpoints import load_strict, read_state_dict
from .resnet import ResNet50Body

LICENCE = "MIT (biubug6/Pytorch_Retinaface)"


@dataclass(frozen=True)
class BackboneConfig:
    name: str  # our name, used in settings and engine names
    checkpoint: str  # official file name under <weights root>/face_detector/
    in_channel: int
    out_channel: int


BACKBONES: dict[str, BackboneConfig] = {
    "resnet50": BackboneConfig("resnet50", "Resnet50_Final.pth", in_channel=256, out_channel=256),
    "mobilenet0.25": BackboneConfig("mobilenet0.25", "mobilenet0.25_Final.pth", in_channel=32, out_channel=64),
}
ANCHORS_PER_CELL = 2


def backbone_config(name: str) -> BackboneConfig:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown RetinaFace backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1Body(nn.Module):
    """MobileNet-0.25 stages 1-3; IntermediateLayerGetter drops the classifier (avg, fc) after stage3."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        return [s1, s2, self.stage3(s2)]


class SSH(nn.Module):
    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        if out_channel % 4:
            raise ValueError("SSH out_channel must be a multiple of 4")
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2, stride=1)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv3x3 = self.conv3X3(x)
        conv5x5_1 = self.conv5X5_1(x)
        conv5x5 = self.conv5X5_2(conv5x5_1)
        conv7x7 = self.conv7x7_3(self.conv7X7_2(conv5x5_1))
        return F.relu(torch.cat([conv3x3, conv5x5, conv7x7], dim=1))


class FPN(nn.Module):
    def __init__(self, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels_list[2], out_channels, stride=1, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        output1 = self.output1(features[0])
        output2 = self.output2(features[1])
        output3 = self.output3(features[2])
        up3 = F.interpolate(output3, size=[output2.size(2), output2.size(3)], mode="nearest")
        output2 = self.merge2(output2 + up3)
        up2 = F.interpolate(output2, size=[output1.size(2), output1.size(3)], mode="nearest")
        output1 = self.merge1(output1 + up2)
        return [output1, output2, output3]


class _Head(nn.Module):
    """1x1 conv predicting `per_anchor` values for each anchor, flattened to [B, H*W*anchors, per_anchor]."""

    def __init__(self, inchannels: int, num_anchors: int, per_anchor: int) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * per_anchor, kernel_size=(1, 1), stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    def __init__(self, backbone: str) -> None:
        super().__init__()
        cfg = backbone_config(backbone)
        self.backbone = cfg.name
        self.body = ResNet50Body() if cfg.name == "resnet50" else MobileNetV1Body()
        in_list = [cfg.in_channel * 2, cfg.in_channel * 4, cfg.in_channel * 8]
        out = cfg.out_channel
        self.fpn = FPN(in_list, out)
        self.ssh1 = SSH(out, out)
        self.ssh2 = SSH(out, out)
        self.ssh3 = SSH(out, out)
        self.ClassHead = nn.ModuleList([_Head(out, ANCHORS_PER_CELL, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out, ANCHORS_PER_CELL, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out, ANCHORS_PER_CELL, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landms = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return loc, F.softmax(conf, dim=-1), landms


def load_retinaface(path: Path, backbone: str) -> RetinaFace:
    """The network with an official checkpoint loaded (strict; `module.` prefixes accepted), in eval mode."""
    net = RetinaFace(backbone)
    load_strict(net, read_state_dict(path), f"checkpoint {path} (RetinaFace {backbone})")
    return net.eval()
