"""MediaPipe's single-shot detector post-processing, as its calculators do it: SsdAnchorsCalculator's anchors,
TensorsToDetectionsCalculator's box and keypoint decoding, NonMaxSuppressionCalculator's WEIGHTED suppression,
and ImageToTensorCalculator's aspect-keeping letterbox (undone on the detections)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AnchorOptions:
    """The SsdAnchorsCalculatorOptions of a MediaPipe graph (fixed-size anchors, aspect ratio 1)."""

    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float = 1.0  # > 0: a second anchor per scale (MediaPipe's default)
    anchor_offset: float = 0.5


@dataclass(frozen=True)
class DecoderOptions:
    """The TensorsToDetectionsCalculatorOptions (reverse_output_order: x, y, w, h; sigmoid scores)."""

    num_keypoints: int
    min_score: float
    score_clipping: float = 100.0
    min_suppression_iou: float = 0.3


def anchors(options: AnchorOptions) -> np.ndarray:
    """[A, 2] anchor centres in [0, 1] (fixed anchor size: width and height are 1)."""
    centres = []
    layer = 0
    strides = options.strides
    while layer < len(strides):
        same = layer
        while same < len(strides) and strides[same] == strides[layer]:
            same += 1
        per_location = (same - layer) * (2 if options.interpolated_scale_aspect_ratio > 0 else 1)
        cells = int(np.ceil(options.input_size / strides[layer]))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + options.anchor_offset) / cells, (ys + options.anchor_offset) / cells], axis=-1)
        centres.append(np.repeat(grid.reshape(-1, 2), per_location, axis=0))
        layer = same
    return np.concatenate(centres).astype(np.float32)


@dataclass(frozen=True)
class Detections:
    """Normalised to the network input ([0, 1]); boxes x1, y1, x2, y2; keypoints [N, K, 2]."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchor_centres: np.ndarray, size: int,
           options: DecoderOptions) -> Detections:
    """One image's head outputs [A, 4 + 2K] and [A, 1] -> its detections above min_score, after weighted NMS."""
    logits = np.clip(raw_scores[:, 0].astype(np.float64), -options.score_clipping, options.score_clipping)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(scores >= options.min_score)
    raw, centres = raw_boxes[keep] / size, anchor_centres[keep]
    cx, cy = raw[:, 0] + centres[:, 0], raw[:, 1] + centres[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    points = raw[:, 4: 4 + 2 * options.num_keypoints].reshape(-1, options.num_keypoints, 2) + centres[:, None]
    return weighted_nms(Detections(boxes, scores[keep], points), options.min_suppression_iou)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(found: Detections, iou: float) -> Detections:
    """MediaPipe's WEIGHTED suppression: each kept detection is the score-weighted mean of those it absorbs."""
    order = np.argsort(-found.scores, kind="stable")
    boxes, scores, points = found.boxes[order], found.scores[order], found.keypoints[order]
    out_boxes, out_scores, out_points = [], [], []
    remaining = np.arange(len(boxes))
    while len(remaining):
        overlaps = _iou(boxes[remaining[0]], boxes[remaining])
        group = remaining[overlaps > iou]
        group = group if len(group) else remaining[:1]
        weights = scores[group][:, None]
        out_boxes.append((boxes[group] * weights).sum(0) / weights.sum())
        out_points.append((points[group] * weights[:, :, None]).sum(0) / weights.sum())
        out_scores.append(scores[remaining[0]])
        remaining = remaining[overlaps <= iou]
    count = len(out_scores)
    return Detections(np.array(out_boxes, np.float32).reshape(count, 4), np.array(out_scores, np.float32),
                      np.array(out_points, np.float32).reshape(count, points.shape[1], 2))


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the square network input: scale, then a centred pad."""

    scale: float
    pad_x: float
    pad_y: float
    size: int

    def to_image(self, normalised: np.ndarray) -> np.ndarray:
        """Points [..., 2] normalised to the network input -> image pixels."""
        offset = np.array([self.pad_x, self.pad_y], np.float32)
        return (normalised * self.size - offset) / self.scale


def letterbox(image: np.ndarray, size: int, value_range: tuple[float, float]) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 [H, W, 3] -> float32 [size, size, 3] in value_range, aspect kept, black (value_range[0]) bars."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    low, high = value_range
    canvas = np.full((size, size, 3), low, np.float32)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[pad_y: pad_y + new_h, pad_x: pad_x + new_w] = resized.astype(np.float32) * ((high - low) / 255.0) + low
    return canvas, Letterbox(scale, float(pad_x), float(pad_y), size)
