"""face_embedder: L2-normalised identity embeddings of a face (ArcFace 512-d, or dlib 128-d on CPU)."""

from .alignment import ARCFACE_TEMPLATE, align_face, estimate_norm, umeyama
from .dlib_embedder import DLIB_SAME_PERSON_COSINE
from .iresnet import IResNet, build_iresnet, export_onnx, load_backbone
from .predictor import FaceEmbedder, build_face_embedder, choose_weights
from .settings import FaceEmbedderSettings
from .vectors import cosine_similarity, l2_normalise

__all__ = [
    "ARCFACE_TEMPLATE",
    "DLIB_SAME_PERSON_COSINE",
    "FaceEmbedder",
    "FaceEmbedderSettings",
    "IResNet",
    "align_face",
    "build_face_embedder",
    "build_iresnet",
    "choose_weights",
    "cosine_similarity",
    "estimate_norm",
    "export_onnx",
    "l2_normalise",
    "load_backbone",
    "umeyama",
]
