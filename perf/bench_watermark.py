"""Invisible watermark (client/watermark.py): survival, false positives, picture cost and speed, written as JSON.

Clips (every one through the real `StreamingEncoder`, H.264 at the CLI's defaults: CRF 18, preset veryfast):
- `preview_512`: the preview engine's output on the bundled sample (astronaut.png + speech.wav) at its 512x512;
- `preview_1080p`: the same engine asked for 1920x1080;
- `photo_pan_1080p`: a slow pan across a real photograph (hopper.jpg), 1920x1080.
Each is encoded with the job's watermark and without. Both copies then go through each transform with the ffmpeg
binary (imageio-ffmpeg): H.264 re-encode at CRF 23 and 30; a 0.5x resize (bicubic) and a crop keeping 90 % of
each side at an off-grid offset, both re-encoded at CRF 18; metadata stripped and re-muxed (`-map_metadata -1
-c copy`). `talkinghead verify`'s reader (`read_video`, first 90 frames) then reads every file.

Reported per clip and transform: status, sync z, bit accuracy over the 64 payload bits, whether the payload (the
job id's hash) came back exactly (CRC checked). False positives: every unmarked file above plus pans over all four
sample photos at four sizes, none watermarked; a `present` there is a false positive. Picture cost: PSNR of the
luma the encoder receives with vs without the watermark, and of the delivered video against the source frames
with and without it. Speed: embedding time per 1080p frame (CPU), encoder throughput with and without it, and
the time to read a file.

    python perf/bench_watermark.py --out perf/results/watermark_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
from bench_encoding import _cpu  # perf/ is on sys.path when run as a script
from PIL import Image
from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.encoding import EncodeOptions, StreamingEncoder
from client.watermark import (
    ALGORITHM,
    DEFAULT_STRENGTH,
    PAYLOAD_BITS,
    SYNC_Z_THRESHOLD,
    WatermarkEmbedder,
    coded_bits,
    payload_for_job,
    read_video,
)

SAMPLES = Path(SAMPLE_PHOTO).parent
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-an"]
TRANSFORMS: dict[str, list[str] | None] = {
    "original": None,
    "h264_crf23": [*X264, "-crf", "23"],
    "h264_crf30": [*X264, "-crf", "30"],
    "resize_0.5x": ["-vf", "scale=trunc(iw/4)*2:trunc(ih/4)*2:flags=bicubic", *X264, "-crf", "18"],
    "crop_10pct": ["-vf", "crop=trunc(iw*0.45)*2:trunc(ih*0.45)*2:trunc(iw*0.03):trunc(ih*0.07)", *X264, "-crf", "18"],
    "strip_metadata": ["-map_metadata", "-1", "-c", "copy"],
}
PAN = 24


def _pan(photo: Path, width: int, height: int, frames: int) -> np.ndarray:
    image = Image.open(photo).convert("RGB")
    scale = max((width + 2 * PAN) / image.width, (height + 2 * PAN) / image.height)
    base = np.asarray(image.resize((round(image.width * scale), round(image.height * scale)),
                                   Image.Resampling.LANCZOS))
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        dx, dy = round(PAN * (1 + np.sin(i / 23))), round(PAN * (1 + np.cos(i / 31)))
        out[i] = base[dy:dy + height, dx:dx + width]
    return out


def _preview(width: int, height: int, frames: int, fps: float) -> np.ndarray:
    from python_backends.generation.job import GenerationJob, GenerationParams
    from python_backends.generation.preview import PreviewEngine
    from python_backends.generation.wan.animate.engine import dlib_landmarker

    photo = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))
    with wave.open(str(SAMPLE_AUDIO)) as handle:
        speech = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32) / 32768
    job = GenerationJob(photo, GenerationParams(width=width, height=height, fps=fps, max_duration_s=frames / fps),
                        landmarks=dlib_landmarker()(photo), waveform=speech)
    return np.concatenate([chunk.frames for chunk in PreviewEngine().generate(job)])[:frames]


def _encode(path: Path, frames: np.ndarray, fps: float, payload: bytes | None) -> float:
    """Encode through the real encoder; returns the encoder's seconds (write + close)."""
    started = time.perf_counter()
    encoder = StreamingEncoder(path, fps, options=EncodeOptions(), watermark=payload)
    for start in range(0, len(frames), 16):
        encoder.write(frames[start:start + 16])
    encoder.close()
    return time.perf_counter() - started


def _transform(source: Path, name: str, folder: Path) -> Path:
    args = TRANSFORMS[name]
    if args is None:
        return source
    out = folder / f"{source.stem}.{name}.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(source), *args, str(out)], check=True, timeout=600)
    return out


def _decode(path: Path, fmt: str) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format=fmt) for frame in container.decode(video=0)])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return round(10 * np.log10(255.0**2 / mse), 2) if mse > 0 else float("inf")


def _luma_in(frames: np.ndarray) -> np.ndarray:
    """The luma plane exactly as the encoder hands it to x264 (same conversion as StreamingEncoder.write)."""
    from av.video.reformatter import ColorRange, Colorspace

    out = []
    for image in frames:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
        out.append(frame.to_ndarray()[: image.shape[0]])
    return np.stack(out)


def _read(path: Path, truth: np.ndarray, expected: str, max_frames: int) -> dict:
    started = time.perf_counter()
    reading = read_video(path, max_frames)
    seconds = time.perf_counter() - started
    bits = np.array(reading.bits) if reading.bits is not None else None
    return {
        "status": reading.status, "sync_z": reading.sync_z,
        "bit_accuracy": None if bits is None else round(float(np.mean(bits == truth)), 4),
        "exact": reading.payload == expected, "period_px": reading.period_px, "frames_read": reading.frames_read,
        "read_s": round(seconds, 3),
    }


def bench_clip(name: str, frames: np.ndarray, fps: float, folder: Path, max_frames: int) -> tuple[dict, list[dict]]:
    job_id = f"bench-{name}"
    payload = payload_for_job(job_id)
    truth = coded_bits(payload)[:PAYLOAD_BITS]
    marked, plain = folder / f"{name}.marked.mp4", folder / f"{name}.plain.mp4"
    encode_marked_s = _encode(marked, frames, fps, payload)
    encode_plain_s = _encode(plain, frames, fps, None)
    height, width = frames.shape[1:3]
    embedder = WatermarkEmbedder(payload, height, width)
    luma = _luma_in(frames)
    marked_luma = np.stack([embedder.embed(y) for y in luma])
    decoded_marked, decoded_plain = _decode(marked, "rgb24"), _decode(plain, "rgb24")
    result = {
        "frames": len(frames), "width": width, "height": height, "fps": fps, "chip_px": embedder.chip_px,
        "payload": payload.hex(),
        "psnr_db": {
            "embedding_luma": _psnr(marked_luma, luma),
            "delivered_rgb_with_watermark": _psnr(decoded_marked, frames),
            "delivered_rgb_without_watermark": _psnr(decoded_plain, frames),
            "marked_vs_plain_decoded_luma": _psnr(_decode(marked, "gray"), _decode(plain, "gray")),
        },
        "encode_fps": {"with_watermark": round(len(frames) / encode_marked_s, 2),
                       "without_watermark": round(len(frames) / encode_plain_s, 2)},
        "transforms": {},
    }
    unmarked = []
    for transform in TRANSFORMS:
        result["transforms"][transform] = _read(_transform(marked, transform, folder), truth, payload.hex(),
                                                max_frames)
        reading = _read(_transform(plain, transform, folder), truth, payload.hex(), max_frames)
        unmarked.append({"video": f"{name}.plain.{transform}", "status": reading["status"],
                         "sync_z": reading["sync_z"]})
        print(f"{name:16s} {transform:15s} marked {result['transforms'][transform]}  unmarked {reading['status']}",
              flush=True)
    return result, unmarked


def extra_unmarked(folder: Path, frames: int, max_frames: int) -> list[dict]:
    out = []
    for photo in ("astronaut.png", "hopper.jpg", "no_face.png", "profile.png"):
        for width, height in ((640, 360), (854, 480), (1280, 720), (1920, 1080)):
            path = folder / f"unmarked_{Path(photo).stem}_{height}.mp4"
            _encode(path, _pan(SAMPLES / photo, width, height, frames), 25, None)
            reading = read_video(path, max_frames)
            out.append({"video": path.stem, "status": reading.status, "sync_z": reading.sync_z})
            path.unlink()
    return out


def embed_cost_1080p(repeats: int) -> dict:
    frames = _pan(SAMPLES / "hopper.jpg", 1920, 1080, repeats)
    luma = _luma_in(frames)
    embedder = WatermarkEmbedder(payload_for_job("cost"), 1080, 1920)
    times = []
    for y in luma:
        started = time.perf_counter()
        embedder.embed(y)
        times.append((time.perf_counter() - started) * 1000)
    return {"frames": repeats, "median_ms": round(float(np.median(times)), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=90, help="frames per clip (default 90)")
    parser.add_argument("--read-frames", type=int, default=90, help="frames the reader averages (verify's default)")
    parser.add_argument("--quick", action="store_true", help="one small clip, few frames: a smoke run")
    args = parser.parse_args(argv)
    clips = {
        "preview_512": lambda n: (_preview(512, 512, n, 25.0), 25.0),
        "preview_1080p": lambda n: (_preview(1920, 1080, n, 25.0), 25.0),
        "photo_pan_1080p": lambda n: (_pan(SAMPLES / "hopper.jpg", 1920, 1080, n), 30.0),
    }
    if args.quick:
        clips = {"preview_512": clips["preview_512"]}
    results, unmarked = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, make in clips.items():
            frames, fps = make(args.frames)
            results[name], false = bench_clip(name, frames, fps, folder, args.read_frames)
            unmarked += false
            del frames
        unmarked += extra_unmarked(folder, 8 if args.quick else 30, args.read_frames)
    positives = [u for u in unmarked if u["status"] == "present"]
    z_values = [u["sync_z"] for u in unmarked if u["sync_z"] is not None]
    report = {
        "what": "invisible watermark: survival of transforms, false positives, picture cost, CPU time",
        "machine": {"cpu": _cpu(), "cores": os.cpu_count()},
        "watermark": {"algorithm": ALGORITHM, "payload_bits": PAYLOAD_BITS, "strength": DEFAULT_STRENGTH,
                      "sync_z_threshold": SYNC_Z_THRESHOLD},
        "settings": {"frames_per_clip": args.frames, "read_frames": args.read_frames, "quick": args.quick,
                     "encoder": "StreamingEncoder h264 crf 18 veryfast", "transforms": {
                         k: " ".join(v) if v else "the delivered file" for k, v in TRANSFORMS.items()}},
        "clips": results,
        "false_positives": {"unmarked_videos": len(unmarked), "present": len(positives),
                            "unreadable": sum(u["status"] == "unreadable" for u in unmarked),
                            "max_sync_z": max(z_values) if z_values else None, "videos": unmarked},
        "embed_cost_1080p_cpu": embed_cost_1080p(10 if args.quick else 60),
    }
    write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("false_positives", "embed_cost_1080p_cpu")}, indent=1)[:2000])
    return report


if __name__ == "__main__":
    main()
