"""Quality of generated video, one package: the gate registry (gates/, each gate an object: gate.py), the
segment loop (segment_job.py), the per-segment records and checks (segment_qa.py), the job's report (report.py,
qa_report.schema.json), face tracking, colour matching, resizing, and the pure metrics re-exported here: temporal
coherence (flicker.py), geometric / boundary artifacts (artifacts.py), mouth vs speech (envelope_sync.py). SyncNet's
own model code lives beside its model in python_backends/lipsync_scorer/."""

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
