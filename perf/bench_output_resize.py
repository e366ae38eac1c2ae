"""Where a job's frames reach the output size: talking_head's resize before streaming, or the encoder's colour
conversion on the client. Cost per frame and fidelity, written as JSON.

The two paths from generated RGB frames to the encoder's yuv420p frames at the output size:
- `server` (before): talking_head resizes with cv2 (Lanczos, 8x8 taps: quality/upscale.py), streams the output-size
  RGB frames, and the encoder converts them to BT.709 yuv420p (swscale);
- `encoder` (now, client/delivery.py `encoder_resize`): talking_head streams the generated frames and the encoder
  scales them in its conversion, one swscale pass with Lanczos (client/encoding.py `encoder_frame`).

Frames: a slow pan across the bundled photo at the output size (the ground truth), shrunk to the generated size with
cv2's area filter (what a generator at that size could have drawn). Fidelity: PSNR of each path's Y, Cb and Cr
planes against the ground truth converted by the same encoder, and of the two paths against each other. Cost: the
frames' host work, one thread (cv2.setNumThreads(1); swscale runs single-threaded here), the median over frames.
Bytes: what talking_head hands Triton and gRPC per frame.

    python perf/bench_output_resize.py --out perf/results/output_resize_cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_encoding import Frames, _cpu  # noqa: E402  (perf/ is on sys.path)
from cli_args import frame_size, frame_sizes  # noqa: E402
from results_file import write_json  # noqa: E402

from client.encoding import encoder_frame  # noqa: E402
from python_backends.quality.upscale import resize_frames  # noqa: E402


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width].astype(np.float64)
            for p in frame.planes]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return round(10 * np.log10(255.0 ** 2 / mse), 2) if mse else float("inf")


def _timed(work, count: int) -> tuple[list, float]:
    """Each of `count` results of work(i) and the median milliseconds of one."""
    out, times = [], []
    for i in range(count):
        began = time.perf_counter()
        out.append(work(i))
        times.append(time.perf_counter() - began)
    return out, round(1000 * statistics.median(times), 2)


def measure(generated: tuple[int, int], output: tuple[int, int], count: int) -> dict:
    truth = Frames(*output).chunk(0, count)
    small = np.stack([cv2.resize(frame, generated, interpolation=cv2.INTER_AREA) for frame in truth])
    reference = [_planes(encoder_frame(frame)) for frame in truth]
    # one swscale context per path, as StreamingEncoder keeps one per stream: it builds its filters on first use,
    # not a per-frame cost
    convert, scale = VideoReformatter(), VideoReformatter()
    encoder_frame(small[0], output, scale)
    resized, resize_ms = _timed(lambda i: resize_frames(small[i:i + 1], output)[0], count)
    encoder_frame(resized[0], None, convert)
    server, convert_ms = _timed(lambda i: encoder_frame(resized[i], None, convert), count)
    encoder, scale_ms = _timed(lambda i: encoder_frame(small[i], output, scale), count)
    server, encoder = [_planes(f) for f in server], [_planes(f) for f in encoder]

    def fidelity(planes: list[list[np.ndarray]], against: list[list[np.ndarray]]) -> dict:
        return {name: _psnr(np.stack([p[k] for p in planes]), np.stack([p[k] for p in against]))
                for k, name in enumerate(("y", "cb", "cr"))}

    return {
        "generated": list(generated), "output": list(output), "frames": count,
        "server": {"resize_ms": resize_ms, "convert_ms": convert_ms, "host_ms": round(resize_ms + convert_ms, 2),
                   "bytes_per_frame_streamed": output[0] * output[1] * 3,
                   "psnr_db_vs_truth": fidelity(server, reference)},
        "encoder": {"scale_and_convert_ms": scale_ms, "host_ms": scale_ms,
                    "bytes_per_frame_streamed": generated[0] * generated[1] * 3,
                    "psnr_db_vs_truth": fidelity(encoder, reference)},
        "psnr_db_encoder_vs_server": fidelity(encoder, server),
        "host_ms_ratio_server_over_encoder": round((resize_ms + convert_ms) / scale_ms, 2),
        "bytes_ratio_server_over_encoder": round(output[0] * output[1] / (generated[0] * generated[1]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("perf/results/output_resize_cpu.json"))
    parser.add_argument("--generated", type=frame_sizes, default="832x480,704x384",
                        help="generated sizes WxH, comma-separated")
    parser.add_argument("--output", type=frame_size, default="1920x1080")
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one thread for both paths: the contention-independent cost
    output = args.output
    load_before = os.getloadavg()
    runs = []
    for generated in args.generated:
        runs.append(measure(generated, output, args.frames))
        print(runs[-1], flush=True)
    write_json(args.out, {
        "benchmark": "bench_output_resize", "content": "slow pan across the bundled photo (bench_encoding.Frames)",
        "libraries": {"opencv": cv2.__version__, "pyav": av.__version__,
                      "libswscale": ".".join(map(str, av.library_versions["libswscale"]))},
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
