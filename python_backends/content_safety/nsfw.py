"""NSFW score from NudeNet's shipped body-part detector (nudenet 3.4.2, `nudenet/320n.onnx`), on onnxruntime.

Our own runner of the same ONNX file, matching nudenet.py's `NudeDetector.detect` step for step:

- pre-processing (`_read_image`): pad the image with black at the bottom and right to a square, resize to
  320x320 with cv2's bilinear resize on uint8 (`cv2.dnn.blobFromImage`), scale by 1/255, no mean, NCHW.
- colour order: the network is an Ultralytics YOLOv8 export (its ONNX metadata says so) and Ultralytics
  trains on RGB. nudenet 3.4.2 converts its input with COLOR_RGBA2BGR, which on a 3-channel image swaps R
  and B, and then blobFromImage(swapRB=True) swaps them back: handed an RGB array it feeds RGB, handed a
  cv2.imread (BGR) file it feeds BGR (upstream issue notAI-tech/NudeNet#203: "wrong implement of
  _read_image COLOR_RGBA2BGR"; the commit before it converted to RGB). Our images are RGB, so we feed RGB
  unchanged: what the network was trained on, and what NudeDetector.detect does with an RGB array.
- post-processing (`_postprocess`): output [22, 2100] = (cx, cy, w, h, 18 class scores) per anchor; keep
  anchors whose best class score is >= 0.2, box to top-left corner, scaled by (side + pad) / 320, clipped
  to the image; then class-agnostic cv2.dnn.NMSBoxes with score threshold 0.25 and IoU 0.45.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INPUT_SIZE = 320  # NudeDetector's inference_resolution; the ONNX metadata says imgsz [320, 320]
CANDIDATE_SCORE = 0.2  # _postprocess: `if max_score >= 0.2`
NMS_SCORE = 0.25  # cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45)
NMS_IOU = 0.45

# nudenet.py's `__labels`, in the network's output order (the ONNX metadata `names` agree).
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)

# The classes whose score is the NSFW score: exposed genitalia, female breasts, buttocks and anus. Not
# counted: *_COVERED (clothed or in swimwear: a dressed person is not nudity), FACE_* (every portrait has
# one), MALE_BREAST_EXPOSED (a bare male chest is not explicit), FEET/ARMPITS/BELLY_EXPOSED (summer
# clothes). Counting those would stop ordinary talking-head photos.
EXPLICIT_CLASSES = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x, y, w, h in pixels (nudenet's convention; it reports int())

    def as_dict(self) -> dict:
        x, y, w, h = self.box
        return {
            "class": self.label,
            "score": round(self.score, 4),
            "box": [round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)],  # x1, y1, x2, y2
            "explicit": self.label in EXPLICIT_CLASSES,
        }


def nsfw_score(detections: list[Detection]) -> float:
    """The highest score among the explicit classes, 0.0 when there is none."""
    return max((d.score for d in detections if d.label in EXPLICIT_CLASSES), default=0.0)


def preprocess(image: np.ndarray) -> tuple[np.ndarray, int]:
    """RGB uint8 [H, W, 3] -> (float32 [3, 320, 320], side of the padded square)."""
    import cv2

    height, width = image.shape[:2]
    side = max(height, width)
    padded = np.zeros((side, side, 3), dtype=np.uint8)
    padded[:height, :width] = image
    resized = padded if side == INPUT_SIZE else cv2.resize(padded, (INPUT_SIZE, INPUT_SIZE))
    blob = resized.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)), side


def postprocess(output: np.ndarray, width: int, height: int, side: int) -> list[Detection]:
    """One image's raw output [4 + classes, anchors] -> detections after nudenet's filter and NMS."""
    import cv2

    rows = np.asarray(output, dtype=np.float32).T
    class_scores = rows[:, 4:]
    best = class_scores.max(axis=1)
    keep = best >= CANDIDATE_SCORE
    if not keep.any():
        return []
    rows, best = rows[keep], best[keep]
    class_ids = class_scores[keep].argmax(axis=1)
    # Same float32 arithmetic in the same order as nudenet (x * (W + x_pad) / 320, side == W + x_pad).
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    x = (cx - w / 2) * side / INPUT_SIZE
    y = (cy - h / 2) * side / INPUT_SIZE
    w = w * side / INPUT_SIZE
    h = h * side / INPUT_SIZE
    x = np.clip(x, 0, width)
    y = np.clip(y, 0, height)
    w = np.minimum(w, width - x)
    h = np.minimum(h, height - y)
    boxes = np.stack([x, y, w, h], axis=1)
    indices = cv2.dnn.NMSBoxes(boxes.tolist(), best.tolist(), NMS_SCORE, NMS_IOU)
    return [
        Detection(LABELS[int(class_ids[i])], float(best[i]), tuple(float(v) for v in boxes[i]))
        for i in np.asarray(indices, dtype=np.int64).reshape(-1)
    ]


def onnx_session(path: Path, device: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)


class NudeNetRunner:
    """Body-part detections for a batch of RGB images, from one forward of the shipped 320n.onnx."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0) -> None:
        self.session = onnx_session(path, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise ValueError(f"{path} has {len(outputs)} outputs; NudeNet's detector has one")
        log.info("nudenet detector %s on %s", path, self.session.get_providers()[0])

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        if not images:
            return []
        blobs, sides = zip(*(preprocess(image) for image in images))
        (output,) = self.session.run(None, {self.input_name: np.stack(blobs)})
        if output.shape[1] != 4 + len(LABELS):
            raise RuntimeError(f"detector output has {output.shape[1]} rows, expected {4 + len(LABELS)}")
        return [
            postprocess(output[i], image.shape[1], image.shape[0], sides[i]) for i, image in enumerate(images)
        ]
