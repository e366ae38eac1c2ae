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
    bench.main(["--device", "cpu", "--seconds", "0.5", "--fps", "12", "--size", "128x96", "--no-warmup",
                "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["profile"] == "gpu" and result["request_frames"] == 160 and result["device"] == "cpu"
    # random checkpoints only for the roles whose real weights do not ship; the landmarker is the shipped Face Mesh
    assert set(result["random_weights"]) == {"face_embedder", "lipsync_scorer", "mouth_refiner"}
    assert all("random" in v for v in result["random_weights"].values())
    assert result["weights"]["face_landmarks"]["source"] == "shipped"
    assert set(result["each_gate_alone_s"]) == {"tracking", "colour_match", "identity", "lipsync", "flicker",
                                                "jaw_eyes_edge", "content_safety", "mouth_refiner_all_frames"}
    assert all(v > 0 for v in result["each_gate_alone_s"].values())
    # Wav2Lip's network is a part of the whole-clip mouth pass (no plosive run in half a second of this speech)
    assert set(result["each_gate_alone_refiner_network_s"]) == {"mouth_refiner_all_frames"}
    assert 0 < result["each_gate_alone_refiner_network_s"]["mouth_refiner_all_frames"] \
        <= result["each_gate_alone_s"]["mouth_refiner_all_frames"]
    assert result["clip"] == {"seconds": 0.5, "fps": 12.0, "size": "128x96", "frames": 6, "segments": [6]}
    (segment,) = result["as_served_segments"]
    assert result["as_served_qa_s"] > 0 and segment["frames"] == 6 and "lipsync" in segment["gates"]
    assert segment["timings_ms"]["wall"] <= result["as_served_qa_s"] * 1000.0 + 1.0  # both rounded
    # the refiner's network time is a part of the served mouth passes' (a low-sync pass, if random SyncNet fails)
    assert 0.0 <= result["as_served_refiner_network_s"] <= segment["timings_ms"]["wall"] / 1000.0 + 0.001
    # SyncNet and the refiner answered (random weights): no gate fell back to "unavailable" for want of a model
    assert segment["gates"]["content_safety"] != "unavailable"


def test_segments_are_cut_as_talking_head_cuts_them(tmp_path: Path) -> None:
    """A short first segment (first_segment_s), then segment_s, the tail joined to the last: the GPU profile's
    1 s and 5 s at 30 fps over 10 s are 31, 150 and 119 frames, as the served runs judged them."""
    from client.repository import config_path, load_config, parameters
    from python_backends.pipeline import TalkingHeadSettings, planned_length
    from python_backends.settings import from_mapping

    served = from_mapping(TalkingHeadSettings, parameters(load_config(config_path("talking_head", "gpu"))))
    bounds, start = [], 0
    while start < 300:
        bounds.append(min(planned_length(start, 300, served, 30.0), 300 - start))
        start += bounds[-1]
    assert bounds == [31, 150, 119]
