"""The request contract (python_backends/contract.py): one list of fields behind the CLI flags, the gateway's
allow-list and the orchestrator's parsing; derived seeds always valid; importable without numpy or torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from client.cli import build_parser
from client.gateway.caches import PARAMETERS, ParameterError, canonical_parameters
from python_backends import contract, pipeline, spec
from python_backends.errors import InputError
from python_backends.quality.segment_qa import FAIL, PASS, Gate, SegmentQA

ROOT = Path(__file__).resolve().parents[2]


def test_derived_seeds_stay_in_range_and_apart():
    top = contract.MAX_SEED
    assert contract.derive_seed(7, 0, 0) == 7
    seeds = {contract.derive_seed(top, segment, attempt) for segment in range(40) for attempt in range(3)}
    assert len(seeds) == 120 and all(0 <= seed <= top for seed in seeds)
    for seed in seeds:  # what the generator's second validation does with each of them
        assert contract.parse_generation_params({"seed": seed}).seed == seed


def test_every_public_field_is_a_cli_flag_and_a_gateway_parameter():
    assert PARAMETERS == contract.PUBLIC_PARAMETERS
    assert {"output_width", "output_height"} <= set(PARAMETERS)
    args = build_parser().parse_args(["generate", "photo.png", "--output-width", "1920", "--output-height", "1080",
                                      "--max-duration", "4", "--engine", "preview", "--guidance", "2.5"])
    assert (args.output_width, args.output_height, args.max_duration_s, args.guidance) == (1920, 1080, 4.0, 2.5)
    canonical = canonical_parameters({"output_width": 1920, "output_height": 1080})
    assert set(canonical) == set(contract.PUBLIC_PARAMETERS) and canonical["output_width"] == 1920
    with pytest.raises(ParameterError, match="output size must be even"):
        canonical_parameters({"output_width": 1921, "output_height": 1080})
    with pytest.raises(ParameterError, match="give both output_width and output_height"):
        canonical_parameters({"output_width": 1920})
    assert contract.INTEGER_PARAMETERS == ("seed", "steps", "width", "height", "chunk_frames", "output_width",
                                           "output_height", "start_frame", "frame_count")


def test_a_job_may_not_choose_its_segments_but_the_generator_request_may():
    with pytest.raises(InputError, match="unknown parameter 'start_frame'"):
        contract.parse_job_params({"start_frame": 3})
    params = contract.parse_job_params({"seed": 4, "output_width": 640, "output_height": 360, "steps": None})
    request = contract.SegmentRequest(125, 125, contract.derive_seed(params.seed, 1, 0)).parameters(params)
    assert "output_width" not in request and "steps" not in request  # Triton parameters cannot be None
    parsed = contract.parse_generation_params(request)
    assert (parsed.start_frame, parsed.frame_count, parsed.seed) == (125, 125, request["seed"])


_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
"""


def _imports_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    script = _BLOCKER.format(blocked=blocked) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_contract_needs_neither_numpy_nor_torch():
    result = _imports_without(("numpy", "torch"), """
        from python_backends import contract
        print(contract.parse_job_params({"output_width": 1920, "output_height": 1080}).output_size)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1920, 1080)"


def test_the_gateway_serves_without_torch():
    """What the gateway image (the `gateway` extra, no `server` extra) imports: the app, its workers and the
    parameter check, with torch, torchvision, cv2 and transformers unimportable."""
    result = _imports_without(("torch", "torchvision", "cv2", "transformers", "scipy"), """
        from client.gateway import app, worker
        from client.gateway.caches import canonical_parameters
        from client.gateway.settings import GatewaySettings
        print(canonical_parameters({"output_width": 1920, "output_height": 1080})["output_height"])
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1080"


# -- the orchestrator re-rolls a job seeded at the top of the range -------------------------------------------------
def _segment_qa(frames: np.ndarray, start: int, failed: bool) -> SegmentQA:
    n = len(frames)
    track = SimpleNamespace(landmarks=np.zeros((n, 68, 2)), boxes=np.zeros((n, 4)))
    gate = Gate("lipsync", FAIL if failed else PASS, "made to fail" if failed else "")
    return SegmentQA(0, start, n, [gate], track, [], np.zeros(n), {})


def test_a_job_seeded_at_the_top_of_the_range_re_rolls(monkeypatch):
    top = contract.MAX_SEED
    requests: list[dict] = []
    judged: list[int] = []

    async def preprocess_job(*_args, **_kwargs):
        return SimpleNamespace(image=np.zeros((64, 64, 3), np.uint8), arrays={}, report={"faces": []})

    async def safety_of_photo(*_args):
        return {"status": "unavailable"}

    async def process_segment(raw, index, start, ctx, call, boundary):
        judged.append(index)
        return raw, _segment_qa(raw, start, failed=len(judged) == 1)  # the first attempt fails a gate

    def stream(model, inputs, parameters):
        assert model is spec.VIDEO_GENERATOR
        params = contract.parse_generation_params(parameters)  # the generator's own validation
        requests.append(parameters)
        frames = np.full((params.frame_count, 8, 8, 3), params.seed % 251, np.uint8)
        yield {spec.FRAMES: frames, spec.START_FRAME: np.array([params.start_frame], np.int64),
               spec.TOTAL_FRAMES: np.array([params.frame_count], np.int64), spec.FPS: np.array([params.fps]),
               spec.CHUNK_INFO: np.array([b'{"engine": "fake"}'], np.object_)}

    monkeypatch.setattr(pipeline, "preprocess_job", preprocess_job)
    monkeypatch.setattr(pipeline, "safety_of_photo", safety_of_photo)
    monkeypatch.setattr(pipeline, "process_segment", process_segment)
    monkeypatch.setattr(pipeline.SourceFace, "from_preprocessed", classmethod(lambda cls, *a: None))
    monkeypatch.setattr(pipeline, "job_report", lambda segments, ctx, **kw: {"rerolls": kw["rerolls"],
                                                                             "seeds": [s.seed for s in segments]})
    inputs = {spec.PHOTO_BYTES: np.array([b"photo"], np.object_)}
    settings = pipeline.TalkingHeadSettings()
    responses = list(pipeline.run_talking_head(inputs, {"seed": top, "fps": 25}, None, stream, settings))
    seeds = [request["seed"] for request in requests]
    assert seeds == [top, contract.derive_seed(top, 0, 1)] and all(0 <= s <= top for s in seeds)
    report = json_of(responses[-1])["qa_report"]
    assert report["rerolls"] == 1 and report["seeds"] == [seeds[1]]
    assert dataclasses.asdict(contract.parse_job_params({"seed": top}))["seed"] == top


def json_of(outputs: dict) -> dict:
    import json

    return json.loads(outputs[spec.CHUNK_INFO].reshape(-1)[0])
