"""Invisible watermark: embedded by the real encoder, read back by `verify`, after re-encoding and stripping too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from client.audit import find_record
from client.cli import main
from client.compliance import ComplianceOptions, CompliantVideoWriter, JobInputs
from client.encoding import EncodeOptions, StreamingEncoder
from client.watermark import (
    ALGORITHM,
    SYNC_Z_THRESHOLD,
    WatermarkEmbedder,
    coded_bits,
    crc16,
    payload_for_job,
    read_video,
)

JOB_ID = "vid_watermark_test"
SIZE = (1080, 1920)  # height, width: the product's delivery size (smaller frames are weaker, see perf/RESULTS.md)
FRAMES = 16


def _frames(samples: Path, photo: str = "hopper.jpg") -> np.ndarray:
    """A slow pan across a real photograph: real texture and motion, not noise."""
    height, width = SIZE
    image = Image.open(samples / photo).convert("RGB")
    scale = max((width + 32) / image.width, (height + 32) / image.height)
    base = np.asarray(image.resize((round(image.width * scale), round(image.height * scale)),
                                   Image.Resampling.LANCZOS))
    offsets = [(round(16 + 15 * np.sin(i / 5)), round(16 + 15 * np.cos(i / 7))) for i in range(FRAMES)]
    return np.stack([base[dy:dy + height, dx:dx + width] for dy, dx in offsets])


def _ffmpeg(source: Path, target: Path, *args: str) -> Path:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), *args, str(target)],
                   check=True, timeout=120)
    return target


@pytest.fixture(scope="module")
def delivered(tmp_path_factory, samples) -> tuple[Path, dict]:
    """A signed, audited video from the delivery step, watermarked with JOB_ID's payload."""
    from client.signing import ensure_development_credential

    folder = tmp_path_factory.mktemp("watermark")
    credential = ensure_development_credential(folder / "signing" / "dev")
    options = ComplianceOptions(credential, audit_log=folder / "audit.log", tenant="tests")
    job = JobInputs((samples / "hopper.jpg").read_bytes(), job_id=JOB_ID)
    writer = CompliantVideoWriter(folder / "clip.mp4", 25, job, {"engine_id": "preview", "engine": "preview"}, {},
                                  EncodeOptions(), options)
    frames = _frames(samples)
    for start in range(0, FRAMES, 8):
        writer.write(frames[start:start + 8])
    return folder / "clip.mp4", writer.finish()


def _verify_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["verify", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_payload_is_a_fixed_length_hash_of_the_job_id_protected_by_a_crc():
    payload = payload_for_job(JOB_ID)
    assert len(payload) == 8 and payload == payload_for_job(JOB_ID) != payload_for_job(JOB_ID + "x")
    assert crc16(b"123456789") == 0x29B1  # the CRC-16/CCITT-FALSE check value
    assert len(coded_bits(payload)) == 80


def test_round_trip_through_the_real_encoder_and_verify_json(delivered, capsys):
    path, delivery = delivered
    expected = payload_for_job(JOB_ID).hex()
    assert delivery["encode"]["watermark"]["payload"] == expected
    code, summary = _verify_json(capsys, str(path))
    assert code == 0 and summary["valid"]
    mark = summary["watermark"]
    assert mark["status"] == "present" and mark["payload"] == expected == mark["expected_payload"]
    assert mark["matches_manifest"] is True and mark["algorithm"] == ALGORITHM
    assert mark["sync_z"] >= SYNC_Z_THRESHOLD and mark["frames_read"] == FRAMES
    assert set(mark) >= {"status", "algorithm", "payload", "sync_z", "bit_margin", "period_px", "frames_read",
                         "errors", "expected_payload", "matches_manifest"}
    # The C2PA manifest and the audit record name the same payload and algorithm.
    assert summary["generation"]["watermark"]["payload"] == expected
    assert summary["generation"]["watermark"]["algorithm"] == ALGORITHM
    record = find_record(Path(delivery["audit"]["log"]), job_id=JOB_ID)
    assert record["watermark"] == summary["generation"]["watermark"]


def test_the_watermark_survives_an_h264_re_encode_at_crf_30(delivered, tmp_path):
    path, _ = delivered
    copy = _ffmpeg(path, tmp_path / "crf30.mp4", "-c:v", "libx264", "-crf", "30", "-preset", "veryfast", "-an")
    reading = read_video(copy)
    assert reading.status == "present" and reading.payload == payload_for_job(JOB_ID).hex()


def test_a_stripped_copy_fails_c2pa_but_its_watermark_leads_to_the_audit_record(delivered, tmp_path, capsys):
    path, delivery = delivered
    copy = _ffmpeg(path, tmp_path / "stripped.mp4", "-map_metadata", "-1", "-c", "copy")
    code, summary = _verify_json(capsys, str(copy), "--audit-log", delivery["audit"]["log"])
    assert code == 1 and summary["status"] == "unsigned"
    assert summary["watermark"]["status"] == "present"
    assert summary["watermark"]["matches_manifest"] is None  # no manifest left to compare with
    assert summary["audit"]["record"] is None  # not the delivered bytes ...
    assert summary["audit"]["watermark_record"]["job_id"] == JOB_ID  # ... but traced to the job that made them
    main(["verify", str(copy), "--audit-log", delivery["audit"]["log"]])
    assert f"(job {JOB_ID}): a changed copy" in capsys.readouterr().out


def test_a_video_without_a_watermark_reads_absent_not_a_false_positive(samples, tmp_path, capsys):
    encoder = StreamingEncoder(tmp_path / "plain.mp4", 25)
    encoder.write(_frames(samples))
    assert encoder.close().watermark is None
    code, summary = _verify_json(capsys, str(tmp_path / "plain.mp4"))
    assert code == 1  # unsigned
    assert summary["watermark"]["status"] == "absent" and summary["watermark"]["payload"] is None
    assert summary["watermark"]["sync_z"] < SYNC_Z_THRESHOLD
    main(["verify", str(tmp_path / "plain.mp4")])
    assert "watermark:     absent" in capsys.readouterr().out


def test_embedding_touches_only_luma_and_costs_a_bounded_psnr(samples):
    frames = _frames(samples)
    luma = (frames[0].astype(np.float64) @ [0.2126, 0.7152, 0.0722] * 219 / 255 + 16).round().astype(np.uint8)
    embedder = WatermarkEmbedder(payload_for_job(JOB_ID), *SIZE)
    marked = embedder.embed(luma)
    mse = np.mean((marked.astype(np.float64) - luma) ** 2)
    assert 37.0 < 10 * np.log10(255**2 / mse) < 45.0
    assert embedder.describe()["payload"] == payload_for_job(JOB_ID).hex()


def test_unreadable_inputs_give_a_reading_not_a_traceback(tmp_path):
    (tmp_path / "not.mp4").write_bytes(b"not a video")
    assert read_video(tmp_path / "not.mp4").status == "error"
    encoder = StreamingEncoder(tmp_path / "tiny.mp4", 25, watermark=payload_for_job(JOB_ID))
    encoder.write(np.full((3, 40, 56, 3), 128, np.uint8))
    encoder.close()
    reading = read_video(tmp_path / "tiny.mp4")
    assert reading.status == "absent" and "too small" in reading.errors[0]
