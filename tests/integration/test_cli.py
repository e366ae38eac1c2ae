"""The `talkinghead` CLI end to end: serve lifecycle, validate and the demo job."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.server import free_port

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "client.cli"]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_serve_starts_prints_endpoints_and_stops_cleanly_on_sigterm(tmp_path):
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        CLI + ["serve", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
               str(ports[2]), "--weights", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "metrics" in line:
            break
    output = "".join(lines)
    assert f"127.0.0.1:{ports[1]}" in output and f"127.0.0.1:{ports[0]}" in output, output
    spawned = _descendants(process.pid)
    assert len(spawned) >= 2, "expected tritonserver and its python-backend stubs"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    time.sleep(0.5)
    assert not [pid for pid in spawned if _alive(pid)], "tritonserver or a stub outlived `talkinghead serve`"


def test_serve_reports_a_taken_port_clearly():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = subprocess.run(CLI + ["serve", "--http-port", str(taken)], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1
    assert f"port {taken}" in result.stderr and "--http-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_prints_verdicts(triton_server, samples):
    url = ["--url", triton_server.grpc_url]
    ok = subprocess.run(CLI + ["validate", str(samples / "astronaut.png"), str(samples / "speech.wav")] + url,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verdict"] == "accepted"
    bad = subprocess.run(CLI + ["validate", str(samples / "profile.png"), str(samples / "speech.wav")] + url,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    verdict = json.loads(bad.stdout)
    assert verdict["verdict"] == "rejected" and "front-facing" in verdict["message"]
    missing = subprocess.run(CLI + ["validate", "nope.png", str(samples / "speech.wav")] + url,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "nope.png does not exist" in missing.stderr


def test_demo_writes_video_report_and_overlay(triton_server, tmp_path):
    result = subprocess.run(
        CLI + ["demo", "--out", str(tmp_path), "--url", triton_server.grpc_url],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    details = json.loads((tmp_path / "demo.json").read_text())
    report = details["job_report"]
    assert report["verdict"] == "accepted" and len(report["faces"]) == 1
    assert details["frames"] == 150 and details["engine"] == "preview-landmark-warp"  # 5.98 s at 25 fps
    assert (tmp_path / "demo.mp4").stat().st_size > 10_000
    from PIL import Image

    overlay = Image.open(tmp_path / "demo.overlay.png")
    assert overlay.size == (report["photo"]["width"], report["photo"]["height"])
    assert str(tmp_path / "demo.mp4") in result.stdout


def test_weights_lists_what_each_model_uses(tmp_path):
    listed = subprocess.run(CLI + ["weights", "--json", "--commercial", "--weights", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {row["model"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"face_detector", "face_landmarks", "face_embedder", "audio_features", "video_generator",
                         "lipsync_scorer", "content_safety", "mouth_refiner", "frame_interpolator"}
    assert rows["video_generator"]["engine"] == "preview-landmark-warp"
    assert "Wan2.2-S2V-14B" in rows["video_generator"]["note"]
    assert rows["face_detector"]["engine"] == "blazeface+facemesh" and rows["face_detector"]["source"] == "shipped"
    assert len(rows["face_detector"]["sha256"]) == 64 and "Apache-2.0" in rows["face_detector"]["licence"]
    assert rows["face_landmarks"]["engine"] == "mediapipe-facemesh-468"
    assert {rows[m]["commercial_use"] for m in ("face_detector", "face_landmarks")} == {"allowed"}
    # Each row says what its licence allows commercially; --commercial says what would be refused, and why.
    for row in rows.values():
        refused = row["commercial_use"] == "forbidden" and row["source"] != "unavailable"
        assert bool(row["refused"]) == refused, row
    assert "AGPL-3.0" in rows["content_safety"]["licence"] and rows["content_safety"]["commercial_use"] == "conditions"
    assert "MuseTalk" in rows["mouth_refiner"]["commercial_alternative"]
    # What is missing says where to put it.
    assert rows["audio_features"]["source"] == "unavailable" and "audio_features" in rows["audio_features"]["note"]
    for model in ("lipsync_scorer", "mouth_refiner"):  # no weights ship for these: unavailable, never a pass
        assert rows[model]["source"] == "unavailable" and model in rows[model]["note"]
    assert rows["content_safety"]["source"] == "shipped"
    # Without RIFE's file the Wan engines interpolate with optical flow; the row says where RIFE goes.
    assert rows["frame_interpolator"]["engine"].startswith("flow") and "RIFE/flownet.pkl" in rows[
        "frame_interpolator"]["note"]
