"""Weights choice, input checks and the batched predictor of the face_embedder Triton model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from .. import spec
from ..errors import InputError, WeightsUnavailable
from ..weights import ALLOWED, FORBIDDEN, OFFICIAL, SHIPPED, UNAVAILABLE, WeightsChoice, official_path, package_path
from .settings import ARCFACE_ONNX, ARCFACE_TORCH, ARCFACE_TRITON, AUTO, DLIB, FaceEmbedderSettings
from .vectors import l2_normalise

log = logging.getLogger(__name__)

MODEL = spec.FACE_EMBEDDER.name
BACKBONE_FILE = "backbone.pth"
ONNX_FILE = "w600k_r50.onnx"
DLIB_PACKAGE = "face_recognition_models"
DLIB_MODEL_FILE = "models/dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE_FILE = "models/shape_predictor_5_face_landmarks.dat"
DLIB_ENGINE = "dlib-resnet-v1-128"

# Below this a face has too few pixels for any identity signal.
MIN_FACE_PX = 16

_INSIGHTFACE_LICENCE = (
    "insightface code MIT; its pretrained recognition models (arcface_torch checkpoints, buffalo_l "
    "w600k_r50) are for non-commercial research use only"
)
_DLIB_LICENCE = (
    "public domain: the dlib-models README says Davis King released his model files into the public "
    "domain; the face_recognition_models wheel ships them under CC0-1.0"
)
_INSIGHTFACE_ALTERNATIVE = (
    "an embedder licensed for commercial use: remove the insightface file to fall back to the shipped dlib "
    "ResNet (public domain, 128-d), or supply ArcFace weights you trained or licensed for commercial use"
)


def _official_note(settings: FaceEmbedderSettings) -> str:
    return (
        f"put arcface_torch's {BACKBONE_FILE} ({settings.arch}) or insightface buffalo_l's "
        f"{ONNX_FILE} at <weights root>/{MODEL}/"
    )


def _torch_choice(settings: FaceEmbedderSettings, root: Path | None) -> WeightsChoice | None:
    path = official_path(MODEL, BACKBONE_FILE, root)
    if path is None:
        return None
    return WeightsChoice(
        MODEL,
        f"arcface-{settings.arch}",
        OFFICIAL,
        path,
        _INSIGHTFACE_LICENCE,
        commercial_use=FORBIDDEN,
        alternative=_INSIGHTFACE_ALTERNATIVE,
        note=f"arcface_torch {settings.arch} backbone, 512-d",
    )


def _onnx_choice(root: Path | None) -> WeightsChoice | None:
    path = official_path(MODEL, ONNX_FILE, root)
    if path is None:
        return None
    return WeightsChoice(
        MODEL,
        "arcface-w600k-r50-onnx",
        OFFICIAL,
        path,
        _INSIGHTFACE_LICENCE,
        commercial_use=FORBIDDEN,
        alternative=_INSIGHTFACE_ALTERNATIVE,
        note="insightface buffalo_l w600k_r50 on onnxruntime, 512-d",
    )


def _dlib_choice(settings: FaceEmbedderSettings) -> WeightsChoice | None:
    model = package_path(DLIB_PACKAGE, DLIB_MODEL_FILE)
    shape = package_path(DLIB_PACKAGE, DLIB_SHAPE_FILE)
    if model is None or shape is None:
        return None
    note = f"shipped dlib model, 128-d, aligned by {shape.name}"
    if settings.embedder == AUTO:
        note += "; for ArcFace (512-d) " + _official_note(settings)
    return WeightsChoice(MODEL, DLIB_ENGINE, SHIPPED, model, _DLIB_LICENCE, note=note, commercial_use=ALLOWED)


def choose_weights(settings: FaceEmbedderSettings, root: Path | None = None) -> WeightsChoice:
    """auto: official backbone.pth, else w600k_r50.onnx, else the shipped dlib model."""
    if settings.embedder == ARCFACE_TRITON:
        # No local file: the network's Triton model holds the export (its readiness decides availability).
        return WeightsChoice(MODEL, ARCFACE_TRITON, OFFICIAL, None, _INSIGHTFACE_LICENCE,
                             commercial_use=FORBIDDEN, alternative=_INSIGHTFACE_ALTERNATIVE,
                             note=f"ArcFace served by the Triton model {settings.network_model!r}, 512-d")
    if settings.embedder == ARCFACE_TORCH:
        candidates = [_torch_choice(settings, root)]
        missing = f"no {BACKBONE_FILE}: put arcface_torch's {settings.arch} {BACKBONE_FILE} at <weights root>/{MODEL}/"
    elif settings.embedder == ARCFACE_ONNX:
        candidates = [_onnx_choice(root)]
        missing = f"no {ONNX_FILE}: put insightface buffalo_l's {ONNX_FILE} at <weights root>/{MODEL}/"
    elif settings.embedder == DLIB:
        candidates = [_dlib_choice(settings)]
        missing = f"dlib model files not found: install the {DLIB_PACKAGE} package"
    else:
        candidates = [_torch_choice(settings, root), _onnx_choice(root), _dlib_choice(settings)]
        missing = f"no weights: for ArcFace {_official_note(settings)}, or install the {DLIB_PACKAGE} package"
    for choice in candidates:
        if choice is not None:
            return choice
    return WeightsChoice(MODEL, "-", UNAVAILABLE, None, "-", note=missing)


class FaceEngine(Protocol):
    def embed_faces(self, images: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """Raw embeddings [N, D] for N faces, from one batched forward."""


def _check_item(index: int, shape: tuple[int, ...], box: np.ndarray, points: np.ndarray) -> None:
    height, width = shape[:2]
    where = f"item {index}: "
    if not (np.isfinite(box).all() and np.isfinite(points).all()):
        raise InputError(where + "face_box and face_keypoints must be finite numbers", "bad_face_geometry")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise InputError(
            where + f"face_box {list(map(float, box))} is empty; send x1, y1, x2, y2 with x2 > x1 and y2 > y1",
            "bad_face_geometry",
        )
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise InputError(
            where + f"face_box {list(map(float, box))} lies outside the {width}x{height} image; "
            "send the box in pixels of the same image",
            "bad_face_geometry",
        )
    if np.abs(box).max() > 4 * max(width, height):  # beyond, garbage (and dlib's integer rectangle overflows)
        raise InputError(
            where + f"face_box {list(map(float, box))} reaches far outside the {width}x{height} image; "
            "send the box in pixels of the same image",
            "bad_face_geometry",
        )
    if min(x2 - x1, y2 - y1) < MIN_FACE_PX:
        raise InputError(
            where + f"the face is only {x2 - x1:.0f}x{y2 - y1:.0f} px; use a photo where the face is at "
            f"least {MIN_FACE_PX} px across",
            "face_too_small",
        )
    # Keypoints far from the box mean another face's points or another coordinate system (0..1).
    margin_x, margin_y = 0.5 * (x2 - x1), 0.5 * (y2 - y1)
    inside = (
        (points[:, 0] >= x1 - margin_x)
        & (points[:, 0] <= x2 + margin_x)
        & (points[:, 1] >= y1 - margin_y)
        & (points[:, 1] <= y2 + margin_y)
    )
    if not inside.all():
        raise InputError(
            where + "face_keypoints lie outside face_box; send the box and keypoints of the same face, "
            "both in pixels, as face_detector returns them",
            "bad_face_geometry",
        )
    # The eye-to-eye vector turned to the eyes-to-mouth direction is clockwise in image coordinates
    # (y down) for any in-plane rotation; anticlockwise means left and right were swapped.
    eyes = points[1] - points[0]
    down = (points[3] + points[4]) / 2 - (points[0] + points[1]) / 2
    norm = np.linalg.norm(eyes) * np.linalg.norm(down)
    if norm > 0 and (eyes[0] * down[1] - eyes[1] * down[0]) / norm < -0.3:
        raise InputError(
            where + "face_keypoints look mirrored; order them left eye, right eye, nose, mouth left, mouth "
            "right as seen in the image",
            "bad_face_geometry",
        )


def embeddable(shape: tuple[int, ...], boxes: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, set[str]]:
    """(which faces this model would take [N] bool, the InputError codes of those it would refuse), for callers
    that judge generated frames: a face there that the model refuses as bad input is a verdict, not an error."""
    usable = np.zeros(len(boxes), dtype=bool)
    refused: set[str] = set()
    for index, (box, points) in enumerate(zip(boxes, keypoints)):
        try:
            _check_item(index, shape, np.asarray(box, np.float32), np.asarray(points, np.float32))
            usable[index] = True
        except InputError as exc:
            refused.add(exc.code)
    return usable, refused


def validate_batch(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [N,H,W,3] uint8, boxes [N,4] float32, keypoints [N,5,2] float32), or InputError."""
    for name in (spec.IMAGE, spec.FACE_BOX, spec.FACE_KEYPOINTS):
        if name not in batch:
            raise InputError(f"missing input {name!r}")
    images = np.asarray(batch[spec.IMAGE])
    boxes = np.asarray(batch[spec.FACE_BOX], dtype=np.float32)
    keypoints = np.asarray(batch[spec.FACE_KEYPOINTS], dtype=np.float32)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"image must be UINT8 [H, W, 3] RGB, got {images.dtype} {list(images.shape[1:])}")
    count = len(images)
    if boxes.shape != (count, 4):
        raise InputError(f"face_box must be FP32 [4] per image (x1, y1, x2, y2), got {list(boxes.shape[1:])}")
    if keypoints.shape != (count, 5, 2):
        raise InputError(f"face_keypoints must be FP32 [5, 2] per image, got {list(keypoints.shape[1:])}")
    for index in range(count):
        _check_item(index, images.shape[1:], boxes[index], keypoints[index])
    return images, boxes, keypoints


class FaceEmbedder:
    """The Triton predictor: one L2-normalised embedding per (image, face_box, face_keypoints) item."""

    def __init__(self, engine: FaceEngine, weights: WeightsChoice) -> None:
        self.engine = engine
        self.weights = weights

    def embed(self, images: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """[N, D] unit vectors."""
        raw = np.asarray(self.engine.embed_faces(images, boxes, keypoints), dtype=np.float32)
        if raw.shape[0] != len(images) or not np.isfinite(raw).all():
            raise RuntimeError(f"{self.weights.engine} returned {raw.shape} / non-finite embeddings")
        return l2_normalise(raw)

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        images, boxes, keypoints = validate_batch(batch)
        embeddings = self.embed(images, boxes, keypoints)
        return [{spec.EMBEDDING: vector} for vector in embeddings]


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def build_face_embedder(settings: FaceEmbedderSettings, device: str, root: Path | None = None) -> FaceEmbedder:
    """The predictor for `settings`; WeightsUnavailable (with what to supply) when there are no weights."""
    choice = choose_weights(settings, root)
    if settings.embedder == ARCFACE_TRITON:
        from ..triton_network import NETWORKS, TritonNetwork
        from .arcface import ArcFaceEmbedder, ArcFaceTritonRunner

        network = TritonNetwork(settings.network_model, NETWORKS[MODEL])
        return FaceEmbedder(ArcFaceEmbedder(ArcFaceTritonRunner(network)), choice)
    if not choice.available:
        raise WeightsUnavailable(f"{MODEL}: {choice.note}")
    if choice.engine == DLIB_ENGINE:
        from .dlib_embedder import DlibEmbedder

        shape = package_path(DLIB_PACKAGE, DLIB_SHAPE_FILE)
        engine: FaceEngine = DlibEmbedder(choice.path, shape, settings.num_jitters)
    elif choice.path.name == BACKBONE_FILE:
        from .arcface import ArcFaceEmbedder, ArcFaceTorchRunner

        _set_threads(settings.threads)
        engine = ArcFaceEmbedder(ArcFaceTorchRunner.from_checkpoint(choice.path, settings.arch, device))
    else:
        from .arcface import ArcFaceEmbedder, ArcFaceOnnxRunner

        engine = ArcFaceEmbedder(ArcFaceOnnxRunner(choice.path, device, settings.threads))
    log.info("%s: %s from %s", MODEL, choice.engine, choice.path)
    return FaceEmbedder(engine, choice)
