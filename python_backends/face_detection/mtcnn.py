"""MTCNN (Zhang et al. 2016) with the P-, R- and O-Net weights shipped in the facenet-pytorch wheel (MIT).

Layer names and the detection algorithm follow timesler/facenet-pytorch (models/mtcnn.py and
models/utils/detect_face.py): RGB input scaled as (x - 127.5) / 128, an image pyramid through P-Net,
box regression + square-ing + NMS between stages, 5 landmarks from O-Net. Images of a batch are
processed together: one P-Net forward per pyramid level and one R-/O-Net forward for all candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsUnavailable
from ..weights import package_path
from .boxes import batched_nms
from .checkpoints import load_strict, read_state_dict
from .faces import Faces

logger = logging.getLogger(__name__)

LICENCE = "MIT (timesler/facenet-pytorch)"
PACKAGE = "facenet_pytorch"
FILES = {"pnet": "data/pnet.pt", "rnet": "data/rnet.pt", "onet": "data/onet.pt"}
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_FACTOR = 0.709
_CHUNK = 512  # R-/O-Net candidates per forward, bounds memory as facenet's fixed_batch_process
# With an expected face size (face_detector's expected_face_px) the pyramid keeps only the levels whose 12-px window
# covers faces from this fraction of it up: the largest, costliest levels, which look for the smallest faces, go.
# The kept levels are the old ones, so a face of the expected size (or half of it) meets the same P-Net windows.
EXPECTED_FRACTION = 0.5


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The dense weights come from a Caffe model that stored images transposed (W before H).
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


def shipped_paths() -> dict[str, Path] | None:
    """The three state dicts inside the installed facenet-pytorch wheel, or None if any is absent."""
    paths = {name: package_path(PACKAGE, relative) for name, relative in FILES.items()}
    if any(path is None for path in paths.values()):
        return None
    return paths  # type: ignore[return-value]


def load_nets(paths: dict[str, Path]) -> tuple[PNet, RNet, ONet]:
    nets = (PNet(), RNet(), ONet())
    for name, net in zip(("pnet", "rnet", "onet"), nets):
        load_strict(net, read_state_dict(paths[name]), f"{paths[name]} (MTCNN {name})")
        net.eval()
    return nets


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _pyramid(height: int, width: int, min_face_px: float, factor: float, expected_face_px: float = 0.0) -> list[float]:
    """Scales at which a 12-px P-Net window covers faces from min_face_px up to the image's short side; with an
    expected face size, only those covering EXPECTED_FRACTION of it and more (at least the coarsest level)."""
    scale = 12.0 / min_face_px
    short = min(height, width) * scale
    scales = []
    while short >= 12:
        scales.append(scale)
        scale *= factor
        short *= factor
    smallest = expected_face_px * EXPECTED_FRACTION
    return [s for s in scales if 12.0 / s >= smallest] or scales[-1:]


def _candidates(reg: torch.Tensor, prob: torch.Tensor, scale: float, threshold: float) -> tuple[np.ndarray, ...]:
    """P-Net map cells scoring >= threshold -> boxes [K, 9] (x1, y1, x2, y2, score, 4 offsets), image index."""
    stride, cell = 2, 12
    prob = prob.cpu().numpy()
    reg = reg.cpu().numpy()
    image, row, col = np.nonzero(prob >= threshold)
    position = np.stack([col, row], axis=1).astype(np.float64)
    top_left = np.floor((stride * position + 1) / scale)
    bottom_right = np.floor((stride * position + cell) / scale)
    offsets = reg[image, :, row, col]
    score = prob[image, row, col][:, None]
    return np.concatenate([top_left, bottom_right, score, offsets], axis=1), image


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (rerec)."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply R-/O-Net box offsets (bbreg; sizes counted inclusively)."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += offsets[:, :4] * np.stack([w, h, w, h], axis=1)
    return boxes


def _crop_windows(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Integer crop windows (x0, y0, x1, y1), 0-based exclusive, clipped to the image (pad)."""
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(b[:, 0], 1)
    y = np.maximum(b[:, 1], 1)
    ex = np.minimum(b[:, 2], width)
    ey = np.minimum(b[:, 3], height)
    return np.stack([x - 1, y - 1, ex, ey], axis=1)


class MTCNNEngine:
    """Three-stage cascade over a batch of equally sized RGB images."""

    def __init__(
        self,
        nets: tuple[PNet, RNet, ONet],
        device: str,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
    ) -> None:
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (net.to(self.device).eval() for net in nets)
        if len(thresholds) != 3:
            raise ValueError("MTCNN needs three stage thresholds (P-, R-, O-Net)")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor

    def detect(self, images: np.ndarray, min_face_px: float = 20.0,
               expected_face_px: np.ndarray | None = None) -> list[Faces]:
        # One pyramid serves the whole batch: the smallest expectation decides (an unknown one, 0, keeps them all).
        expected = 0.0 if expected_face_px is None or not len(expected_face_px) else float(np.min(expected_face_px))
        with torch.inference_mode():
            return self._detect(images, min_face_px, expected)

    def _detect(self, images: np.ndarray, min_face_px: float, expected_face_px: float = 0.0) -> list[Faces]:
        batch, height, width = images.shape[:3]
        # Triton hands over read-only buffers, which torch.from_numpy warns about; copy those.
        images = np.ascontiguousarray(images) if images.flags.writeable else images.copy()
        imgs = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
        boxes, owner = self._stage1(imgs, min_face_px, expected_face_px)
        if len(boxes):
            boxes, owner = self._stage2(imgs, boxes, owner)
        points = np.zeros((0, 5, 2))
        if len(boxes):
            boxes, owner, points = self._stage3(imgs, boxes, owner)
        results = []
        for index in range(batch):
            mine = owner == index
            if not mine.any():
                results.append(Faces.empty())
                continue
            faces = Faces(
                boxes[mine, :4].astype(np.float32), boxes[mine, 4].astype(np.float32), points[mine].astype(np.float32)
            )
            results.append(faces.take(np.argsort(-faces.scores, kind="stable")))
        return results

    def _stage1(self, imgs: torch.Tensor, min_face_px: float, expected_face_px: float) -> tuple[np.ndarray, np.ndarray]:
        height, width = imgs.shape[2:]
        found, owners = [], []
        for scale in _pyramid(height, width, min_face_px, self.factor, expected_face_px):
            level = F.interpolate(imgs, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            reg, prob = self.pnet(_normalise(level))
            boxes, owner = _candidates(reg, prob[:, 1], scale, self.thresholds[0])
            # torchvision's batched_nms (no +1 in areas) as in facenet-pytorch's first two stages
            keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.5, plus_one=False)
            found.append(boxes[keep])
            owners.append(owner[keep])
        if not found:
            return np.zeros((0, 9)), np.zeros(0, dtype=np.int64)
        boxes, owner = np.concatenate(found), np.concatenate(owners)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7, plus_one=False)
        boxes, owner = boxes[keep], owner[keep]
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        corners = boxes[:, :4] + boxes[:, 5:9] * np.stack([w, h, w, h], axis=1)
        return _square(np.concatenate([corners, boxes[:, 4:5]], axis=1)), owner

    def _crops(self, imgs: torch.Tensor, boxes: np.ndarray, owner: np.ndarray, size: int):
        """Resampled, normalised crops of each box, and the mask of boxes that had a non-empty crop."""
        windows = _crop_windows(boxes, imgs.shape[3], imgs.shape[2])
        valid = (windows[:, 2] > windows[:, 0]) & (windows[:, 3] > windows[:, 1])
        crops = [
            F.interpolate(imgs[i : i + 1, :, y0:y1, x0:x1], size=(size, size), mode="area")
            for i, (x0, y0, x1, y1) in zip(owner[valid], windows[valid])
        ]
        return _normalise(torch.cat(crops)) if crops else None, valid

    def _run(self, net: nn.Module, crops: torch.Tensor) -> list[np.ndarray]:
        outputs = [net(crops[i : i + _CHUNK]) for i in range(0, len(crops), _CHUNK)]
        return [torch.cat(parts).float().cpu().numpy() for parts in zip(*outputs)]

    def _stage2(self, imgs: torch.Tensor, boxes: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        crops, valid = self._crops(imgs, boxes, owner, 24)
        boxes, owner = boxes[valid], owner[valid]
        if crops is None:
            return boxes, owner
        offsets, prob = self._run(self.rnet, crops)
        passed = prob[:, 1] > self.thresholds[1]
        boxes = np.concatenate([boxes[passed, :4], prob[passed, 1:2]], axis=1)
        owner, offsets = owner[passed], offsets[passed]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7, plus_one=False)
        return _square(_regress(boxes[keep], offsets[keep])), owner[keep]

    def _stage3(
        self, imgs: torch.Tensor, boxes: np.ndarray, owner: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        crops, valid = self._crops(imgs, boxes, owner, 48)
        boxes, owner = boxes[valid], owner[valid]
        if crops is None:
            return boxes, owner, np.zeros((0, 5, 2))
        offsets, marks, prob = self._run(self.onet, crops)
        passed = prob[:, 1] > self.thresholds[2]
        boxes = np.concatenate([boxes[passed, :4], prob[passed, 1:2]], axis=1)
        owner, offsets, marks = owner[passed], offsets[passed], marks[passed]
        # Landmarks are relative to the box before O-Net's regression; first five x, then five y.
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        points = np.stack([w * marks[:, :5] + boxes[:, 0:1] - 1, h * marks[:, 5:] + boxes[:, 1:2] - 1], axis=2)
        boxes = _regress(boxes, offsets)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7, mode="min", plus_one=True)
        return boxes[keep], owner[keep], points[keep]


def load_mtcnn(device: str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, factor: float = DEFAULT_FACTOR):
    """The engine with the shipped weights; WeightsUnavailable if facenet-pytorch's data is missing."""
    paths = shipped_paths()
    if paths is None:
        raise WeightsUnavailable(
            "MTCNN weights not found: install the facenet-pytorch wheel (pip install --no-deps "
            "facenet-pytorch==2.6.0), which ships data/pnet.pt, rnet.pt and onet.pt"
        )
    return MTCNNEngine(load_nets(paths), device, thresholds, factor)
