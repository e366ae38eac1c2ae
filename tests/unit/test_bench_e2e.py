"""perf/bench_e2e_gpu.py on the CPU with tiny random models: each run reports every stage's busy time, the
overlapped wall time, the time to the first frames and the encoded stream, overlapped and one after another."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from perf_scripts import load_perf_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench():
    return load_perf_script("bench_e2e_gpu")


@pytest.mark.parametrize(("engine", "resize"), [("liveavatar", "encoder"), ("s2v", "gpu")])
def test_tiny_runs_report_stages_overlapped_and_not(tmp_path: Path, engine: str, resize: str) -> None:
    out = tmp_path / "e2e.json"
    _bench().main(["--tiny", "--engine", engine, "--sizes", "64x64", "--seconds", "0.5", "--warmup-seconds", "0.25",
                   "--output-size", "96x64", "--resize", resize, "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["engine"] == engine and result["options"]["interpolation"] == "flow"
    assert result["inductor"] == {"coordinate_descent_tuning": False, "max_autotune": False,
                                  "max_autotune_pointwise": False}  # no TORCHINDUCTOR_* tuning set here
    sequential, overlapped = result["runs"]
    assert (sequential["overlap"], overlapped["overlap"]) == (False, True)
    for run in result["runs"]:
        assert run["frames"] == 15 and run["output_size"] == [96, 64]  # 0.5 s at 30 fps
        dit = "denoise" if engine == "liveavatar" else "denoise+decode"
        # the frames reach 96x64 in the encoder (as served jobs do) or on the GPU before the copy
        assert run["resize"] == resize and (run["upscale_and_copy_s"] is None) == (resize == "encoder")
        handed = "hand-off" if resize == "encoder" else "resize+copy"
        stages = {dit, "frames", handed, "encode"} | ({"decode"} if engine == "liveavatar" else set())
        assert set(run["stage_busy_s"]) == stages and all(v >= 0 for v in run["stage_busy_s"].values())
        assert 0 < run["time_to_first_chunk_s"] <= run["total_s"]
        assert run["sum_of_stages_s"] == pytest.approx(sum(run["stage_busy_s"].values()), abs=0.01)
        assert run["encode"]["frames"] == 15 and run["encode"]["width"] == 96 and run["encode"]["bytes"] > 0
        assert run["peak_memory_gib"] is None  # CPU: no GPU memory to report
        if engine == "liveavatar":  # the first chunk says where the request's start went
            assert {"start_history_encode_s", "start_dit_prefill_s", "start_decoder_prime_s"} <= set(
                run["first_chunk_timing_s"])
        # every chunk says what the engine spent on it (here 0.5 s is one chunk)
        assert run["chunk_timing_s"] == [run["first_chunk_timing_s"]]
        assert all({"denoise_s", "decode_s", "encode_s"} <= set(t) for t in run["chunk_timing_s"])


def test_dit_priority_both_alternates_the_setting_over_overlapped_runs(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    _bench().main(["--tiny", "--engine", "liveavatar", "--sizes", "64x64", "--seconds", "0.5", "--warmup-seconds",
                   "0.25", "--output-size", "96x64", "--overlap", "on", "--dit-priority", "both", "--repeats", "2",
                   "--no-encode", "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [(run["overlap"], run["dit_priority"]) for run in runs] == [(True, False), (True, True)] * 2
    assert all(run["frames"] == 15 for run in runs)  # the same clip either way (on the CPU the setting does nothing)


def test_a_profiled_clip_reports_kernel_time_by_kind(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    bench = _bench()
    bench.main(["--tiny", "--engine", "liveavatar", "--sizes", "64x64", "--seconds", "0.5", "--warmup-seconds",
                "0.25", "--output-size", "96x64", "--overlap", "on", "--no-encode", "--profile-seconds", "0.25",
                "--out", str(out)])
    (profiled,) = json.loads(out.read_text())["kernel_profiles"]
    assert profiled["seconds"] == 0.25 and profiled["wall_s"] > 0 and profiled["stage_busy_s"]["denoise"] > 0
    assert profiled["kernel_s"] == 0 and profiled["top_kernels"] == []  # the CPU runs no GPU kernels
    kinds = {"cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3": "attention",
             "void cutlass::device_kernel<GemmUniversal<float_e4m3_t, float_e4m3_t>>": "fp8 gemm",
             "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
             "nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT": "gemm", "ampere_sgemm_bias": "gemm",
             "at::native::(anonymous namespace)::fill_kernel": "other",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "gemm",
             "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "compiled (Triton)",
             "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": (
                 "eager elementwise / reduction"),
             "Memcpy HtoD (Pageable -> Device)": "copy"}
    assert {name: bench.kernel_kind(name) for name in kinds} == kinds


def test_sizes_are_parsed_once_for_every_script() -> None:
    cli_args = load_perf_script("cli_args")
    assert cli_args.frame_size("832X480") == (832, 480)
    assert cli_args.frame_sizes("832x480,704x384") == [(832, 480), (704, 384)]
    for bad in ("832", "832x", "0x480", "axb"):
        with pytest.raises(argparse.ArgumentTypeError, match="832x480|positive"):
            cli_args.frame_size(bad)


def test_the_ab_script_says_what_it_needs(tmp_path: Path) -> None:
    """perf/liveavatar_ab.sh (the device runs' driver) refuses to start without $OUT or with an unknown part."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[2] / "perf" / "liveavatar_ab.sh"
    env = {"PATH": os.environ["PATH"]}
    missing = subprocess.run(["sh", str(script), "e2e"], env=env, capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "set OUT" in missing.stderr
    unknown = subprocess.run(["sh", str(script), "all"], env={**env, "OUT": str(tmp_path)}, capture_output=True,
                             text=True, timeout=30)
    assert unknown.returncode == 2 and "e2e, tuning, kernels or before" in unknown.stderr
    no_baseline = subprocess.run(["sh", str(script), "before"], env={**env, "OUT": str(tmp_path)},
                                 capture_output=True, text=True, timeout=30)
    assert no_baseline.returncode != 0 and "set BEFORE" in no_baseline.stderr
