"""Running RetinaFace: the official detect.py pre- and post-processing around one network forward per
batch, with the forward done by torch or by onnxruntime (both see the same numpy arrays).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import WeightsUnavailable
from .boxes import decode_boxes, decode_landmarks, nms, prior_boxes
from .faces import Faces
from .retinaface import RetinaFace

logger = logging.getLogger(__name__)

BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
TOP_K = 5000  # candidates kept before NMS, as detect.py
KEEP_TOP_K = 750  # detections kept after NMS, as detect.py


class Runner(Protocol):
    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 [B, 3, H, W] -> loc [B, P, 4], conf [B, P, 2], landms [B, P, 10]."""


def preprocess(images: np.ndarray) -> np.ndarray:
    """RGB uint8 [B, H, W, 3] -> float32 [B, 3, H, W]: BGR order minus the BGR mean, no scaling (detect.py)."""
    bgr = images[..., ::-1].astype(np.float32) - BGR_MEAN
    return np.ascontiguousarray(bgr.transpose(0, 3, 1, 2))


def postprocess(
    loc: np.ndarray,
    conf: np.ndarray,
    landms: np.ndarray,
    height: int,
    width: int,
    confidence_threshold: float,
    nms_threshold: float,
) -> Faces:
    """One image's raw outputs -> faces in pixels of the network input, sorted by score."""
    priors = prior_boxes(height, width)
    if len(priors) != len(loc):
        raise RuntimeError(f"network gave {len(loc)} predictions for {len(priors)} priors at {height}x{width}")
    scores = conf[:, 1]
    candidates = np.flatnonzero(scores > confidence_threshold)
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")][:TOP_K]
    if candidates.size == 0:
        return Faces.empty()
    priors = priors[candidates]
    boxes = decode_boxes(loc[candidates].astype(np.float64), priors) * np.array([width, height] * 2)
    points = decode_landmarks(landms[candidates].astype(np.float64), priors) * np.array([width, height])
    # py_cpu_nms counts pixels inclusively; keep that so results match the official detector.
    keep = nms(boxes, scores[candidates], nms_threshold, plus_one=True)[:KEEP_TOP_K]
    return Faces(
        boxes[keep].astype(np.float32),
        scores[candidates][keep].astype(np.float32),
        points[keep].astype(np.float32),
    )


class TorchRunner:
    def __init__(self, net: RetinaFace, device: str) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.inference_mode():
            outputs = self.net(torch.from_numpy(x).to(self.device))
        return tuple(t.float().cpu().numpy() for t in outputs)  # type: ignore[return-value]


class OnnxRunner:
    def __init__(self, path: Path, device: str, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads

        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            device_id = int(device.partition(":")[2] or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise WeightsUnavailable(f"onnxruntime cannot load {path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        if len(self.session.get_outputs()) != 3:
            raise WeightsUnavailable(f"{path} is not a RetinaFace export: expected outputs loc, conf, landms")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loc, conf, landms = self.session.run(None, {self.input_name: x})
        return loc, conf, landms


class RetinaFaceEngine:
    """Detects faces in a batch of equally sized RGB images with one network forward."""

    def __init__(self, runner: Runner, confidence_threshold: float, nms_threshold: float) -> None:
        self.runner = runner
        self.confidence_threshold = confidence_threshold
        self.nms_threshold = nms_threshold

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.runner(preprocess(images))

    def detect(self, images: np.ndarray, min_face_px: float = 0.0,
               expected_face_px: np.ndarray | None = None) -> list[Faces]:
        """`min_face_px` is not used: RetinaFace's smallest anchor (16 px) sets its own floor; nor is
        `expected_face_px`: one forward at one scale costs the same whatever the faces' size."""
        del min_face_px, expected_face_px
        height, width = images.shape[1:3]
        loc, conf, landms = self.raw(images)
        return [
            postprocess(loc[i], conf[i], landms[i], height, width, self.confidence_threshold, self.nms_threshold)
            for i in range(len(images))
        ]
