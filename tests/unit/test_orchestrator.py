"""The talking_head orchestrator (python_backends/pipeline.py) over a fake generator and fake judges: the seeds it
derives, the segments it sizes. The models are faked; the request contract and the segment loop are real."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from python_backends import contract, pipeline, spec
from python_backends.generation.engines import ENGINES, segment_frames
from python_backends.quality.segment_qa import FAIL, PASS, Gate, SegmentQA


def _segment_qa(frames: np.ndarray, start: int, failed: bool) -> SegmentQA:
    n = len(frames)
    track = SimpleNamespace(landmarks=np.zeros((n, 68, 2)), boxes=np.zeros((n, 4)))
    gate = Gate("lipsync", FAIL if failed else PASS, "made to fail" if failed else "")
    return SegmentQA(0, start, n, [gate], track, [], np.zeros(n), {})


class FakeJob:
    """run_talking_head with pre-processing, photo safety, the per-segment judge and the report faked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, total: int, engine_id: str = "preview",
                 fail_attempts: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.total, self.engine_id, self.fail = total, engine_id, fail_attempts
        self.requests: list[dict] = []
        attempts: dict[int, int] = {}

        async def preprocess_job(*_args, **_kwargs):
            return SimpleNamespace(image=np.zeros((64, 64, 3), np.uint8), arrays={}, report={"faces": []})

        async def safety_of_photo(*_args):
            return {"status": "unavailable"}

        async def process_segment(raw, index, start, ctx, call, boundary):
            attempt = attempts[index] = attempts.get(index, -1) + 1
            return raw, _segment_qa(raw, start, failed=(index, attempt) in self.fail)

        monkeypatch.setattr(pipeline, "preprocess_job", preprocess_job)
        monkeypatch.setattr(pipeline, "safety_of_photo", safety_of_photo)
        monkeypatch.setattr(pipeline, "process_segment", process_segment)
        monkeypatch.setattr(pipeline.SourceFace, "from_preprocessed", classmethod(lambda cls, *a: None))
        monkeypatch.setattr(pipeline, "job_report", lambda segments, ctx, **kw: {
            "rerolls": kw["rerolls"], "seeds": [s.seed for s in segments], "frames": [s.frame_count for s in segments]})

    def stream(self, model, inputs, parameters):
        assert model is spec.VIDEO_GENERATOR
        params = contract.parse_generation_params(parameters)  # the generator's own validation
        self.requests.append(parameters)
        count = min(params.frame_count, self.total - params.start_frame)
        frames = np.full((count, 8, 8, 3), params.seed % 251, np.uint8)
        info = json.dumps({"engine": "fake", "engine_id": self.engine_id}).encode()
        yield {spec.FRAMES: frames, spec.START_FRAME: np.array([params.start_frame], np.int64),
               spec.TOTAL_FRAMES: np.array([self.total], np.int64), spec.FPS: np.array([params.fps]),
               spec.CHUNK_INFO: np.array([info], np.object_)}

    def run(self, parameters: dict) -> dict:
        inputs = {spec.PHOTO_BYTES: np.array([b"photo"], np.object_)}
        responses = list(pipeline.run_talking_head(inputs, parameters, None, self.stream,
                                                   pipeline.TalkingHeadSettings()))
        return json.loads(responses[-1][spec.CHUNK_INFO].reshape(-1)[0])["qa_report"]


def test_a_job_seeded_at_the_top_of_the_range_re_rolls(monkeypatch):
    top = contract.MAX_SEED
    job = FakeJob(monkeypatch, total=125, fail_attempts=frozenset({(0, 0)}))
    report = job.run({"seed": top, "fps": 25})
    seeds = [request["seed"] for request in job.requests]
    assert seeds == [top, contract.derive_seed(top, 0, 1)] and all(0 <= s <= top for s in seeds)
    assert report["rerolls"] == 1 and report["seeds"] == [seeds[1]]


def test_segments_are_whole_native_clips_of_the_engine(monkeypatch):
    # LiveAvatar's clip is 48 frames at 16 fps (3 s): two clips (6 s, 150 frames at 25 fps) are nearest 5 s.
    assert segment_frames("liveavatar-14B", 5.0, 25.0) == 150 and segment_frames("s2v-14B", 5.0, 25.0) == 125
    assert segment_frames("preview", 5.0, 25.0) == segment_frames(None, 5.0, 25.0) == 125
    job = FakeJob(monkeypatch, total=450, engine_id="liveavatar-14B")
    report = job.run({"engine": "liveavatar-14B", "fps": 25})
    assert report["frames"] == [150, 150, 150]
    # Under `auto` the engine is known from its first answer: the first segment is segment_s, the rest clips.
    job = FakeJob(monkeypatch, total=425, engine_id="liveavatar-14B")
    assert job.run({"fps": 25})["frames"] == [125, 150, 150]
    assert all(spec.renders_segments and spec.label for spec in ENGINES.values())
