"""Which weights each model would use, for `talkinghead weights` (no model is loaded to answer)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from pathlib import Path

from .errors import WeightsUnavailable
from .licences import commercial_required, refusal
from .settings import from_mapping
from .weights import UNAVAILABLE, WeightsChoice

# model name -> (package, settings class, weights chooser)
ROLES: dict[str, tuple[str, str, str]] = {
    "face_detector": ("python_backends.face_detection", "FaceDetectorSettings", "choose_weights"),
    "face_landmarks": ("python_backends.face_landmarks", "FaceLandmarksSettings", "choose_weights"),
    "face_embedder": ("python_backends.face_embedding", "FaceEmbedderSettings", "choose_weights"),
    "audio_features": ("python_backends.audio", "AudioFeaturesSettings", "choose_weights"),
    "video_generator": ("python_backends.generation.service", "VideoGeneratorSettings", "choose_weights"),
    "lipsync_scorer": ("python_backends.lipsync_scorer.scorer", "LipSyncScorerSettings", "choose_weights"),
    "content_safety": ("python_backends.content_safety", "ContentSafetySettings", "choose_weights"),
    "mouth_refiner": ("python_backends.mouth_refiner", "MouthRefinerSettings", "choose_weights"),
    "frame_interpolator": ("python_backends.generation.service", "VideoGeneratorSettings",
                           "choose_interpolation_weights"),
}
# Roles that run inside another model read that model's config.pbtxt.
CONFIG_OF: dict[str, str] = {"frame_interpolator": "video_generator"}


def config_model(role: str) -> str:
    return CONFIG_OF.get(role, role)


def roles_in(model: str) -> list[str]:
    """The roles whose weights Triton model `model` loads (itself and those that run inside it)."""
    return [role for role in ROLES if config_model(role) == model]


def licence_refusals(model: str, settings: object, root: Path | None = None) -> list[str]:
    """Why the `commercial` setting refuses what `model` would load (empty when it may load, or when off)."""
    if not commercial_required(getattr(settings, "licence", None)):
        return []
    reasons = []
    for role in roles_in(model):
        package, _settings_name, chooser = ROLES[role]
        try:
            choice = getattr(import_module(package), chooser)(settings, root)
        except WeightsUnavailable:
            continue  # nothing would be loaded, so nothing to refuse
        reason = refusal(choice)
        if reason is not None:
            reasons.append(reason)
    return reasons


def weights_for(model: str, parameters: Mapping[str, str], root: Path | None) -> WeightsChoice:
    package, settings_name, chooser = ROLES[model]
    module = import_module(package)
    settings = from_mapping(getattr(module, settings_name), parameters)
    try:
        return getattr(module, chooser)(settings, root)
    except WeightsUnavailable as exc:
        return WeightsChoice(model, "-", UNAVAILABLE, None, "-", note=str(exc))
