"""content_safety: NSFW score (shipped NudeNet detector), minor-face estimate (operator-supplied insightface
genderage.onnx) and public-figure match (operator-supplied gallery of face_embedder embeddings)."""

from .age import GENDERAGE_FILE, AgeEstimate, GenderAgeRunner, input_normalisation
from .nsfw import EXPLICIT_CLASSES, LABELS, Detection, NudeNetRunner, nsfw_score
from .predictor import ContentSafety, build_content_safety, choose_weights
from .public_figures import ARCFACE_MATCH_COSINE, GALLERY_FILE, Gallery, GalleryStore, load_gallery
from .settings import ContentSafetySettings

__all__ = [
    "ARCFACE_MATCH_COSINE",
    "EXPLICIT_CLASSES",
    "GALLERY_FILE",
    "GENDERAGE_FILE",
    "LABELS",
    "AgeEstimate",
    "ContentSafety",
    "ContentSafetySettings",
    "Detection",
    "Gallery",
    "GalleryStore",
    "GenderAgeRunner",
    "NudeNetRunner",
    "build_content_safety",
    "choose_weights",
    "input_normalisation",
    "load_gallery",
    "nsfw_score",
]
