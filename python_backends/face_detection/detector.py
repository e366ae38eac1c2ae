"""The face_detector model: settings, weights choice, and the batched predictor Triton calls.

Engines: RetinaFace (official biubug6 checkpoints, ResNet-50 or MobileNet-0.25, torch or onnxruntime)
when the operator supplies them, otherwise MediaPipe's BlazeFace with Face Mesh keypoints (the .tflite files of
the mediapipe wheel, Apache-2.0: the CPU default), or MTCNN with the weights shipped in facenet-pytorch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from .. import spec
from ..errors import ConfigError, InputError, WeightsUnavailable
from ..licences import LicencePolicy
from ..mediapipe_models import blazeface, pool
from ..weights import ALLOWED, OFFICIAL, SHIPPED, UNKNOWN, WeightsChoice, official_path, weights_root
from . import mtcnn
from .faces import Faces
from .retinaface import BACKBONES, LICENCE, backbone_config

logger = logging.getLogger(__name__)

MODEL = spec.FACE_DETECTOR.name
BLAZEFACE = "blazeface"
BLAZEFACE_ENGINE = "blazeface+facemesh"
BACKBONE_CHOICES = ("auto", BLAZEFACE, "resnet50", "mobilenet0.25", "mtcnn")
RUNTIMES = ("torch", "onnxruntime", "triton")  # triton: the network is its own Triton model (BLS)
AUTO_ORDER = ("resnet50", "mobilenet0.25")  # the most accurate official checkpoint present wins
MEDIAPIPE_HINT = "run `make install` (python -m python_backends.mediapipe_models.files extracts them)"
COMMERCIAL_ALTERNATIVE = (
    "the shipped MediaPipe BlazeFace (Apache-2.0): backbone 'blazeface' (the weights were trained on face "
    "datasets whose terms we could not establish)"
)


@dataclass(frozen=True)
class FaceDetectorSettings:
    """Parsed from config.pbtxt `parameters` (all string_value); defaults documented there too."""

    backbone: str = "auto"  # auto | blazeface | resnet50 | mobilenet0.25 | mtcnn
    runtime: str = "torch"  # torch | onnxruntime | triton (RetinaFace only)
    network_model: str = "face_detector_net"  # runtime triton: the Triton model serving the RetinaFace export
    onnx_path: str = "retinaface.onnx"  # absolute, or relative to <weights root>/face_detector/
    confidence_threshold: float = 0.9  # final face score a detection must exceed (RetinaFace, MTCNN)
    # BlazeFace's own min_detection_confidence (MediaPipe's default 0.5): its scores run lower than MTCNN's.
    blazeface_min_score: float = 0.5
    nms_threshold: float = 0.4  # IoU of RetinaFace's NMS (official default); MTCNN keeps its own stages'
    max_faces: int = 16  # most faces returned per image, highest scores first
    max_side: int = 1024  # images with a longer side are downscaled for detection; 0 = never
    min_face_size: float = 20.0  # MTCNN: smallest face searched, in input-image pixels
    mtcnn_thresholds: tuple[float, ...] = mtcnn.DEFAULT_THRESHOLDS  # P-, R-, O-Net stage thresholds
    mtcnn_factor: float = mtcnn.DEFAULT_FACTOR  # MTCNN pyramid scale step
    threads: int = 0  # CPU threads for torch / onnxruntime; 0 = the library default
    # BlazeFace: images (and the faces' meshes) of one request in parallel on this many TFLite interpreters.
    mediapipe_threads: int = 1
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_CHOICES:
            raise ConfigError(f"backbone must be one of {BACKBONE_CHOICES}, got {self.backbone!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.runtime != "torch" and self.backbone in ("mtcnn", BLAZEFACE):
            raise ConfigError(
                f"runtime {self.runtime!r} runs RetinaFace only; use backbone auto/resnet50/mobilenet0.25"
            )
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ConfigError(f"confidence_threshold must be in [0, 1), got {self.confidence_threshold}")
        if not 0.0 < self.blazeface_min_score < 1.0:
            raise ConfigError(f"blazeface_min_score must be in (0, 1), got {self.blazeface_min_score}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ConfigError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if self.max_faces < 1:
            raise ConfigError(f"max_faces must be at least 1, got {self.max_faces}")
        if self.max_side < 0 or 0 < self.max_side < 32:
            raise ConfigError(f"max_side must be 0 (off) or at least 32, got {self.max_side}")
        if self.min_face_size < 12:
            raise ConfigError(f"min_face_size must be at least 12 pixels (MTCNN's window), got {self.min_face_size}")
        if len(self.mtcnn_thresholds) != 3 or not all(0.0 <= t < 1.0 for t in self.mtcnn_thresholds):
            raise ConfigError(f"mtcnn_thresholds must be three numbers in [0, 1), got {self.mtcnn_thresholds}")
        if not 0.1 <= self.mtcnn_factor < 1.0:
            raise ConfigError(f"mtcnn_factor must be in [0.1, 1), got {self.mtcnn_factor}")
        if self.threads < 0:
            raise ConfigError(f"threads must be 0 (library default) or more, got {self.threads}")
        if not 1 <= self.mediapipe_threads <= pool.MAX_SIZE:
            raise ConfigError(f"mediapipe_threads must be 1 (one image after another) to {pool.MAX_SIZE} (parallel "
                              f"BlazeFace interpreters), got {self.mediapipe_threads}")


def _retinaface_choice(backbone: str, root: Path | None) -> WeightsChoice | None:
    cfg = backbone_config(backbone)
    path = official_path(MODEL, cfg.checkpoint, root)
    if path is None:
        return None
    return WeightsChoice(MODEL, f"retinaface-{backbone}", OFFICIAL, path, LICENCE, "official biubug6 checkpoint",
                         commercial_use=UNKNOWN, alternative=COMMERCIAL_ALTERNATIVE)


def _mtcnn_choice(note: str) -> WeightsChoice | None:
    paths = mtcnn.shipped_paths()
    if paths is None:
        return None
    return WeightsChoice(MODEL, "mtcnn", SHIPPED, paths["pnet"].parent, mtcnn.LICENCE, note,
                         commercial_use=UNKNOWN, alternative=COMMERCIAL_ALTERNATIVE)


def _blazeface_choice(note: str) -> WeightsChoice | None:
    from ..mediapipe_models import files

    paths = [files.model_path(name) for name in (*blazeface.FILES.values(), "face_landmark")]
    if not all(paths):
        return None
    return WeightsChoice(MODEL, BLAZEFACE_ENGINE, SHIPPED, paths[0], files.LICENCE, note,
                         parts=tuple(paths[1:]), commercial_use=ALLOWED)


def _missing(backbone: str, root: Path | None) -> str:
    where = (root if root is not None else weights_root()) or Path("<weights root>")
    return str(where / MODEL / backbone_config(backbone).checkpoint)


def _onnx_choice(settings: FaceDetectorSettings, root: Path | None) -> WeightsChoice:
    from .onnx_export import onnx_backbone

    base = root if root is not None else weights_root()
    path = Path(settings.onnx_path).expanduser()
    if not path.is_absolute():
        path = (base or Path("<weights root>")) / MODEL / path
    if not path.is_file():
        backbone = settings.backbone if settings.backbone in BACKBONES else "resnet50"
        raise WeightsUnavailable(
            f"runtime 'onnxruntime' needs the RetinaFace ONNX file {path}; make it with `python -m "
            f"python_backends.face_detection.onnx_export --backbone {backbone} --checkpoint "
            f"{_missing(backbone, root)} --out {path}`"
        )
    recorded = onnx_backbone(path)
    if settings.backbone != "auto" and recorded not in (None, settings.backbone):
        raise ConfigError(f"{path} was exported from backbone {recorded!r}, but settings ask for {settings.backbone!r}")
    backbone = recorded or (settings.backbone if settings.backbone != "auto" else "unknown")
    return WeightsChoice(
        MODEL, f"retinaface-{backbone}-onnxruntime", OFFICIAL, path, LICENCE, "ONNX export of the official checkpoint"
    )


def choose_weights(settings: FaceDetectorSettings, root: Path | None = None) -> WeightsChoice:
    """What the detector will run; WeightsUnavailable names the file to supply when nothing fits."""
    if settings.runtime == "onnxruntime":
        return _onnx_choice(settings, root)
    if settings.runtime == "triton":
        backbone = settings.backbone if settings.backbone in BACKBONES else "export"
        # No local file: the network's Triton model holds it (its readiness decides availability).
        return WeightsChoice(MODEL, f"retinaface-{backbone}-triton", OFFICIAL, None, LICENCE,
                             f"RetinaFace served by the Triton model {settings.network_model!r}")
    if settings.backbone == BLAZEFACE:
        choice = _blazeface_choice("MediaPipe BlazeFace + Face Mesh keypoints (requested)")
        if choice is None:
            raise WeightsUnavailable(f"backbone 'blazeface' needs MediaPipe's files: {MEDIAPIPE_HINT}")
        return choice
    if settings.backbone == "mtcnn":
        choice = _mtcnn_choice("MTCNN weights shipped in the facenet-pytorch wheel (requested)")
        if choice is None:
            raise WeightsUnavailable("backbone 'mtcnn' needs facenet-pytorch's data/pnet.pt, rnet.pt, onet.pt")
        return choice
    if settings.backbone in BACKBONES:
        choice = _retinaface_choice(settings.backbone, root)
        if choice is None:
            raise WeightsUnavailable(
                f"backbone {settings.backbone!r} needs the official RetinaFace checkpoint "
                f"{backbone_config(settings.backbone).checkpoint} (github.com/biubug6/Pytorch_Retinaface) at "
                f"{_missing(settings.backbone, root)}"
            )
        return choice
    for backbone in AUTO_ORDER:
        choice = _retinaface_choice(backbone, root)
        if choice is not None:
            return choice
    files = " or ".join(_missing(b, root) for b in AUTO_ORDER)
    choice = _blazeface_choice(f"no official RetinaFace checkpoint; put {files} to use RetinaFace")
    choice = choice or _mtcnn_choice(f"no MediaPipe files ({MEDIAPIPE_HINT}) and no RetinaFace checkpoint ({files})")
    if choice is None:
        raise WeightsUnavailable(f"no face detector weights: {MEDIAPIPE_HINT}, put {files}, or install "
                                 "facenet-pytorch for MTCNN")
    return choice


class Engine(Protocol):
    def detect(self, images: np.ndarray, min_face_px: float, expected_face_px: np.ndarray | None = None) -> list[Faces]:
        """RGB uint8 [B, H, W, 3] -> faces of each image in its own pixel coordinates. `expected_face_px` [B]: the
        longer face side each caller expects in these pixels (0 = unknown): the engine may skip searching for
        faces far smaller, never one it would find at that size."""


def _validate(images: np.ndarray | None) -> np.ndarray:
    if images is None:
        raise InputError(f"missing input {spec.IMAGE!r}: send an RGB uint8 image [H, W, 3]")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"{spec.IMAGE!r} must be RGB [H, W, 3] per item, got shape {tuple(images.shape[1:])}")
    if images.dtype != np.uint8:
        raise InputError(f"{spec.IMAGE!r} must be uint8, got {images.dtype}")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise InputError(f"{spec.IMAGE!r} is empty ({images.shape[1]}x{images.shape[2]}); send a real photo")
    return images


def _expected_sides(expected: np.ndarray | None, count: int) -> np.ndarray | None:
    """[count] expected face sides in input pixels (0 = unknown) from the optional [B, 1] input, or None."""
    if expected is None:
        return None
    sides = np.asarray(expected)
    if sides.shape not in ((count, 1), (count,)) or not np.issubdtype(sides.dtype, np.floating):
        raise InputError(f"{spec.EXPECTED_FACE_PX!r} must be FP32 [1] per image, got {sides.dtype} "
                         f"{tuple(sides.shape[1:])} for {count} image(s)")
    sides = sides.reshape(count).astype(np.float32)
    if not np.all(np.isfinite(sides)) or np.any(sides < 0):
        raise InputError(f"{spec.EXPECTED_FACE_PX!r} must be a face size in pixels, 0 or more (0 = unknown), got "
                         f"{sides.tolist()}")
    return sides


def detection_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) the detector sees: downscaled so that the longer side is at most max_side."""
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


class FaceDetector:
    """Predictor: one engine call per batch; results in input pixels, best first, at most max_faces."""

    def __init__(self, engine: Engine, settings: FaceDetectorSettings, weights: WeightsChoice) -> None:
        self.engine = engine
        self.settings = settings
        self.weights = weights

    def detect(self, images: np.ndarray, expected_face_px: np.ndarray | None = None) -> list[Faces]:
        """`expected_face_px` ([B, 1], input pixels, 0 = unknown): the face size the caller expects (QA tracking),
        which lets an engine skip its small-face search; without it every face size is searched."""
        images = _validate(images)
        expected = _expected_sides(expected_face_px, len(images))
        height, width = images.shape[1:3]
        det_h, det_w = detection_size(height, width, self.settings.max_side)
        if (det_h, det_w) != (height, width):
            images = np.stack([cv2.resize(im, (det_w, det_h), interpolation=cv2.INTER_AREA) for im in images])
        sx, sy = width / det_w, height / det_h
        # Faces below 12 detection pixels are out of MTCNN's reach; searching them would upsample the pyramid.
        min_face_px = max(12.0, self.settings.min_face_size / max(sx, sy))
        if expected is not None:
            expected = expected / max(sx, sy)  # in detection pixels, never overstated where the axes differ
        found = self.engine.detect(images, min_face_px, expected)
        return [self._finish(faces, sx, sy, width, height) for faces in found]

    def _finish(self, faces: Faces, sx: float, sy: float, width: int, height: int) -> Faces:
        # An engine that keeps its detections at its own score (BlazeFace: MediaPipe's rule) says so.
        threshold = -1.0 if getattr(self.engine, "thresholded", False) else self.settings.confidence_threshold
        faces = faces.take(np.flatnonzero(faces.scores > threshold))
        faces = faces.take(np.argsort(-faces.scores, kind="stable")[: self.settings.max_faces])
        scale = np.array([sx, sy], dtype=np.float32)
        boxes = (faces.boxes.reshape(-1, 2, 2) * scale).reshape(-1, 4)
        # Keep boxes inside the image so that downstream crops never index outside it.
        boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float32))
        keypoints = faces.keypoints * scale
        return Faces(boxes.astype(np.float32), faces.scores.astype(np.float32), keypoints.astype(np.float32))

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [
            {
                spec.FACE_BOXES: faces.boxes,
                spec.FACE_SCORES: faces.scores,
                spec.FACE_KEYPOINTS: faces.keypoints,
                spec.FACE_COUNT: np.array([len(faces)], dtype=np.int32),
            }
            for faces in self.detect(batch.get(spec.IMAGE), batch.get(spec.EXPECTED_FACE_PX))
        ]


def build_engine(settings: FaceDetectorSettings, weights: WeightsChoice, device: str) -> Engine:
    if settings.threads:
        # Process-wide, but each Triton python model runs in its own stub process.
        torch.set_num_threads(settings.threads)
    if weights.engine == BLAZEFACE_ENGINE:
        return _blazeface_engine(settings, device)
    if weights.engine == "mtcnn":
        assert weights.path is not None
        nets = mtcnn.load_nets({name: weights.path / Path(rel).name for name, rel in mtcnn.FILES.items()})
        return mtcnn.MTCNNEngine(nets, device, settings.mtcnn_thresholds, settings.mtcnn_factor)
    from .retinaface import load_retinaface
    from .retinaface_runtime import OnnxRunner, RetinaFaceEngine, TorchRunner

    if settings.runtime == "triton":
        from ..triton_network import NETWORKS, TritonNetwork

        network = TritonNetwork(settings.network_model, NETWORKS[MODEL])
        return RetinaFaceEngine(network, settings.confidence_threshold, settings.nms_threshold)
    assert weights.path is not None
    if settings.runtime == "onnxruntime":
        runner = OnnxRunner(weights.path, device, settings.threads)
    else:
        runner = TorchRunner(load_retinaface(weights.path, weights.engine.removeprefix("retinaface-")), device)
    return RetinaFaceEngine(runner, settings.confidence_threshold, settings.nms_threshold)


def _blazeface_engine(settings: FaceDetectorSettings, device: str) -> Engine:
    from ..mediapipe_models import files
    from ..mediapipe_models.face_mesh import FaceMesh

    if device != "cpu":
        logger.info("BlazeFace runs on the CPU (TFLite); device %s is not used", device)
    paths = {kind: files.require(name) for kind, name in blazeface.FILES.items()}
    detectors = pool.InterpreterPool(
        lambda: [blazeface.BlazeFaceNetwork(path, kind, settings.blazeface_min_score, settings.threads)
                 for kind, path in paths.items()], settings.mediapipe_threads, "blazeface")
    mesh = FaceMesh(files.require("face_landmark"), settings.threads, settings.mediapipe_threads)
    return blazeface.BlazeFaceEngine(detectors, mesh)


def build_face_detector(settings: FaceDetectorSettings, device: str, root: Path | None = None) -> FaceDetector:
    """The predictor for Triton (or any caller): weights chosen, loaded and checked now, not per request."""
    weights = choose_weights(settings, root)
    logger.info("face_detector: %s from %s on %s", weights.engine, weights.path, device)
    return FaceDetector(build_engine(settings, weights, device), settings, weights)
