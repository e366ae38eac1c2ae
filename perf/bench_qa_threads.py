"""How QA's CPU stages scale with threads on this host: the flicker gate and the colour match over the frame pool
(quality/frame_pool.py), Face Mesh over its interpreter pool, each at 1..16 workers, with OpenCV's own threads
left at its default and set to 1 (its parallel_for inside each call competes with the pool's threads).

    python perf/bench_qa_threads.py --out perf/results/qa_threads_cpu.json

perf/results/qa_threads_h100.json came from its first version, which named the host by platform.processor() alone
("cpu": "x86_64") instead of results_file.hardware(); the timed code is the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import hardware, write_json  # noqa: E402

from python_backends.face_detection import FaceDetectorSettings, build_face_detector  # noqa: E402
from python_backends.face_landmarks import FaceLandmarksSettings, build_face_landmarks  # noqa: E402
from python_backends.quality import frame_pool  # noqa: E402
from python_backends.quality.colour import match_colour  # noqa: E402
from python_backends.quality.flicker import flicker_report  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "client" / "samples" / "hopper.jpg"


def clip(width: int, height: int, frames: int) -> np.ndarray:
    """The sample photo covering width x height, panned a pixel a frame, with noise (generated frames are not
    static)."""
    photo = cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB)
    scale = max(height / photo.shape[0], width / photo.shape[1]) * 1.05
    photo = cv2.resize(photo, (int(photo.shape[1] * scale) + 1, int(photo.shape[0] * scale) + 1))
    rng = np.random.default_rng(0)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        x = t % max(1, photo.shape[1] - width)
        noisy = photo[:height, x:x + width].astype(np.int16) + rng.integers(-4, 5, (height, width, 3), np.int16)
        out[t] = np.clip(noisy, 0, 255)
    return out


def timed(work, repeats: int = 2) -> float:
    work()  # warm: pools, interpreters, caches
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000.0, 1)


def set_pool(workers: int) -> None:
    frame_pool.MAX_WORKERS = workers
    frame_pool._pool = None  # rebuilt at the next map with the new size


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=150, help="one 5 s segment at 30 fps")
    parser.add_argument("--workers", default="1,2,4,8,16")
    args = parser.parse_args(argv)
    counts = [int(v) for v in args.workers.split(",")]
    frames = clip(832, 480, args.frames)
    detector = build_face_detector(FaceDetectorSettings(), "cpu")
    box = detector.predict({"image": frames[:1]})[0]["face_boxes"][0].astype(np.float32)
    boxes = np.repeat(box[None], len(frames), axis=0)
    cv_default = cv2.getNumThreads()
    rows = []
    for cv_threads in (cv_default, 1):
        cv2.setNumThreads(cv_threads)
        for workers in counts:
            set_pool(workers)
            mesh = build_face_landmarks(FaceLandmarksSettings(mediapipe_threads=workers), "cpu")
            row = {"opencv_threads": cv_threads, "workers": workers,
                   "flicker_ms": timed(lambda: flicker_report(frames, box)),
                   "colour_ms": timed(lambda: match_colour(frames, boxes, frames[0], box, True)),
                   "face_mesh_ms": timed(lambda mesh=mesh: mesh.predict({"image": frames, "face_box": boxes}))}
            rows.append(row)
            print(row, flush=True)
    cv2.setNumThreads(cv_default)
    result = {"script": "perf/bench_qa_threads.py", "argv": sys.argv[1:] if argv is None else argv,
              "hardware": hardware(), "cores": len(os.sched_getaffinity(0)),
              "frames": args.frames, "size": "832x480", "opencv_default_threads": cv_default, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
