"""Pure QA metrics on frames and landmarks: temporal coherence (flicker) and geometric / boundary artifacts."""

from .artifacts import (
    EdgeSettings,
    EyeReport,
    EyeSettings,
    Flags,
    JawSettings,
    edge_bleeding,
    eye_misalignment,
    inter_ocular,
    jaw_discontinuity,
)
from .flicker import FlickerReport, FlickerSettings, face_box_from_landmarks, flicker_report

__all__ = [
    "EdgeSettings", "EyeReport", "EyeSettings", "FlickerReport", "FlickerSettings", "Flags", "JawSettings",
    "edge_bleeding", "eye_misalignment", "face_box_from_landmarks", "flicker_report", "inter_ocular",
    "jaw_discontinuity",
]
