"""perf/perf_analyzer_sweeps.py without running anything timed: the input-data files perf_analyzer reads,
its CSV report, the commands, and the copy of the repository with dynamic batching off."""

from __future__ import annotations

import base64
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from client.repository import load_config
from client.server import ServerOptions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "perf"))

import perf_analyzer_sweeps as sweeps  # noqa: E402

# A report written by perf_analyzer 2.51 (`-f`) against face_detector on the project's CPU machine.
CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,7.99762,157,1409,2215,208,102657,1114,6,109867,122937,123773,125906
"""


def test_csv_report_becomes_milliseconds():
    row = sweeps.parse_csv(CSV)
    assert row["throughput_per_s"] == 8.0
    assert row["latency_ms"] == {"p50": 109.87, "p90": 122.94, "p95": 123.77, "p99": 125.91}
    assert row["breakdown_ms"]["server_queue"] == 2.21 and row["breakdown_ms"]["server_compute_infer"] == 102.66


def test_csv_with_no_measurement_is_refused():
    with pytest.raises(ValueError, match="one measurement row"):
        sweeps.parse_csv(CSV.splitlines()[0] + "\n")


def test_input_data_round_trips_every_tensor_kind(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    box = np.array([1.5, 2.0, 30.25, 40.0], np.float32)
    keypoints = np.arange(10, dtype=np.float32).reshape(5, 2)
    document = sweeps.input_data_document({"image": image, "face_box": box, "face_keypoints": keypoints})
    (step,) = document["data"]
    assert step["image"]["shape"] == [5, 7, 3] and step["face_box"] == {"content": box.tolist(), "shape": [4]}
    path = tmp_path / "face_embedder.json"
    path.write_text(json.dumps(document))
    back = sweeps.sample_tensors_from_file(path)
    np.testing.assert_array_equal(back["image"], image)
    np.testing.assert_array_equal(back["face_keypoints"], keypoints)


def test_bytes_tensors_are_serialised_the_way_triton_sends_them(tmp_path):
    audio = bytes(range(256)) * 3  # arbitrary binary, NULs included
    document = sweeps.input_data_document({"audio_bytes": np.array([audio], dtype=np.object_)})
    blob = base64.b64decode(document["data"][0]["audio_bytes"]["b64"])
    assert blob[:4] == struct.pack("<I", len(audio)) and blob[4:] == audio
    path = tmp_path / "audio_features.json"
    path.write_text(json.dumps(document))
    assert sweeps.sample_tensors_from_file(path)["audio_bytes"].tolist() == [audio]


def test_commands_pick_protocol_memory_and_window():
    options = ServerOptions(http_port=1, grpc_port=2, metrics_port=3)
    binary, data, report = Path("/pa"), Path("/in.json"), Path("/r.csv")
    wire = sweeps.case_command(sweeps.Case("face_detector", "grpc", "wire", True, 3), options, data, report, binary)
    assert wire[wire.index("-u") + 1] == options.grpc_url and wire[wire.index("-i") + 1] == "grpc"
    assert wire[wire.index("--shared-memory") + 1] == "none" and "--output-shared-memory-size" not in wire
    assert wire[wire.index("--concurrency-range") + 1] == "3:3"
    assert wire[wire.index("-p") + 1] == str(sweeps.WINDOW_MS["face_detector"])
    shm = sweeps.case_command(sweeps.Case("face_embedder", "http", "system", True, 1), options, data, report, binary)
    assert shm[shm.index("-u") + 1] == options.http_url
    assert shm[shm.index("--shared-memory") + 1] == "system" and "--output-shared-memory-size" in shm


def test_plan_covers_the_grid():
    cases = sweeps.plan()
    assert {(c.model, c.concurrency) for c in cases if c.batching and c.protocol == "grpc" and c.memory == "wire"} == {
        (m, c) for m in sweeps.MODELS for c in (1, 2, 3, 4)}
    assert {c.model for c in cases if c.memory == "system"} == set(sweeps.IMAGE_MODELS)
    assert {c.model for c in cases if not c.batching} == set(sweeps.BATCHED_MODELS)
    assert {c.protocol for c in cases} == {"grpc", "http"}


def test_repository_copy_without_dynamic_batching(tmp_path):
    models, ensembles = sweeps.repository_without_batching(tmp_path)
    for name in sweeps.BATCHED_MODELS:
        original = load_config(ROOT / "model_repository" / name / "config.pbtxt")
        copy = load_config(models / name / "config.pbtxt")
        assert original.HasField("dynamic_batching") and not copy.HasField("dynamic_batching")
        copy.dynamic_batching.CopyFrom(original.dynamic_batching)
        assert copy == original  # nothing else changed
        assert (models / name / "1" / "model.py").read_bytes() == (
            ROOT / "model_repository" / name / "1" / "model.py").read_bytes()
    assert (ensembles / "preprocess" / "config.pbtxt").exists()
    assert not list(models.glob("*/configs"))  # variants are not served by the copy


def test_missing_perf_analyzer_says_how_to_install(tmp_path):
    with pytest.raises(sweeps.PerfAnalyzerMissing, match="make perf-tools"):
        sweeps.perf_analyzer_command(tmp_path / "no-venv")


def test_gpu_plan_sweeps_batch_sizes_and_streams_the_pipeline():
    cases = sweeps.plan_gpu()
    assert {(c.model, c.batch) for c in cases if not c.streaming} == {
        (m, b) for m in sweeps.IMAGE_MODELS for b in sweeps.GPU_BATCHES}
    streamed = [c for c in cases if c.streaming]
    assert streamed and all(c.model == "talking_head" and c.protocol == "grpc" for c in streamed)
    for model in sweeps.IMAGE_MODELS:  # every batch size fits the GPU profile's configs
        config = load_config(ROOT / "model_repository" / model / "configs" / "gpu.pbtxt")
        assert max(sweeps.GPU_BATCHES) <= config.max_batch_size


def test_gpu_commands_batch_and_stream():
    options = ServerOptions(http_port=1, grpc_port=2, metrics_port=3)
    binary, data, report = Path("/pa"), Path("/in.json"), Path("/r.csv")
    batched = sweeps.case_command(sweeps.Case("face_landmarks", "grpc", "wire", True, 4, 16), options, data, report,
                                  binary, windows=sweeps.GPU_WINDOW_MS)
    assert batched[batched.index("-b") + 1] == "16" and "--streaming" not in batched
    assert batched[batched.index("-p") + 1] == str(sweeps.GPU_WINDOW_MS["face_landmarks"])
    streamed = sweeps.case_command(sweeps.Case("talking_head", "grpc", "wire", True, 1, 1, True), options, data,
                                   report, binary, windows=sweeps.GPU_WINDOW_MS)
    assert "--streaming" in streamed and "-b" not in streamed


def test_streamed_job_uses_the_opening_of_the_speech():
    import wave
    from io import BytesIO

    from client.cli import SAMPLE_AUDIO

    whole = SAMPLE_AUDIO.read_bytes()
    opening = sweeps.speech_opening(whole, 1.5)
    with wave.open(BytesIO(opening)) as short, wave.open(BytesIO(whole)) as full:
        assert short.getframerate() == full.getframerate() and short.getnchannels() == full.getnchannels()
        assert short.getnframes() == round(1.5 * full.getframerate()) < full.getnframes()
        full_frames = full.readframes(short.getnframes())
        assert short.readframes(short.getnframes()) == full_frames


def test_gpu_table_lists_each_batch_size():
    def row(model, batch, concurrency, streaming=False):
        return {"model": model, "batch": batch, "concurrency": concurrency, "streaming": streaming,
                "latency_ms": {"p50": 10.0 * batch, "p95": 12.0 * batch}, "throughput_per_s": 100.0 / batch,
                "inferences_per_execution": 1.0}

    document = {"profile": "gpu", "results": [row("face_detector", 1, 1), row("face_detector", 16, 4),
                                              row("talking_head", 1, 1, True)]}
    table = sweeps.markdown(document)
    assert "| face_detector, 16 | - | 160 / 192, 6.2 (x1.0) |" in table
    assert "| talking_head, 1 (streamed) | 10 / 12, 100.0 (x1.0) | - |" in table


def test_random_weights_name_only_models_with_an_official_layout(capsys):
    with pytest.raises(SystemExit):
        sweeps.main(["--random-weights", "face_embedder,video_generator", "--out", "/dev/null"])
    assert "no random checkpoint for ['video_generator']" in capsys.readouterr().err
