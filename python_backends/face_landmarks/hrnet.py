"""HRNetV2-W18 face alignment network, laid out exactly like HRNet/HRNet-Facial-Landmark-Detection.

Module and attribute names follow the official lib/models/hrnet.py so that the released checkpoints
(HR18-WFLW.pth: 98 points, HR18-300W.pth: 68 points) load key for key: stem conv1/bn1/conv2/bn2, layer1
(4 Bottlenecks), transition1..3, stage2..4 (HighResolutionModules with `branches` and `fuse_layers`) and
the `head` (1x1 conv, BN, ReLU, 1x1 conv to one heatmap per landmark). The forward maps a batch of
normalised 256x256 RGB crops to 64x64 heatmaps and uses only ONNX-exportable ops.

The stage layout (branches, blocks, modules) is the W18 experiment config; `HRNetConfig` only lets the
widths shrink, so a reduced network for tests keeps every official key name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

BN_MOMENTUM = 0.01
HEAD_WEIGHT = "head.3.weight"  # the last conv; its first dimension is the number of landmarks


@dataclass(frozen=True)
class HRNetConfig:
    """face_alignment_{wflw,300w}_hrnet_w18.yaml: STAGE2..4 with 4 BASIC blocks per branch, SUM fusion."""

    num_joints: int = 98
    stem_width: int = 64  # official: 64 (layer1 outputs 4x this)
    widths: tuple[int, int, int, int] = (18, 36, 72, 144)  # NUM_CHANNELS of the four branches
    num_blocks: int = 4
    stage_modules: tuple[int, int, int] = (1, 4, 3)  # NUM_MODULES of stages 2, 3, 4
    final_conv_kernel: int = 1

    @staticmethod
    def w18(num_joints: int) -> HRNetConfig:
        return HRNetConfig(num_joints=num_joints)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every branch receives the sum of all (resampled) branches."""

    def __init__(self, in_channels: Sequence[int], channels: Sequence[int], num_blocks: int):
        super().__init__()
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(
            self._branch(in_ch, ch, num_blocks) for in_ch, ch in zip(in_channels, channels)
        )
        self.out_channels = list(channels)
        self.fuse_layers = self._fuse_layers(self.out_channels)
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _branch(in_ch: int, ch: int, num_blocks: int) -> nn.Sequential:
        downsample = None
        if in_ch != ch * BasicBlock.expansion:
            downsample = nn.Sequential(nn.Conv2d(in_ch, ch, kernel_size=1, bias=False), _bn(ch))
        blocks = [BasicBlock(in_ch, ch, 1, downsample)]
        blocks += [BasicBlock(ch, ch) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    @staticmethod
    def _fuse_layers(channels: list[int]) -> nn.ModuleList:
        # Entry [i][j] brings branch j to branch i: None on the diagonal, a 1x1 conv (upsampled in forward)
        # from a lower resolution, a chain of stride-2 3x3 convs from a higher one (ReLU between steps).
        rows = []
        for i, out_ch in enumerate(channels):
            row: list[nn.Module | None] = []
            for j, in_ch in enumerate(channels):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False), _bn(out_ch)))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        width = out_ch if last else in_ch
                        step = [nn.Conv2d(in_ch, width, 3, 2, 1, bias=False), _bn(width)]
                        if not last:
                            step.append(nn.ReLU(inplace=True))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        return nn.ModuleList(rows)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    size = (xs[i].shape[2], xs[i].shape[3])
                    y = y + F.interpolate(row[j](xs[j]), size=size, mode="bilinear", align_corners=False)
                else:
                    y = y + row[j](xs[j])
            fused.append(self.relu(y))
        return fused


class HighResolutionNet(nn.Module):
    """HRNetV2 for face alignment: [N, 3, 256, 256] normalised RGB -> [N, num_joints, 64, 64] heatmaps."""

    def __init__(self, config: HRNetConfig = HRNetConfig()):
        super().__init__()
        self.config = config
        stem = config.stem_width
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(stem)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer1(stem)

        widths = list(config.widths)
        previous = [stem * Bottleneck.expansion]
        for index, branches in enumerate((2, 3, 4)):
            current = widths[:branches]
            setattr(self, f"transition{index + 1}", self._transition(previous, current))
            modules = [
                HighResolutionModule(current, current, config.num_blocks)
                for _ in range(config.stage_modules[index])
            ]
            setattr(self, f"stage{index + 2}", nn.Sequential(*modules))
            previous = current

        total = sum(widths)
        padding = 1 if config.final_conv_kernel == 3 else 0
        self.head = nn.Sequential(
            nn.Conv2d(total, total, kernel_size=1, stride=1, padding=padding),
            _bn(total),
            nn.ReLU(inplace=True),
            nn.Conv2d(
                total, config.num_joints, kernel_size=config.final_conv_kernel, stride=1, padding=padding
            ),
        )

    @staticmethod
    def _layer1(stem: int) -> nn.Sequential:
        out = stem * Bottleneck.expansion
        downsample = nn.Sequential(nn.Conv2d(stem, out, kernel_size=1, stride=1, bias=False), _bn(out))
        blocks = [Bottleneck(stem, stem, 1, downsample)] + [Bottleneck(out, stem) for _ in range(3)]
        return nn.Sequential(*blocks)

    @staticmethod
    def _transition(previous: list[int], current: list[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, width in enumerate(current):
            if i < len(previous):
                if width != previous[i]:
                    layers.append(
                        nn.Sequential(
                            nn.Conv2d(previous[i], width, 3, 1, 1, bias=False), _bn(width), nn.ReLU(True)
                        )
                    )
                else:
                    layers.append(None)
            else:
                # A new, lower-resolution branch grown from the lowest existing one.
                steps = []
                for j in range(i + 1 - len(previous)):
                    in_ch = previous[-1]
                    out_ch = width if j == i - len(previous) else in_ch
                    steps.append(
                        nn.Sequential(
                            nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), _bn(out_ch), nn.ReLU(True)
                        )
                    )
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    @staticmethod
    def _enter(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        # As the official forward: every transition that exists is fed the lowest-resolution branch.
        return [ys[i] if layer is None else layer(ys[-1]) for i, layer in enumerate(transition)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = [x if layer is None else layer(x) for layer in self.transition1]
        ys = self.stage2(ys)
        ys = self.stage3(self._enter(self.transition2, ys))
        ys = self.stage4(self._enter(self.transition3, ys))
        size = (ys[0].shape[2], ys[0].shape[3])
        ups = [ys[0]] + [F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in ys[1:]]
        return self.head(torch.cat(ups, 1))
