"""Minor-face estimate from insightface's genderage.onnx (buffalo_l pack), supplied by the operator.

No age model ships in any installable package, so this runs only when an operator puts the file at
`<weights root>/content_safety/genderage.onnx`. Our runner follows insightface's
`model_zoo/attribute.py` (`Attribute.get`) exactly:

- crop: centre of the face box, scale = input_size / (max(w, h) * 1.5), no rotation
  (`face_align.transform`: a similarity transform applied with cv2.warpAffine, bilinear, black border);
- normalisation: mean 0 / std 1 when the graph normalises itself (a `bn_data` node among the first three,
  or Sub and Mul nodes among the first eight: models converted from mxnet, genderage.onnx among them),
  else (x - 127.5) / 128;
- colour: insightface reads BGR with cv2 and feeds `blobFromImage(..., swapRB=True)`, i.e. RGB; our
  images are RGB already, so no swap;
- output [N, 3]: gender logits (argmax: 0 female, 1 male) and age / 100.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

GENDERAGE_FILE = "genderage.onnx"
BOX_CONTEXT = 1.5  # Attribute.get: _scale = input_size / (max(w, h) * 1.5)


def input_normalisation(model_path: Path) -> tuple[float, float]:
    """(mean, std) by insightface's Attribute rule on the first graph nodes' names."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    find_sub = find_mul = False
    for index, node in enumerate(nodes[:8]):
        if node.name.startswith(("Sub", "_minus")):
            find_sub = True
        if node.name.startswith(("Mul", "_mul")):
            find_mul = True
        if index < 3 and node.name == "bn_data":
            find_sub = find_mul = True
    return (0.0, 1.0) if (find_sub and find_mul) else (127.5, 128.0)


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 affine of face_align.transform(img, centre, size, scale, 0) for an x1, y1, x2, y2 box.

    The box's width, height and centre sums stay in the box's own precision (numpy scalars, as in Attribute.get):
    detectors give float32 boxes, and cv2.warpAffine's fixed-point sampling can turn a float64 rounding of them
    into a different pixel.
    """
    x1, y1, x2, y2 = np.asarray(box)[:4]
    scale = size / (max(x2 - x1, y2 - y1) * BOX_CONTEXT)
    cx, cy = (x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale
    return np.array([[scale, 0.0, size / 2 - cx], [0.0, scale, size / 2 - cy]], dtype=np.float64)


def crop_face(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.warpAffine(image, crop_matrix(box, size), (size, size), borderValue=0.0)


@dataclass(frozen=True)
class AgeEstimate:
    age: float  # years: output[2] * 100 (insightface rounds it for display; the threshold uses the fraction)
    gender: str  # "F" / "M", argmax of the two logits as insightface's Face.sex; not reported by the gate


def decode(prediction: np.ndarray) -> AgeEstimate:
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    if prediction.shape != (3,):
        raise RuntimeError(f"genderage output has {prediction.size} values per face, expected 3")
    return AgeEstimate(float(prediction[2] * 100.0), "M" if int(np.argmax(prediction[:2])) == 1 else "F")


class GenderAgeRunner:
    """insightface's genderage.onnx (or any attribute model with its interface) on onnxruntime."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0) -> None:
        from .nsfw import onnx_session

        self.path = path
        self.session = onnx_session(path, device, threads)
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or not all(isinstance(v, int) for v in shape[2:4]) or shape[1] != 3:
            raise ValueError(f"{path.name}: input {model_input.name} is {shape}, expected [N, 3, size, size]")
        if shape[2] != shape[3]:
            raise ValueError(f"{path.name}: input is {shape[3]}x{shape[2]}; insightface crops square faces")
        outputs = self.session.get_outputs()
        # Attribute.__init__: one output; 3 values per face is what makes it the genderage task.
        if len(outputs) != 1 or outputs[0].shape[-1] != 3:
            found = [(o.name, o.shape) for o in outputs]
            raise ValueError(f"{path.name}: outputs {found}; genderage.onnx has one output of 3 values per face")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ValueError(f"{path.name}: fixed batch of {shape[0]}; export it with a dynamic batch or a batch of 1")
        self.input_name = model_input.name
        self.input_size = int(shape[2])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.mean, self.std = input_normalisation(path)
        log.info("genderage %s: %dpx, mean %s std %s", path, self.input_size, self.mean, self.std)

    def blobs(self, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """[N, 3, S, S] float32 network inputs for the faces at `boxes` (x1, y1, x2, y2) in `images`."""
        crops = np.stack([crop_face(image, box, self.input_size) for image, box in zip(images, boxes)])
        blob = (crops.astype(np.float32) - np.float32(self.mean)) * np.float32(1.0 / self.std)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def estimate(self, images: np.ndarray, boxes: np.ndarray) -> list[AgeEstimate]:
        if len(images) == 0:
            return []
        blob = self.blobs(images, boxes)
        if self.fixed_batch is None:
            (output,) = self.session.run(None, {self.input_name: blob})
        else:  # an export with a fixed batch of 1: one face per run
            output = np.concatenate([self.session.run(None, {self.input_name: item[None]})[0] for item in blob])
        return [decode(row) for row in output]
