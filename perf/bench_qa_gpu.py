"""QA of a 10 s clip with every gate on, per gate, on the GPU profile's models (the seed budgets 2-5 s; issue 19
targets <= 3 s on one H200).

The models are the ones `--model-config-name gpu` serves, built from its configs' parameters on `--device`
(cuda when there is one). `--random-weights` (default: ArcFace IResNet-50, SyncNet v2 and Wav2Lip, whose real
weights do not ship) writes random checkpoints in their official layouts where `--weights` has no real file
(perf/random_weights.py: speed does not depend on weight values; the verdicts of those models are noise and the
JSON says which were random). Every other model runs what the served profile would run here: the shipped
detector and Face Mesh landmarker (real weights, so the face track is real), NudeNet's shipped 320n.onnx
(onnxruntime's CUDA provider where onnxruntime-gpu is installed, else the CPU: the JSON names it). The detector
is never random: its boxes and keypoints feed every later model.

The clip is the preview engine's, from the bundled photo and speech (looped to --seconds), at the served GPU
profile's generated size and output rate (832x480, 30 fps: QA judges interpolated frames before the encoder's
resize), cut into segments as talking_head cuts it (`first_segment_s`, then `segment_s`). The gates call the
models in-process through a caller with the BLS caller's interface (bench_quality.LocalCaller: one request at a
time per model, models concurrently), with the GPU profile's request sizes (a whole 5 s segment per request).
Nothing else runs: the served figure (perf/served_e2e_gpu.py) adds the generator's and the encoder's contention.
Two measurements:

1. each gate alone over the whole clip, one after another (tracking = detector every 10th frame + landmarks on
   every frame; identity = ArcFace on the detected frames; lipsync = SyncNet over each segment; flicker; jaw +
   eyes + edge; content safety = NudeNet at 1 frame/s; mouth_refiner_all_frames = Wav2Lip over every frame, which
   the pipeline runs only on plosive runs and failed segments, so it is an upper bound; mouth_refiner_plosive_runs =
   the served pass, every plosive run of a segment in one request, and _one_request_each = the same runs one
   request per run, as the pass sent them before; with the refiner's network time of each of these);
2. the QA as talking_head runs it (`process_segment`: tracking, colour match, Wav2Lip on plosive runs, the gates
   concurrently, Wav2Lip again and a re-check when lip-sync fails), segment after segment: its wall time is the
   QA time of the clip.

    python perf/bench_qa_gpu.py --out perf/results/qa_gpu_h200.json
    python perf/bench_qa_gpu.py --device cpu --seconds 0.5 --fps 12 --size 128x128 --no-warmup --out /tmp/qa.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import SAMPLES, LocalCaller, _source, _speech  # noqa: E402
from cli_args import frame_size  # noqa: E402
from random_weights import FILES, describe, models_of, write_random_weights  # noqa: E402
from results_file import hardware, write_json  # noqa: E402  (perf/ is on sys.path)

from client.repository import config_path, load_config, parameters  # noqa: E402
from python_backends import spec  # noqa: E402
from python_backends.audio import mel  # noqa: E402
from python_backends.catalog import ROLES  # noqa: E402
from python_backends.errors import WeightsUnavailable  # noqa: E402
from python_backends.face_landmarks.head_pose import to_ibug68  # noqa: E402
from python_backends.generation.job import GenerationJob, GenerationParams  # noqa: E402
from python_backends.generation.preview import PreviewEngine  # noqa: E402
from python_backends.pipeline import TalkingHeadSettings, planned_length  # noqa: E402
from python_backends.quality.colour import match_colour  # noqa: E402
from python_backends.quality.envelope_sync import mouth_opening  # noqa: E402
from python_backends.quality.segment_job import plosive_runs, process_segment, refine_mouth  # noqa: E402
from python_backends.quality.segment_qa import (  # noqa: E402
    Boundary,
    JobContext,
    artifact_gates,
    flicker_gate,
    identity_gate,
    lipsync_gate,
    safety_gate,
)
from python_backends.quality.tracking import track_faces  # noqa: E402
from python_backends.settings import from_mapping  # noqa: E402
from python_backends.weights import official_path  # noqa: E402

PROFILE = "gpu"
BUILDERS = {
    spec.FACE_DETECTOR.name: ("python_backends.face_detection", "build_face_detector"),
    spec.FACE_LANDMARKS.name: ("python_backends.face_landmarks", "build_face_landmarks"),
    spec.FACE_EMBEDDER.name: ("python_backends.face_embedding", "build_face_embedder"),
    spec.CONTENT_SAFETY.name: ("python_backends.content_safety", "build_content_safety"),
    spec.LIPSYNC_SCORER.name: ("python_backends.lipsync_scorer.scorer", "build_lipsync_scorer"),
    spec.MOUTH_REFINER.name: ("python_backends.mouth_refiner", "build_mouth_refiner"),
}


DEFAULT_RANDOM = "face_embedder,lipsync_scorer,mouth_refiner"  # the roles whose real weights do not ship


def weights_root(given: Path | None, random: tuple[str, ...], scratch: Path
                 ) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A weights root with the given root's files where it has them and random ones for the `random` models it
    lacks (a model in neither runs what the served profile picks without files: its shipped weights); the files
    taken from `given`, and what was written at random."""
    if spec.FACE_DETECTOR.name in random:
        raise ValueError("--random-weights: the detector stays real (its boxes feed every later model)")
    root = scratch / "weights"
    real_files, missing = {}, []
    for model, name in FILES.items():
        real = official_path(model, name, given) if given is not None else None
        if real is not None:
            (root / model).mkdir(parents=True, exist_ok=True)
            (root / model / name).symlink_to(real.resolve())
            real_files[model] = str(real)
        elif model in random:
            missing.append(model)
    return root, real_files, describe(write_random_weights(root, tuple(missing)))


def build_models(root: Path, device: str) -> tuple[dict, dict[str, str]]:
    """The predictors that have weights, and why each other model is missing: its gate then does what it does in
    the server without that model (unavailable, or the envelope's lip-sync; no mouth pass)."""
    import importlib

    predictors, unavailable = {}, {}
    for model, (package, builder) in BUILDERS.items():
        module_name, settings_name, _ = ROLES[model]
        settings_type = getattr(importlib.import_module(module_name), settings_name)
        values = parameters(load_config(config_path(model, PROFILE)))
        try:
            predictors[model] = getattr(importlib.import_module(package), builder)(
                from_mapping(settings_type, values), device, root)
        except WeightsUnavailable as exc:
            unavailable[model] = str(exc)
    return predictors, unavailable


def time_network(predictor, wait) -> list[float]:
    """Seconds spent in the mouth refiner's network calls (a one-element list the caller may reset), counted by
    wrapping its Wav2LipRefiner.predict_faces; stays [0.0] without a refiner."""
    spent = [0.0]
    refiner = getattr(predictor, "refiner", None)
    if refiner is None:
        return spent
    predict_faces = refiner.predict_faces

    def timed(*args):
        wait()
        started = time.perf_counter()
        out = predict_faces(*args)  # ends with the copy to the host: the GPU's work is in
        spent[0] += time.perf_counter() - started
        return out

    refiner.predict_faces = timed
    return spent


def synced(device: str):
    def wait() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return wait


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0, help="the output rate QA judges (after interpolation)")
    parser.add_argument("--size", type=frame_size, default=(832, 480),
                        help="generated WIDTHxHEIGHT (QA runs before the encoder's resize)")
    parser.add_argument("--random-weights", type=models_of, default=models_of(DEFAULT_RANDOM),
                        help=f"models given random checkpoints where --weights has none (default {DEFAULT_RANDOM}; "
                             "add face_landmarks to time HRNet instead of the shipped Face Mesh)")
    parser.add_argument("--device", default=None, help="cuda (default where present) or cpu")
    parser.add_argument("--weights", type=Path, default=None, help="a weights root whose real files are used")
    parser.add_argument("--refine-low-sync", action=argparse.BooleanOptionalAction, default=True,
                        help="Wav2Lip and a re-check after a failed lip-sync gate; random SyncNet weights fail it "
                             "at random, so --no-refine-low-sync times the path of a clip that passes")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="run the gates once before timing (lazy CUDA init, cuDNN algorithm search)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    wait = synced(device)
    with tempfile.TemporaryDirectory() as scratch:
        root, real_files, random_files = weights_root(args.weights, args.random_weights, Path(scratch))
        t0 = time.perf_counter()
        predictors, unavailable = build_models(root, device)
        load_s = time.perf_counter() - t0
    call = LocalCaller(predictors=predictors)
    served = from_mapping(TalkingHeadSettings, parameters(load_config(config_path("talking_head", PROFILE))))
    settings = dataclasses.replace(served.quality, refine_low_sync=args.refine_low_sync)
    photo = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))
    source, landmarks = asyncio.run(_source(call, photo, "arcface"))
    source = dataclasses.replace(source, landmarks=to_ibug68(landmarks))  # as SourceFace.from_report maps them
    speech = _speech(args.seconds)
    # The clip (not timed) is animated from the photo's Face Mesh points in iBUG-68 order, as the served preview is
    job = GenerationJob(photo=photo, landmarks=source.landmarks, waveform=speech, params=GenerationParams(
        width=args.size[0], height=args.size[1], fps=args.fps, max_duration_s=args.seconds))
    frames = np.concatenate([c.frames for c in PreviewEngine().generate(job)])
    mel_frames = mel.melspectrogram(speech)
    bounds, start = [], 0
    while start < len(frames):
        count = min(planned_length(start, len(frames), served, args.fps), len(frames) - start)
        bounds.append((start, count))
        start += count

    def context() -> JobContext:
        return JobContext(source, speech, args.fps, settings, mel=mel_frames)

    async def each_gate_alone() -> tuple[dict[str, float], dict[str, float]]:
        costs: dict[str, float] = {}
        network: dict[str, float] = {}  # of each mouth pass's time, the refiner's network calls
        ctx = context()

        async def timed(name: str, work):
            wait()
            started, network_before = time.perf_counter(), network_s[0]
            value = await work
            wait()
            costs[name] = costs.get(name, 0.0) + time.perf_counter() - started
            if name.startswith("mouth_refiner"):
                network[name] = network.get(name, 0.0) + network_s[0] - network_before
            return value

        async def in_thread(function, *values):
            return await asyncio.to_thread(function, *values)

        for begin, count in bounds:
            part = frames[begin: begin + count]
            track = await timed("tracking", track_faces(part, call, settings.detect_every, None,
                                                        settings.request_frames))
            await timed("colour_match", in_thread(match_colour, part, track.boxes, photo, source.box, True))
            await timed("identity", identity_gate(part, track, begin, ctx, call))
            await timed("lipsync", lipsync_gate(part, track, mouth_opening(track.landmarks), begin, ctx, call))
            await timed("flicker", in_thread(flicker_gate, part, track, begin, settings))
            await timed("jaw_eyes_edge", in_thread(artifact_gates, part, track.landmarks, begin, ctx))
            await timed("content_safety", safety_gate(part, begin, ctx, call))
            await timed("mouth_refiner_all_frames", refine_mouth(part, track.boxes, [(0, count)], begin, ctx, call))
            # the served pass: Wav2Lip over the plosive runs only, all in one request; then one request per run,
            # as the pass sent them before
            runs = plosive_runs(speech, begin, count, args.fps)
            if runs:
                await timed("mouth_refiner_plosive_runs", refine_mouth(part, track.boxes, runs, begin, ctx, call,
                                                                       track.outer_lips))
                for run in runs:
                    await timed("mouth_refiner_plosive_runs_one_request_each",
                                refine_mouth(part, track.boxes, [run], begin, ctx, call, track.outer_lips))
        return ({k: round(v, 4) for k, v in costs.items()}, {k: round(v, 4) for k, v in network.items()})

    async def as_served() -> tuple[float, list[dict]]:
        ctx, boundary, records = context(), None, []
        wait()
        started = time.perf_counter()
        for index, (begin, count) in enumerate(bounds):
            part, qa = await process_segment(frames[begin: begin + count], index, begin, ctx, call, boundary)
            records.append({"frames": count, "timings_ms": qa.timings_ms, "post": sorted(qa.post),
                            "gates": {g.name: g.status for g in qa.gates}})
            boundary = Boundary(part[-1], qa.track.landmarks[-1], qa.track.boxes[-1])
        wait()
        return time.perf_counter() - started, records

    network_s = time_network(predictors.get(spec.MOUTH_REFINER.name), wait)
    if args.warmup:  # lazy CUDA init, cuDNN algorithm search, onnxruntime sessions
        asyncio.run(each_gate_alone())
    alone, alone_network = asyncio.run(each_gate_alone())
    network_s[0] = 0.0
    served_s, segments = asyncio.run(as_served())
    seconds = len(frames) / args.fps
    safety_provider = getattr(getattr(predictors.get(spec.CONTENT_SAFETY.name), "detector", None), "session", None)
    result = {
        "script": "perf/bench_qa_gpu.py", "argv": sys.argv[1:] if argv is None else argv, "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor(),
        "host": hardware(), "torch": torch.__version__, "profile": PROFILE, "request_frames": settings.request_frames,
        "weights": {name: predictor.weights.as_dict(with_hash=False) for name, predictor in predictors.items()},
        "weights_given": real_files, "random_weights": random_files, "unavailable": unavailable,
        "nudenet_provider": safety_provider.get_providers()[0] if safety_provider is not None else None,
        "load_s": round(load_s, 2),
        "clip": {"seconds": round(seconds, 3), "fps": args.fps, "size": "x".join(map(str, args.size)),
                 "frames": int(len(frames)), "segments": [count for _start, count in bounds]},
        "each_gate_alone_s": alone, "each_gate_alone_refiner_network_s": alone_network,
        "each_gate_alone_total_without_refiner_s": round(
            sum(v for k, v in alone.items() if not k.startswith("mouth_refiner")), 3),
        "as_served_qa_s": round(served_s, 3), "as_served_segments": segments,
        # of the served mouth passes' time (each segment's plosive `refine`, and the low-sync pass unless
        # --no-refine-low-sync): Wav2Lip's crops to the device, the network and the copy back
        # (Wav2LipRefiner.predict_faces); the rest is cutting and pasting the crops on the CPU
        "as_served_refiner_network_s": round(network_s[0], 3),
        "target_s": 3.0,
        "note": "random weights where the weights column says so: timings are real, verdicts are noise",
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("device", "each_gate_alone_s", "as_served_qa_s")}, indent=2))
    return result


if __name__ == "__main__":
    main()
