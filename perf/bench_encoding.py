"""Encoding speed on CPU and what streaming saves, written as JSON.

1. Encode only: a 10 s 1080p30 clip (300 frames, panning crops of the bundled photo, so the encoder sees real
   texture and motion rather than noise) with the sample speech, through `StreamingEncoder`, for H.264 and H.265
   at the defaults the CLI uses (preset veryfast, CRF 18 / 22). Encode fps = frames / (time in `write` + `close`).
2. Streaming vs encode-at-end, through the whole delivery step (`CompliantVideoWriter`: encode, XMP, C2PA signing
   with a development credential, self-verification, audit record). The generator is simulated as GPU-bound: it
   sleeps `chunk_frames / generator_fps` per chunk and leaves the CPU to the encoder, as a GPU generator does.
   Streaming encodes each chunk as it arrives; encode-at-end waits for the last chunk, then encodes everything.
   Time saved = end-to-end(at end) - end-to-end(streaming); time to first encoded byte is from the job start.
3. With `--generated WxH --marks`, part 1 as the served delivery runs it: frames arrive at the generated size and
   the encoder scales them to the output size in its colour conversion, draws the AI label and embeds the
   watermark; `--prepare-threads 1,0` times that per value of EncodeOptions.prepare_threads (1: inline, 0: auto).
   `--thread-type frame` runs x264 with frame threads instead of PyAV's default slice threads.

    python perf/bench_encoding.py --out perf/results/encoding_cpu.json
    python perf/bench_encoding.py --generated 832x480 --marks --prepare-threads 1,0 --codecs h264 --encode-only \
        --out perf/results/encoding_prepare_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import c2pa
import numpy as np
from cli_args import frame_size  # noqa: E402  (perf/ is on sys.path)
from PIL import Image
from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.compliance import ComplianceOptions, CompliantVideoWriter, JobInputs
from client.disclosure import LABEL_TEXT
from client.encoding import THREAD_TYPES, EncodeOptions, StreamingEncoder
from client.probe import probe
from client.signing import ensure_development_credential
from client.watermark import payload_for_job

PAN = 24  # pixels of margin for the pan


class Frames:
    """Frame i of a slow pan across the photo, at the requested size (cheap: a crop of one prepared image)."""

    def __init__(self, width: int, height: int) -> None:
        image = Image.open(SAMPLE_PHOTO).convert("RGB")
        scale = max((width + 2 * PAN) / image.width, (height + 2 * PAN) / image.height)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        self.base = np.asarray(image)
        self.width, self.height = width, height

    def chunk(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, self.height, self.width, 3), np.uint8)
        for k in range(count):
            i = start + k
            dx, dy = round(PAN * (1 + np.sin(i / 23))), round(PAN * (1 + np.cos(i / 31)))
            out[k] = self.base[dy:dy + self.height, dx:dx + self.width]
        return out


class NoiseFrames:
    """Frames like the GPU benchmarks' random-weights video: noise drawn at the generated size, softened (Gaussian,
    sigma 1 px) and resized to the output size with Lanczos. Calibrated by its bit rate: at CRF 18 it costs ~287 KB
    a 1080p frame here, the H200 runs' random-weights clips 256 KB (e2e_liveavatar_h200_start.json, 832x480)."""

    def __init__(self, width: int, height: int, generated: tuple[int, int] = (832, 480)) -> None:
        self.width, self.height, self.generated = width, height, generated

    def chunk(self, start: int, count: int) -> np.ndarray:
        import cv2

        rng = np.random.default_rng(start)
        out = np.empty((count, self.height, self.width, 3), np.uint8)
        for k in range(count):
            small = cv2.GaussianBlur(rng.integers(0, 256, (*self.generated[::-1], 3), np.uint8), (0, 0), 1.0)
            out[k] = cv2.resize(small, (self.width, self.height), interpolation=cv2.INTER_LANCZOS4)
        return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process: the encoder's included
    return usage.ru_utime + usage.ru_stime


def encode_only(frames: Frames, total: int, fps: float, chunk: int, codec: str, folder: Path,
                options: EncodeOptions | None = None, marks: bool = False) -> dict:
    """`options` (codec aside): scaling and threads; `marks`: the AI label and the watermark, as delivered."""
    options = replace(options or EncodeOptions(), codec=codec)
    encoder = StreamingEncoder(folder / f"encode_{codec}.mp4", fps, audio=SAMPLE_AUDIO, options=options,
                               label=LABEL_TEXT if marks else None,
                               watermark=payload_for_job("bench") if marks else None)
    busy = cpu = 0.0
    for start in range(0, total, chunk):
        block = frames.chunk(start, min(chunk, total - start))
        began, cpu_began = time.perf_counter(), _cpu_s()
        encoder.write(block)
        busy += time.perf_counter() - began
        cpu += _cpu_s() - cpu_began
    began, cpu_began = time.perf_counter(), _cpu_s()
    result = encoder.close()
    busy += time.perf_counter() - began
    cpu += _cpu_s() - cpu_began
    info = probe(result.path)
    return {
        "codec": codec, "prepare_threads": options.effective_prepare_threads, "frames": result.frames,
        "encode_s": round(busy, 3), "encode_fps": round(total / busy, 2),
        # CPU time is what the encoder costs whatever else runs on the machine; wall time is what a user waits.
        "cpu_s": round(cpu, 3), "cpu_ms_per_frame": round(1000 * cpu / total, 1),
        "fps_per_busy_core": round(total / cpu, 2),
        "realtime_factor": round(total / fps / busy, 3), "close_s": round(result.close_s, 3),
        "first_packet_after_first_frame_s": round(result.time_to_first_packet_s - result.time_to_first_frame_s, 4),
        "bytes": result.bytes, "video_kbit_s": round(result.bytes * 8 / (total / fps) / 1000, 1),
        "probe": {"codec": info.video_codec, "tag": info.video_tag, "fps": info.fps, "frames": info.frames,
                  "width": info.width, "height": info.height, "audio_duration_s": info.audio_duration_s,
                  "video_duration_s": info.video_duration_s},
    }


def pipeline(frames: Frames, total: int, fps: float, chunk: int, generator_fps: float, codec: str, folder: Path,
             streaming: bool, home: Path) -> dict:
    chunks: queue.Queue = queue.Queue()

    generated: list[float] = []

    def generate() -> None:
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            time.sleep(count / generator_fps)  # the GPU works; the CPU is free
            chunks.put((start, count))
        generated.append(time.perf_counter() - t0)
        chunks.put(None)

    job = JobInputs(SAMPLE_PHOTO.read_bytes(), SAMPLE_AUDIO.read_bytes(), None, {"fps": fps})
    credential = ensure_development_credential(home / "signing" / "dev")
    compliance = ComplianceOptions(credential, audit_log=home / "audit.log")
    t0 = time.perf_counter()
    producer = threading.Thread(target=generate)
    producer.start()
    writer = CompliantVideoWriter(folder / f"{'stream' if streaming else 'at_end'}_{codec}.mp4", fps, job,
                                  {"engine_id": "preview", "engine": "benchmark-pan"}, {}, EncodeOptions(codec=codec),
                                  compliance, t0=t0)
    pending = []
    while (item := chunks.get()) is not None:
        if streaming:
            writer.write(frames.chunk(*item))
        else:
            pending.append(item)  # frames are re-made from (start, count) later: no 1.9 GB buffer in RAM
    for item in pending:
        writer.write(frames.chunk(*item))
    delivery = writer.finish()
    end_to_end = time.perf_counter() - t0
    producer.join()
    return {
        "mode": "streaming" if streaming else "encode_at_end", "codec": codec,
        "generation_s": round(generated[0], 3), "end_to_end_s": round(end_to_end, 3),
        "after_generation_s": round(end_to_end - generated[0], 3),
        "time_to_first_encoded_byte_s": delivery["encode"]["time_to_first_packet_s"],
        "finish_timings_s": delivery["timings"], "signed": delivery["signed"],
        "verify_valid": delivery["verify"]["valid"], "bytes": delivery["encode"]["bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("perf/results/encoding_cpu.json"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--chunk-frames", type=int, default=16)
    parser.add_argument("--generator-fps", type=float, default=10.0,
                        help="simulated generator pace; 10 = a 10 s 30 fps clip in 30 s (the project's target)")
    parser.add_argument("--codecs", default="h264,h265")
    parser.add_argument("--content", choices=("photo", "noise"), default="photo",
                        help="photo: a pan across the bundled photo; noise: like the random-weights GPU runs' video")
    parser.add_argument("--encode-only", action="store_true", help="skip the streaming vs encode-at-end part")
    parser.add_argument("--generated", type=frame_size, default=None,
                        help="WxH frames arrive at, scaled by the encoder to the output")
    parser.add_argument("--marks", action="store_true", help="the AI label and the watermark, as delivered")
    parser.add_argument("--prepare-threads", default="0", help="comma-separated EncodeOptions.prepare_threads")
    parser.add_argument("--thread-type", choices=tuple(THREAD_TYPES), default="slice",
                        help="EncodeOptions.thread_type of every run")
    args = parser.parse_args()
    total = round(args.seconds * args.fps)
    made = args.generated or (args.width, args.height)
    frames = Frames(*made) if args.content == "photo" else NoiseFrames(*made)
    base = EncodeOptions(size=(args.width, args.height) if args.generated else None, thread_type=args.thread_type)
    threads = [int(v) for v in args.prepare_threads.split(",")]
    codecs = args.codecs.split(",")
    load_before = os.getloadavg()
    cpu_before = _cpu_s()
    with tempfile.TemporaryDirectory() as scratch:
        folder, home = Path(scratch), Path(scratch) / "home"
        encode = {}
        for codec in codecs:
            for repeat, n in enumerate(threads):  # one value: keyed by codec alone, as before
                key = codec if len(threads) == 1 else f"{codec}/prepare_threads={n}"
                run = threads[:repeat + 1].count(n)
                if run > 1:  # a value given again (an A/B/A/B order) is a run of its own
                    key += f"/run{run}"
                encode[key] = encode_only(frames, total, args.fps, args.chunk_frames, codec, folder,
                                          replace(base, prepare_threads=n), args.marks)
                print(json.dumps(encode[key]))
        comparison = {}
        for codec in codecs if not args.encode_only else ():
            runs = {mode: pipeline(frames, total, args.fps, args.chunk_frames, args.generator_fps, codec, folder,
                                   mode == "streaming", home) for mode in ("streaming", "encode_at_end")}
            saved = runs["encode_at_end"]["end_to_end_s"] - runs["streaming"]["end_to_end_s"]
            comparison[codec] = {**runs, "time_saved_s": round(saved, 3),
                                 "time_saved_fraction": round(saved / runs["encode_at_end"]["end_to_end_s"], 3)}
            print(json.dumps(comparison[codec]))
    result = {
        "benchmark": "bench_encoding",
        "clip": {"seconds": args.seconds, "fps": args.fps, "frames": total, "width": args.width,
                 "height": args.height, "chunk_frames": args.chunk_frames, "audio": SAMPLE_AUDIO.name,
                 "generated": list(made), "label_and_watermark": args.marks,
                 "content": "panning crops of the bundled sample photo" if args.content == "photo" else
                 NoiseFrames.__doc__.split(".")[0]},
        "encoder": {"library": f"PyAV {av.__version__}, libavcodec "
                               + ".".join(map(str, av.library_versions["libavcodec"])),
                    "preset": "veryfast", "crf": {"h264": 18, "h265": 22}, "threads": "auto",
                    "thread_type": args.thread_type},
        "generator": {"simulated": "GPU-bound: sleeps chunk_frames / generator_fps per chunk, CPU left free",
                      "generator_fps": args.generator_fps},
        "c2pa": f"c2pa-python {c2pa.__version__}",
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "benchmark_cpu_s": round(_cpu_s() - cpu_before, 1),
                    "note": "shared machine: other processes compete for the cores; cpu_ms_per_frame is the "
                            "contention-independent figure, wall-clock fps the one a user sees"},
        "encode_only": encode,
        "streaming_vs_encode_at_end": comparison,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
