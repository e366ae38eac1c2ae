"""The request contract (python_backends/contract.py): one list of fields behind the CLI flags, the gateway's
allow-list and the orchestrator's parsing; derived seeds always valid; importable without numpy or torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from client.cli import build_parser
from client.gateway.caches import PARAMETERS, ParameterError, canonical_parameters
from python_backends import contract
from python_backends.errors import InputError

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
    """What the gateway image (the `gateway` extra, no `server` extra) runs: the app with its workers answers
    /healthz and documents the contract's parameters, with torch, torchvision, cv2, scipy and transformers
    unimportable (the output cache then stays off: the weights cannot be listed)."""
    result = _imports_without(("torch", "torchvision", "cv2", "transformers", "scipy"), """
        import tempfile
        from fastapi.testclient import TestClient
        from client.gateway.app import create_app
        from client.gateway.caches import canonical_parameters
        from client.gateway.settings import load_settings
        settings = load_settings(None, env={}, data_dir=tempfile.mkdtemp(), triton_url="127.0.0.1:9")
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").json()["status"] == "ok"
            assert "output_width" in client.get("/openapi.json").text
            assert client.get("/readyz").status_code == 503  # no tritonserver behind it here
        print(canonical_parameters({"output_width": 1920, "output_height": 1080})["output_height"])
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1080"
