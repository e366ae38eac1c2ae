"""The gate registry (python_backends/quality/gates/): what the report, its schema, the contact sheet, the hard-gate
rule and the unavailable fallback read from it; and the edge gate, which came in the way a new gate does (its own
file gates/edge.py, one line in GATES, this test)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from test_qa_metrics import BAD, FPS, _face_ring, clip  # noqa: F401 - the preview clip fixture

from client.contact_sheet import _gate_line
from python_backends.quality import report as report_module
from python_backends.quality.artifacts import inter_ocular
from python_backends.quality.gate import FAIL, PASS, UNAVAILABLE, QualityGate
from python_backends.quality.gates import GATE_NAMES, GATES, HARD_GATES
from python_backends.quality.gates.edge import EDGE
from python_backends.quality.segment_job import check_segment
from python_backends.quality.settings import QualitySettings
from python_backends.quality.tracking import FaceTrack


def test_the_report_schema_and_hard_rule_come_from_the_registry():
    assert report_module.GATES == GATE_NAMES and EDGE in GATES
    assert len(set(GATE_NAMES)) == len(GATES) and all(isinstance(g, QualityGate) and g.name for g in GATES)
    assert report_module.report_schema()["properties"]["gates"]["required"] == list(GATE_NAMES)
    assert HARD_GATES == ("content_safety",)


def test_edge_gate_judges_a_smeared_face_edge(clip):  # noqa: F811
    image, source, frames, landmarks = clip
    ctx = SimpleNamespace(settings=QualitySettings(), source=SimpleNamespace(image=image, landmarks=source), fps=FPS)
    assert EDGE.settings(ctx.settings).max_log_ratio == ctx.settings.edge_max_log_ratio
    clean = EDGE.judge_frames(frames, landmarks, 0, ctx)
    assert clean.status == PASS and clean.details["frames"] == []
    ring = _face_ring(landmarks[BAD], 0.2 * inter_ocular(source), frames.shape[1:])
    smeared = frames.copy()
    smeared[BAD][ring] = cv2.GaussianBlur(frames[BAD], (0, 0), 3)[ring]
    # The gate samples edge_samples_per_s frames; judge every frame so the damaged one is among them.
    ctx.settings = QualitySettings(edge_samples_per_s=FPS)
    gate = EDGE.judge_frames(smeared, landmarks, 100, ctx)
    assert gate.status == FAIL and gate.details["frames"] == [100 + BAD]
    line = _gate_line(gate.as_dict())  # the contact sheet prints the gate's own summary
    assert line.startswith("edge") and "log ratio" in line and f"{100 + BAD}" in line


class _Recorder(QualityGate):
    def __init__(self, gate: QualityGate) -> None:
        self.name, self.hard, self.temporal, self.judged = gate.name, gate.hard, gate.temporal, False

    async def judge(self, segment):
        self.judged = True
        return self.unavailable("recorded")


def test_every_registered_gate_runs_and_motion_gates_fall_back_to_unavailable(monkeypatch):
    from python_backends.quality import segment_job

    recorders = tuple(_Recorder(g) for g in GATES)
    monkeypatch.setattr(segment_job, "GATES", recorders)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    track = FaceTrack(np.zeros((2, 4)), np.zeros((2, 68, 2)), np.arange(2), np.zeros((2, 4)), np.zeros((2, 5, 2)),
                      np.ones(2, bool), "test")
    qa = asyncio.run(check_segment(frames, track, 0, 0, SimpleNamespace(), None))
    assert [g.name for g in qa.gates] == list(GATE_NAMES)
    for recorder, gate in zip(recorders, qa.gates):
        assert recorder.judged != recorder.temporal  # 2 frames: too few for motion
        assert gate.status == UNAVAILABLE and gate.hard == recorder.hard
        if recorder.temporal:
            assert "too few to judge motion" in gate.reason
    with pytest.raises(NotImplementedError):
        asyncio.run(QualityGate().judge(None))
