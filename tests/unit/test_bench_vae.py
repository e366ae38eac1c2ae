"""perf/bench_vae_gpu.py on the CPU with a narrow VAE: every stage timed per variant, outputs compared with the
default's (the compiled variants are left to the GPU run: inductor's CPU compile alone takes half a minute)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from perf_scripts import load_perf_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench():
    return load_perf_script("bench_vae_gpu")


def test_tiny_run_times_each_stage_per_variant_against_the_default(tmp_path: Path) -> None:
    out = tmp_path / "vae.json"
    _bench().main(["--tiny", "--variants", "default,channels_last_3d", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    assert (result["prime_latents"], result["block_latents"]) == (38, 3)  # the release layout's decoder memory
    (entry,) = result["sizes"]
    assert set(entry["variants"]) == {"default", "channels_last_3d"}
    for name, run in entry["variants"].items():
        assert set(run["ms"]) == {"encode", "prime", "block"} and all(v > 0 for v in run["ms"].values())
        assert len(run["ms_all"]["block"]) == 3 and run["warmup_s"] > 0
        assert run["peak_memory_gib"] is None  # CPU
        limit = 0.0 if name == "default" else 1e-5  # float32 on the CPU: the layouts differ by round-off only
        assert all(0 <= v <= limit for v in run["rel_l2_vs_default"].values()), run["rel_l2_vs_default"]
    fast = entry["variants"]["channels_last_3d"]
    base = entry["variants"]["default"]["ms"]
    assert fast["speedup_vs_default"]["prime"] == pytest.approx(base["prime"] / fast["ms"]["prime"], rel=1e-2)
    # the request's start: 117 of the still history's 261 frames reach the encoder's fixed point; the restart at
    # the first clip boundary goes on from there (48 frames left); priming runs only the decoder parts the state
    # depends on; each gives bitwise what the full work gives
    start = entry["start"]
    assert (start["history_frames"], start["prime_latents"], start["restart_new_frames"]) == (261, 38, 45)
    ways = {"encode": ("every_chunk", "skipping", "settling"), "restart_encode": ("every_chunk", "from_fixed_point"),
            "prime": ("decode_every_part", "advance")}
    frames = {key: [start[key][way]["frames_encoded"] for way in ways[key]] for key in ("encode", "restart_encode")}
    assert frames == {"encode": [261, 117, 117], "restart_encode": [261, 48]}
    assert start["encode"]["bitwise_equal"] and start["restart_encode"]["bitwise_equal"]
    assert start["prime"]["next_block_bitwise_equal"]
    for key, (before, *_, after) in ways.items():
        assert start[key]["speedup"] == pytest.approx(start[key][before]["ms"] / start[key][after]["ms"], rel=1e-2)
    encode = start["encode"]
    over = encode["skipping"]["ms"] / encode["settling"]["ms"]
    assert encode["speedup_over_skipping"] == pytest.approx(over, rel=1e-2)


def test_parts_choose_what_runs(tmp_path: Path) -> None:
    out = tmp_path / "start.json"
    _bench().main(["--tiny", "--parts", "start", "--out", str(out)])
    (entry,) = json.loads(out.read_text())["sizes"]
    assert entry["variants"] == {} and entry["start"]["encode"]["bitwise_equal"]
    with pytest.raises(SystemExit):
        _bench().main(["--tiny", "--parts", "start,everything", "--out", str(out)])


def test_variants_must_start_with_the_default(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _bench().main(["--tiny", "--variants", "channels_last_3d", "--out", str(tmp_path / "x.json")])
