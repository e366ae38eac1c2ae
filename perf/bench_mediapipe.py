"""MediaPipe (BlazeFace + Face Mesh, the defaults now) against the previous defaults (MTCNN + dlib's 68 points) on
CPU, written as JSON.

Photos: the bundled samples (client/samples), every photo of the reliability corpus (tests/reliability/corpus.py)
that decodes, and each sample portrait mirrored and turned by +-20 degrees. Per detector/landmarker pair, in
process (the served predictors, through the ModelCaller interface the pipeline uses):
- faces found per photo, and the photo checks' outcome (`preprocessing._face_chain`: accepted or the refusal code)
  against what the corpus expects;
- landmark agreement where both pairs find the same largest face (boxes overlapping, IoU > 0.3): NME of the
  mesh's iBUG-68 subset against dlib's 68 points, over dlib's eye-centre distance, for all points, the inner face
  (brows, eyes, nose, mouth: 17-67), the jaw line (0-16) and the mouth (48-67); once end to end (each pair with
  its own detector's box) and once with the mesh run on MTCNN's box (the landmarker alone);
- head-pose agreement: |difference| of yaw, pitch, roll (solvePnP on the 68 points, as served);
- time per frame: each detector and landmarker on 16-frame batches of a preview clip, and the QA face tracking
  (`quality.tracking.track_faces`: the detector every 10th frame, the landmarker on every frame) per frame.
dlib's 68 points are a reference, not ground truth: it was trained on iBUG 300-W, whose jaw points the mesh has no
exact counterpart for (mesh_layout.MESH_TO_IBUG68 picks the nearest face-oval vertices).

`--only expected_face`: face_detector's expected_face_px (the face size QA tracking expects) on 832x480 frames,
the size the Wan profiles generate. BlazeFace's whole-image floor (the smallest face its short- and full-range
passes find without tiles: the sample faces downscaled until they are lost, on grey and noise canvases of three
sizes) and ms per frame, without the hint (before) and with it (after), of BlazeFace and MTCNN on a faceless noise
frame and on the sample photo fitted to the frame as the generators fit it.

`--only pool`: the interpreter pools (face_detector's and face_landmarks' mediapipe_threads). Whether
ai-edge-litert's `Interpreter.invoke()` releases the GIL: the longest stall of a pure-Python loop in the main thread
while another thread runs one long invoke (held GIL: a stall as long as the invoke), and invokes per second of 1 and
2 threads each with its own interpreter, with the process' CPU time over wall time (above 1: both ran at once; on a
busy machine the cores, not the GIL, cap it). Then ms per 150-frame 832x480 request (the preview clip of the sample)
of landmarks (Face Mesh, one box per frame) and detection (BlazeFace + mesh keypoints) per pool size, interleaved,
and whether the outputs equal the one-interpreter outputs bit for bit.

    python perf/bench_mediapipe.py --out perf/results/mediapipe_cpu.json
    python perf/bench_mediapipe.py --only expected_face --out perf/results/face_hint_cpu.json
    python perf/bench_mediapipe.py --only pool --pools 1,2 --out perf/results/mediapipe_pool_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_encoding import _cpu  # perf/ is on sys.path when run as a script
from bench_quality import LocalCaller, _speech
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "reliability")]

from corpus import PHOTO_CASES  # noqa: E402
from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from python_backends import spec  # noqa: E402
from python_backends.errors import InputError  # noqa: E402
from python_backends.face_detection import FaceDetectorSettings, build_face_detector  # noqa: E402
from python_backends.face_landmarks import FaceLandmarksSettings, build_face_landmarks  # noqa: E402
from python_backends.face_landmarks.head_pose import to_ibug68  # noqa: E402
from python_backends.generation.job import GenerationJob, GenerationParams  # noqa: E402
from python_backends.generation.preview import PreviewEngine  # noqa: E402
from python_backends.preprocessing import _face_chain, _Timer  # noqa: E402
from python_backends.quality.settings import QualitySettings  # noqa: E402
from python_backends.quality.tracking import track_faces  # noqa: E402
from python_backends.validation import ValidationLimits, decode_image  # noqa: E402

SAMPLES = ROOT / "client" / "samples"
PORTRAITS = ("astronaut.png", "hopper.jpg", "profile.png")
BEFORE, AFTER = "mtcnn+dlib68", "blazeface+facemesh468"
GROUPS = {"all": slice(0, 68), "inner": slice(17, 68), "jaw": slice(0, 17), "mouth": slice(48, 68)}
BATCH = 16
SAME_FACE_IOU = 0.3  # both pairs' largest faces must overlap this much to compare their landmarks


def _pairs(threads: int) -> dict[str, tuple[FaceDetectorSettings, FaceLandmarksSettings]]:
    return {
        BEFORE: (FaceDetectorSettings(backbone="mtcnn", threads=threads), FaceLandmarksSettings(engine="dlib")),
        AFTER: (FaceDetectorSettings(threads=threads), FaceLandmarksSettings(threads=threads)),
    }


def _photos(limits: ValidationLimits) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """name -> (decoded RGB photo or None, the corpus' expected outcome or None)."""
    photos: dict[str, tuple[np.ndarray | None, str | None]] = {}
    for name in (*PORTRAITS, "no_face.png"):
        image = np.asarray(Image.open(SAMPLES / name).convert("RGB"))
        photos[f"sample/{name}"] = (image, None)
        if name in PORTRAITS:
            photos[f"variant/{name}/mirrored"] = (np.ascontiguousarray(image[:, ::-1]), None)
            for angle in (-20, 20):
                h, w = image.shape[:2]
                turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
                photos[f"variant/{name}/turned{angle:+d}"] = (cv2.warpAffine(image, turn, (w, h)), None)
    for case in PHOTO_CASES:
        try:
            photos[f"corpus/{case.name}"] = (decode_image(case.data, limits), case.expect)
        except InputError as exc:
            photos[f"corpus/{case.name}"] = (None, case.expect if exc.code == case.expect else f"decode:{exc.code}")
    return photos


async def _face(call: LocalCaller, image: np.ndarray) -> dict:
    """Faces found, the largest one's box, 68 points and head pose, and the photo checks' outcome."""
    detected = await call(spec.FACE_DETECTOR, {spec.IMAGE: image[None]})
    count = int(detected[spec.FACE_COUNT].reshape(-1)[0])
    out: dict = {"faces": count}
    if count:
        boxes = detected[spec.FACE_BOXES][0][:count]
        box = boxes[int(np.argmax(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)))]
        marks = await call(spec.FACE_LANDMARKS, {spec.IMAGE: image[None], spec.FACE_BOX: box[None]})
        out.update(box=box, points=to_ibug68(marks[spec.LANDMARKS][0]), pose=marks[spec.HEAD_POSE][0])
    try:
        await _face_chain(image, call, ValidationLimits(), _Timer())
        out["outcome"] = "accepted"
    except InputError as exc:
        out["outcome"] = exc.code
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def _nme(points: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    eyes = np.linalg.norm(reference[36:42].mean(0) - reference[42:48].mean(0))
    errors = np.linalg.norm(points - reference, axis=1) / max(eyes, 1e-6)
    return {group: float(errors[index].mean()) for group, index in GROUPS.items()}


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {"median": round(float(np.median(array)), 4), "mean": round(float(array.mean()), 4),
            "max": round(float(array.max()), 4), "n": int(len(array))}


def _per_frame_ms(work, frames: int, repeats: int) -> float:
    work()  # warm-up: first-call allocations, interpreter resize
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return round((time.perf_counter() - started) / repeats / frames * 1000.0, 2)


def _clip(call: LocalCaller, seconds: float, fps: float, height: int = 512, width: int = 512) -> np.ndarray:
    photo = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))
    found = asyncio.run(_face(call, photo))
    job = GenerationJob(photo=photo, landmarks=found["points"], waveform=_speech(seconds),
                        params=GenerationParams(width=width, height=height, fps=fps, max_duration_s=seconds))
    return np.concatenate([chunk.frames for chunk in PreviewEngine().generate(job)])


FLOOR_PHOTOS = ("astronaut.png", "hopper.jpg")
FLOOR_CANVASES = ((480, 832), (512, 512), (576, 1024))  # (height, width)
WAN_FRAME = (480, 832)
POOL_FRAMES = 150  # a whole segment's frames: one QA request in the GPU profile (max_batch_size 160)


def _face_at(photo: np.ndarray, box: np.ndarray, side: float, canvas: np.ndarray) -> np.ndarray:
    """The photo scaled so that its face's longer side is `side`, the face at the canvas' centre."""
    scale = side / max(box[2] - box[0], box[3] - box[1])
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    height, width = canvas.shape[:2]
    x0, y0 = int(width / 2 - (box[0] + box[2]) / 2 * scale), int(height / 2 - (box[1] + box[3]) / 2 * scale)
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(height, y0 + small.shape[0]), min(width, x0 + small.shape[1])
    out = canvas.copy()
    out[top:bottom, left:right] = small[top - y0: bottom - y0, left - x0: right - x0]
    return out


def _whole_image_floor(detector) -> dict:
    """Per photo, canvas and background: the smallest face side from which every larger one (to 400 px) is found
    by BlazeFace's whole-image passes alone (no tiles), in pixels and as a fraction of the canvas' longer side."""
    networks = detector.engine.networks
    sides = [*range(400, 80, -4), *range(80, 5, -1)]
    rows = []
    for name in FLOOR_PHOTOS:
        photo = np.asarray(Image.open(SAMPLES / name).convert("RGB"))
        box = detector.predict({spec.IMAGE: photo[None]})[0][spec.FACE_BOXES][0]
        for height, width in FLOOR_CANVASES:
            for background in ("grey", "noise"):
                canvas = (np.full((height, width, 3), 128, np.uint8) if background == "grey" else
                          np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
                found = {}
                for side in sides:
                    frame = _face_at(photo, box, side, canvas)
                    found[side] = any(len(network(frame)[0]) for network in networks)
                floor = min(s for s in sides if all(found[t] for t in sides if t >= s))
                rows.append({"photo": name, "canvas": f"{width}x{height}", "background": background,
                             "floor_px": floor, "floor_of_longer_side": round(floor / max(height, width), 4),
                             "smallest_found_px": min(s for s in sides if found[s])})
    return {"method": "face side scanned from 400 px down (4 px steps above 80, 1 px below); floor = the size from "
                      "which every larger one is found", "rows": rows,
            "max_floor_of_longer_side": max(r["floor_of_longer_side"] for r in rows)}


def _hint_timing(detectors: dict, call: LocalCaller, repeats: int) -> dict:
    """ms per 832x480 frame (one frame per request, median of `repeats` after a warm-up), before (no hint) and after
    (expected_face_px = the sample face as the preview engine fits the photo to the frame, covering it), on a
    faceless noise frame and on the preview's first frame of the sample."""
    from python_backends.quality.tracking import photo_face_px

    photo = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))
    box = detectors["blazeface"].predict({spec.IMAGE: photo[None]})[0][spec.FACE_BOXES][0]
    expected = photo_face_px(photo.shape, box, WAN_FRAME, covers=True)
    frames = {"faceless_noise": np.random.default_rng(0).integers(0, 256, (*WAN_FRAME, 3), dtype=np.uint8),
              "sample_face": _clip(call, 0.2, 25.0, *WAN_FRAME)[0]}
    hint = np.array([[expected]], np.float32)
    out: dict = {"frame": f"{WAN_FRAME[1]}x{WAN_FRAME[0]}", "expected_face_px": round(float(expected), 1)}
    for engine, detector in detectors.items():
        rows = {}
        for name, frame in frames.items():
            cases = {"before": {spec.IMAGE: frame[None]},
                     "after": {spec.IMAGE: frame[None], spec.EXPECTED_FACE_PX: hint}}
            times: dict[str, list[float]] = {when: [] for when in cases}
            faces = {when: int(detector.predict(inputs)[0][spec.FACE_COUNT][0]) for when, inputs in cases.items()}
            # Interleaved in alternating order, so that the shared machine's load and the caches treat both alike.
            for repeat in range(repeats):
                for when in (("before", "after") if repeat % 2 else ("after", "before")):
                    started = time.perf_counter()
                    detector.predict(cases[when])
                    times[when].append((time.perf_counter() - started) * 1000.0)
            row = {when: {"ms_per_frame": round(float(np.median(times[when])), 1), "faces": faces[when]}
                   for when in cases}
            row["speed_up"] = round(row["before"]["ms_per_frame"] / row["after"]["ms_per_frame"], 1)
            rows[name] = row
        out[engine] = rows
    return out


def expected_face(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    detectors = {"blazeface": build_face_detector(FaceDetectorSettings(threads=args.threads), "cpu"),
                 "mtcnn": build_face_detector(FaceDetectorSettings(backbone="mtcnn", threads=args.threads), "cpu")}
    from python_backends.mediapipe_models.blazeface import TILE_SKIP_MARGIN, WHOLE_IMAGE_FLOOR

    result = {
        "script": "perf/bench_mediapipe.py", "argv": sys.argv[1:], "cpu": _cpu(), "threads": args.threads,
        "whole_image_floor": _whole_image_floor(detectors["blazeface"]),
        "blazeface_constants": {"WHOLE_IMAGE_FLOOR": WHOLE_IMAGE_FLOOR, "TILE_SKIP_MARGIN": TILE_SKIP_MARGIN,
                                "tiles_skipped_from_px_at_832x480": round(TILE_SKIP_MARGIN * WHOLE_IMAGE_FLOOR * 832,
                                                                          1)},
        "time_per_frame": _hint_timing(detectors, LocalCaller(detectors["blazeface"].settings,
                                                              FaceLandmarksSettings(threads=args.threads),
                                                              safety=False), args.repeats),
    }
    result["load_average_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    result["note"] = ("in-process predictors (face_detector as served, default settings), one thread, on a shared "
                      "2-core machine (load average above); 'before' is the unchanged path without the hint")
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


def _invoke_until(interpreter, stop: float, calls: list[int], k: int) -> None:
    while time.perf_counter() < stop:
        interpreter.invoke()
        calls[k] += 1


def _gil(seconds_each: float = 1.0) -> dict:
    """Does invoke() release the GIL? A stall test and a 1-vs-2-thread throughput test on face_landmark.tflite."""
    from ai_edge_litert.interpreter import Interpreter

    from python_backends.mediapipe_models import files

    path = str(files.require("face_landmark"))

    def interpreter(batch: int) -> Interpreter:
        made = Interpreter(model_path=path, num_threads=1)
        index = made.get_input_details()[0]["index"]
        made.resize_tensor_input(index, [batch, 192, 192, 3])
        made.allocate_tensors()
        made.set_tensor(index, np.random.default_rng(0).random((batch, 192, 192, 3), dtype=np.float32))
        made.invoke()
        return made

    long = interpreter(100)
    started = time.perf_counter()
    long.invoke()
    invoke_ms = (time.perf_counter() - started) * 1000.0
    done = threading.Event()
    worker = threading.Thread(target=lambda: [long.invoke() for _ in range(3)] and done.set())
    gaps, last, spins = [], time.perf_counter(), 0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last, spins = now, spins + 1
    worker.join()
    stall = {"one_invoke_ms": round(invoke_ms, 1), "invokes": 3, "main_thread_loops_meanwhile": spins,
             "main_thread_longest_stall_ms": round(max(gaps) * 1000.0, 1)}

    throughput = {}
    for count in (1, 2, 1, 2):  # twice, alternating: the shared machine's load changes
        interpreters = [interpreter(1) for _ in range(count)]
        calls = [0] * count
        stop = time.perf_counter() + seconds_each
        threads = [threading.Thread(target=_invoke_until, args=(interpreters[k], stop, calls, k)) for k in range(count)]
        cpu, started = time.process_time(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        throughput.setdefault(f"{count}_threads", []).append(
            {"invokes_per_s": round(sum(calls) / wall, 1), "process_cpu_over_wall": round(cpu / wall, 2),
             "load_average_1min": round(os.getloadavg()[0], 2)})
    best = {k: max(r["invokes_per_s"] for r in v) for k, v in throughput.items()}
    return {"model": "face_landmark.tflite, 1 TFLite thread per interpreter", "stall": stall,
            "throughput": throughput,
            "two_over_one_threads": round(best["2_threads"] / best["1_threads"], 2),
            "releases_gil": stall["main_thread_longest_stall_ms"] < 0.5 * invoke_ms}


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def pool_timing(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    gil = _gil()
    sizes = [int(v) for v in args.pools.split(",")]
    detectors = {n: build_face_detector(FaceDetectorSettings(backbone="blazeface", threads=args.threads,
                                                             mediapipe_threads=n), "cpu") for n in sizes}
    landmarks = {n: build_face_landmarks(FaceLandmarksSettings(engine="mediapipe", threads=args.threads,
                                                               mediapipe_threads=n), "cpu") for n in sizes}
    first = sizes[0]
    call = LocalCaller(FaceDetectorSettings(threads=args.threads), FaceLandmarksSettings(threads=args.threads),
                       safety=False)
    frames = _clip(call, POOL_FRAMES / 25.0, 25.0, *WAN_FRAME)[:POOL_FRAMES]
    found = detectors[first].predict({spec.IMAGE: frames})
    boxes = np.stack([f[spec.FACE_BOXES][0] if int(f[spec.FACE_COUNT][0]) else np.array([316, 60, 516, 300], np.float32)
                      for f in found]).astype(np.float32)
    requests = {"landmarks": (landmarks, {spec.IMAGE: frames, spec.FACE_BOX: boxes}),
                "detection": (detectors, {spec.IMAGE: frames})}
    rows: dict = {}
    for name, (models, inputs) in requests.items():
        outputs = {n: models[n].predict(inputs) for n in sizes}  # also the warm-up
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for repeat in range(args.repeats):
            for n in (sizes if repeat % 2 == 0 else sizes[::-1]):
                started = time.perf_counter()
                models[n].predict(inputs)
                times[n].append((time.perf_counter() - started) * 1000.0)
        rows[name] = {f"mediapipe_threads_{n}": {"ms_per_request": round(float(np.median(times[n])), 1),
                                                 "min_ms": round(min(times[n]), 1),
                                                 "ms_per_frame": round(float(np.median(times[n])) / len(frames), 2),
                                                 "same_outputs_as_first": _same(outputs[first], outputs[n])}
                      for n in sizes}
        for n in sizes[1:]:
            rows[name][f"speed_up_{n}_over_{first}"] = round(
                rows[name][f"mediapipe_threads_{first}"]["ms_per_request"]
                / rows[name][f"mediapipe_threads_{n}"]["ms_per_request"], 2)
    result = {
        "script": "perf/bench_mediapipe.py", "argv": sys.argv[1:], "cpu": _cpu(), "cores": os.cpu_count(),
        "tflite_threads_per_interpreter": args.threads or "library default", "gil": gil,
        "request": {"frames": int(len(frames)), "size": f"{WAN_FRAME[1]}x{WAN_FRAME[0]}", "repeats": args.repeats,
                    "faces_found": int(sum(int(f[spec.FACE_COUNT][0]) > 0 for f in found))},
        "time_per_request": rows,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "note": "in-process predictors (served code, no Triton); median of the repeats, pool sizes interleaved; on a "
                "shared 2-core machine busy with other work (load average above), so 2 threads cannot reach 2x here",
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch and TFLite threads of every model")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the preview clip QA tracks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("all", "expected_face", "pool"), default="all",
                        help="expected_face: only face_detector's expected_face_px measurements; pool: only the "
                             "GIL check and the interpreter pools' request times")
    parser.add_argument("--pools", default="1,2", help="--only pool: the mediapipe_threads compared (the first is "
                                                        "the reference for the outputs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only == "expected_face":
        return expected_face(args)
    if args.only == "pool":
        return pool_timing(args)
    load_before = os.getloadavg()[0]
    limits = ValidationLimits()
    photos = _photos(limits)
    callers = {name: LocalCaller(det, marks, safety=False) for name, (det, marks) in _pairs(args.threads).items()}
    mesh_alone = LocalCaller(FaceDetectorSettings(backbone="mtcnn", threads=args.threads),
                             FaceLandmarksSettings(threads=args.threads), safety=False)

    per_photo, nme = {}, {"end_to_end": {g: [] for g in GROUPS}, "mesh_on_mtcnn_box": {g: [] for g in GROUPS}}
    pose_diff: dict[str, list[float]] = {"yaw": [], "pitch": [], "roll": []}
    for name, (image, expected) in photos.items():
        if image is None:
            per_photo[name] = {"decoded": False, "expected": expected}
            continue
        found = {pair: asyncio.run(_face(call, image)) for pair, call in callers.items()}
        row = {"decoded": True, "expected": expected,
               **{pair: {"faces": f["faces"], "outcome": f["outcome"]} for pair, f in found.items()}}
        before, after = found[BEFORE], found[AFTER]
        same_face = before["faces"] and after["faces"] and _iou(before["box"], after["box"]) > SAME_FACE_IOU
        if before["faces"] and after["faces"] and not same_face:
            row["largest_faces_differ"] = True  # e.g. equal faces in a grid: no landmark comparison
        if same_face:
            end_to_end = _nme(after["points"], before["points"])
            marks = asyncio.run(mesh_alone(spec.FACE_LANDMARKS, {spec.IMAGE: image[None],
                                                                 spec.FACE_BOX: before["box"][None]}))
            same_box = _nme(to_ibug68(marks[spec.LANDMARKS][0]), before["points"])
            for group in GROUPS:
                nme["end_to_end"][group].append(end_to_end[group])
                nme["mesh_on_mtcnn_box"][group].append(same_box[group])
            diff = np.abs(np.asarray(after["pose"], np.float64) - np.asarray(before["pose"], np.float64))
            for axis, value in zip(("yaw", "pitch", "roll"), diff):
                pose_diff[axis].append(float(value))
            row["nme_inner"] = round(end_to_end["inner"], 4)
            row["pose_abs_diff_deg"] = [round(float(v), 2) for v in diff]
        per_photo[name] = row

    decoded = [row for row in per_photo.values() if row["decoded"]]
    corpus = [row for name, row in per_photo.items() if name.startswith("corpus/") and row["decoded"]]
    faces_found = {pair: {
        "photos_with_a_face": sum(row[pair]["faces"] > 0 for row in decoded),
        "photos": len(decoded),
        "corpus_outcome_as_expected": sum(row[pair]["outcome"] == row["expected"] for row in corpus),
        "corpus_photos_decoded": len(corpus),
    } for pair in callers}

    frames = _clip(callers[AFTER], args.seconds, 25.0)
    batch = frames[:BATCH]
    timing = {}
    detect_every = QualitySettings().detect_every
    for pair, call in callers.items():
        detector = call.predictors[spec.FACE_DETECTOR.name]
        landmarker = call.predictors[spec.FACE_LANDMARKS.name]
        boxes = np.repeat(asyncio.run(_face(call, frames[0]))["box"][None], BATCH, axis=0).astype(np.float32)
        timing[pair] = {
            "detector_ms_per_frame": _per_frame_ms(lambda d=detector: d.predict({spec.IMAGE: batch}), BATCH,
                                                   args.repeats),
            "landmarks_ms_per_frame": _per_frame_ms(
                lambda m=landmarker, b=boxes: m.predict({spec.IMAGE: batch, spec.FACE_BOX: b}), BATCH, args.repeats),
            "qa_tracking_ms_per_frame": _per_frame_ms(
                lambda c=call: asyncio.run(track_faces(frames, c, detect_every)), len(frames), 1),
        }

    result = {
        "script": "perf/bench_mediapipe.py", "argv": sys.argv[1:], "cpu": _cpu(), "threads": args.threads,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "pairs": {pair: {"detector": c.predictors[spec.FACE_DETECTOR.name].weights.engine,
                         "landmarks": c.predictors[spec.FACE_LANDMARKS.name].weights.engine}
                  for pair, c in callers.items()},
        "faces_found": faces_found,
        "landmark_nme_vs_dlib": {kind: {g: _summary(v) for g, v in groups.items()} for kind, groups in nme.items()},
        "head_pose_abs_diff_deg": {axis: _summary(v) for axis, v in pose_diff.items()},
        "time_per_frame": {"clip": {"frames": int(len(frames)), "size": 512, "detect_every": detect_every,
                                    "batch": BATCH}, **timing},
        "per_photo": per_photo,
        "note": "NME over dlib's eye-centre distance; dlib is the reference, not ground truth. Time per frame: "
                "in-process predictors, one thread each, on a shared 2-core machine (load average above)",
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_photo"}, indent=2))
    return result


if __name__ == "__main__":
    main()
