"""perf/bench_generator.py: token and FLOP accounting against the model, and a --tiny CPU run's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from wan_fixtures.tiny import TINY_S2V_CONFIG

from python_backends.generation.wan import S2V_14B, build_s2v_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "perf"))

import bench_generator as bench  # noqa: E402

TINY_CONFIGS = "480p-eager,480p-eager-best,480p-cfg-batched,720p-eager,sp-n1,480p-fp8,vae"


def test_real_clip_token_counts() -> None:
    # 480x832: 60x104 latents, 30x52 tokens a frame; 20 latent frames for infer_frames 80; motion packed
    # into 1560 (1x) + 390 (2x) + 4 * 91 (4x) tokens.
    shape = bench.clip_shape(S2V_14B.transformer, "480p", 480, 832)
    assert (shape.latent_frames, shape.n_video, shape.n_ref, shape.n_motion) == (20, 31200, 1560, 2314)
    assert shape.seq == 35074
    assert bench.clip_shape(S2V_14B.transformer, "720p", 720, 1280).seq == 72000 + 3600 + 3600 + 880 + 880


def test_clip_shape_matches_the_model_and_flops_match_a_flop_counter() -> None:
    cfg = TINY_S2V_CONFIG
    model = build_s2v_model(cfg, device="cpu", dtype=torch.float32, seed=0)
    shape = bench.clip_shape(cfg, "test", 128, 256, infer_frames=16)  # 4 latent frames of 16x32 latents
    inputs = bench.make_inputs(cfg, shape, torch.device("cpu"), seed=0)
    with torch.inference_mode():
        tokens = model.prepare_tokens(**inputs)
        assert tokens.x.shape[1] == shape.seq and tokens.n_video == shape.n_video
        # the math backend runs attention as bmm, which the counter sees (the fused CPU kernel it does not)
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            model(**inputs)
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    flops = bench.forward_flops(cfg, shape, 1, len(model.audio_injector.injected_block_id))
    assert counted["aten.bmm"] == flops["attention"]
    # linear layers (addmm) plus the patch embeddings (part of the convolutions); the formula leaves out the
    # time embedding and the audio encoder, a fraction of a percent at real size
    assert counted["aten.addmm"] < flops["linear"] < counted["aten.addmm"] + counted["aten.convolution"]
    assert flops["linear"] == pytest.approx(counted["aten.addmm"], rel=0.05)


def test_tiny_run_writes_the_json_schema(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "perf" / "bench_generator.py"), "--tiny", "--device", "cpu",
                           "--configs", TINY_CONFIGS, "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["schema"] == bench.SCHEMA and result["tiny"] is True
    env = result["environment"]
    assert env["torch"] == torch.__version__ and "--tiny" in env["command"] and env["device"] == "cpu"
    assert result["ceiling"]["tflops"] > 0
    assert result["model"]["parameters"] > 0 and result["model"]["weights"] == "random"

    configs = {c["name"]: c for c in result["configs"]}
    assert set(configs) == set(TINY_CONFIGS.split(",")) - {"vae"}
    for entry in configs.values():
        assert entry["status"] == "ok", entry
        assert entry["kind"] == "measured"
        assert entry["median_step_s"] > 0 and len(entry["times_s"]) == 1
        assert entry["tflops"] > 0 and 0 < entry["fraction_of_bf16_ceiling"]
        assert entry["flops_per_step"]["total"] == pytest.approx(
            entry["flops_per_step"]["linear"] + entry["flops_per_step"]["attention"])
        assert entry["finite"] is True
    assert configs["480p-cfg-batched"]["batch"] == 2
    assert configs["480p-cfg-batched"]["flops_per_step"]["total"] == pytest.approx(
        2 * configs["480p-eager"]["flops_per_step"]["total"])
    assert configs["720p-eager"]["tokens"]["sequence"] > configs["480p-eager"]["tokens"]["sequence"]
    # the sharded path (one rank, real gloo collectives) predicts exactly what the plain forward does
    assert configs["sp-n1"]["sp_ranks"] == 1 and configs["sp-n1"]["max_abs_diff_vs_bf16_best"] < 1e-6
    assert 0 < configs["480p-fp8"]["rel_error_vs_bf16_best"] < 0.2
    assert result["fp8_conversion"]["layers"] == 8 * TINY_S2V_CONFIG.num_layers

    vae = result["vae"][0]
    assert vae["status"] == "ok"
    assert vae["decode"]["frames"] == 1 + 4 * (vae["decode"]["latent_frames"] - 1)
    assert 0 < vae["decode"]["first_chunk_s"] <= vae["decode"]["total_s"]

    proj = result["projections"]
    assert proj["tiny_model_numbers_are_meaningless"] is True
    scenarios = {s["name"]: s for s in proj["scenarios"]}
    official = scenarios["official: 40 steps + CFG, 720p at 16 fps, then upscale + interpolate"]
    assert official["status"] == "ok" and official["kind"] == "projection" and official["clips"] == 2
    assert official["transformer_s"] == pytest.approx(2 * 40 * official["step_s"])
    assert official["total_s"] == pytest.approx(official["transformer_s"] + official["vae_s"])
    assert "measured: 720p-eager" in official["step_basis"] and "batched" in official["step_basis"]
    native = scenarios["official: 40 steps + CFG, native 1080p at 30 fps"]
    assert native["clips"] == 4 and native["step_basis"].startswith("projected")
    # nothing compiled in this run: the scenarios that need the fastest settings say what is missing
    assert scenarios["distilled 4 steps, no CFG, 480p at 16 fps, fastest settings"]["status"] == "missing measurements"
