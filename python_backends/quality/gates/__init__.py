"""The gate registry: every gate talking_head runs on each segment (and video_qa on a given video), in report
order. The report's gate list, its JSON schema's required gates, the contact sheet's lines, which gates are hard
and the unavailable fallback of motion gates all come from here.

A new gate is one file (a `QualityGate` subclass from quality/gate.py, as edge.py), one line below, and a test."""

from __future__ import annotations

from ..gate import FAIL, PASS, UNAVAILABLE, Gate, QualityGate, SegmentInput
from .builtin import CONTENT_SAFETY, EYES, FLICKER, IDENTITY, JAW, LIPSYNC, PRESENCE
from .edge import EDGE

GATES: tuple[QualityGate, ...] = (
    PRESENCE,
    IDENTITY,
    LIPSYNC,
    FLICKER,
    JAW,
    EYES,
    EDGE,
    CONTENT_SAFETY,
)
GATE_NAMES = tuple(gate.name for gate in GATES)
HARD_GATES = tuple(gate.name for gate in GATES if gate.hard)

__all__ = ["FAIL", "GATES", "GATE_NAMES", "HARD_GATES", "PASS", "UNAVAILABLE", "Gate", "QualityGate", "SegmentInput"]
