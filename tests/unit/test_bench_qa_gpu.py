"""perf/bench_qa_gpu.py on the CPU with a half-second clip: the GPU profile's models (random weights in their
official layouts where none ship) behind every gate, timed per gate and as talking_head runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from perf_scripts import load_perf_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_small_clip_is_timed_per_gate_with_random_weights(tmp_path: Path) -> None:
    bench = load_perf_script("bench_qa_gpu")
    out = tmp_path / "qa.json"
    bench.main(["--device", "cpu", "--seconds", "0.5", "--fps", "12", "--size", "128", "--no-warmup",
                "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["profile"] == "gpu" and result["request_frames"] == 160 and result["device"] == "cpu"
    assert {result["weights"][m] for m in ("face_landmarks", "face_embedder", "lipsync_scorer", "mouth_refiner")} == {
        "random (official layout)"}
    assert set(result["each_gate_alone_s"]) == {"tracking", "colour_match", "identity", "lipsync", "flicker",
                                                "jaw_eyes_edge", "content_safety", "mouth_refiner_all_frames"}
    assert all(v > 0 for v in result["each_gate_alone_s"].values())
    assert result["clip"] == {"seconds": 0.5, "fps": 12.0, "size": 128, "frames": 6, "segments": 1}
    (segment,) = result["as_served_segments"]
    assert result["as_served_qa_s"] > 0 and segment["frames"] == 6 and "lipsync" in segment["gates"]
    # SyncNet and the refiner answered (random weights): no gate fell back to "unavailable" for want of a model
    assert segment["gates"]["content_safety"] != "unavailable"
