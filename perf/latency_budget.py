"""Latency budget per stage for one 10 s clip through the real pipeline, next to the seed's budget.

One job goes through tritonserver exactly as `talkinghead generate` sends it (talking_head over gRPC, chunks
encoded as they arrive, then disclosure, C2PA signing, self-verification and the audit record). Stages come from
the orchestrator's own timings (the pre-processing report, every chunk's generator timing, every segment's QA
timings) and the client's clock; Triton's per-model statistics (queue and compute time, before/after deltas) are
recorded beside them. Writes JSON and a PNG chart. On a CPU machine the generator is the preview engine; the
GPU figure for Wan2.2-S2V-14B comes from perf/results/e2e_h100.json and is shown as its own bar.

    python perf/latency_budget.py --out perf/results/latency_budget_cpu.json --chart perf/results/latency_budget.png
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_file import write_json  # noqa: E402  (perf/ is on sys.path)

from client.compliance import ComplianceOptions, JobInputs  # noqa: E402
from client.delivery import DeliverySession  # noqa: E402
from client.encoding import EncodeOptions  # noqa: E402
from client.policy import LOCAL_DEFAULT, policy_of  # noqa: E402
from client.server import ServerOptions, TritonServer, free_port  # noqa: E402
from client.signing import load_signing_config  # noqa: E402
from client.triton_client import Endpoint, TalkingHeadClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "client" / "samples"
# The seed's budget for interactive use (sub-30 s end to end on an H100), seconds (low, high).
SEED_BUDGET = {
    "upload + validation": (1, 3), "pre-processing": (1, 2), "generation": (25, 45), "post-processing + QA": (2, 5),
    "encoding": (1, 2), "delivery": (1, 2),
}
MODELS = ("face_detector", "face_landmarks", "face_embedder", "audio_features", "content_safety", "video_generator",
          "talking_head")


def speech_of(seconds: float) -> bytes:
    with wave.open(str(SAMPLES / "speech.wav")) as handle:
        params, pcm = handle.getparams(), handle.readframes(handle.getnframes())
    need = int(seconds * params.framerate) * params.sampwidth
    out = io.BytesIO()
    with wave.open(out, "wb") as sink:
        sink.setparams(params)
        sink.writeframes((pcm * (need // len(pcm) + 1))[:need])
    return out.getvalue()


def triton_stats(client: TalkingHeadClient) -> dict[str, dict[str, float]]:
    stats = {}
    for model in MODELS:
        entry = client.model_statistics(model)["model_stats"][0]["inference_stats"]
        stats[model] = {key: float(entry[key].get("ns", 0)) / 1e6 for key in ("queue", "compute_infer", "success")}
        stats[model]["count"] = float(entry["success"].get("count", 0))
    return stats


def run_job(url: str, seconds: float, out: Path, parameters: dict, resize_at: str = "encoder",
            encode: EncodeOptions | None = None) -> dict:
    """One job as `talkinghead generate` delivers it (client/delivery.py). `resize_at` "server" sends the output size
    to talking_head, which resizes after QA, instead of the encoder scaling in its colour conversion (the default):
    the comparison of the two. `encode`: the encoder's options (default: the CLI's)."""
    photo, audio = (SAMPLES / "astronaut.png").read_bytes(), speech_of(seconds)
    compliance = ComplianceOptions(load_signing_config(), audit_log=out.with_suffix(".audit.log"))
    session = DeliverySession(out, JobInputs(photo, audio, None, parameters), encode or EncodeOptions(), compliance,
                              policy_of(LOCAL_DEFAULT))
    sent = session.server_parameters if resize_at == "encoder" else parameters
    arrivals: list[float] = []

    def timed(stream):
        for chunk in stream:
            arrivals.append(time.perf_counter() - started)
            yield chunk
        arrivals.append(time.perf_counter() - started)  # the stream's end

    def written(chunk) -> None:
        # when each chunk reached the client and how long handing it to the encoder held the reader up
        chunk.info.update(arrived_s=round(arrivals[-1], 3),
                          write_ms=round((time.perf_counter() - started - arrivals[-1]) * 1000.0, 1))

    session.on_chunk = written
    with TalkingHeadClient(Endpoint(url, "grpc")) as client:
        before = triton_stats(client)
        started = session.t0 = time.perf_counter()
        delivery = session.deliver(timed(client.generate(photo, audio, None, sent)))
        total = time.perf_counter() - started
        after = triton_stats(client)
    delta = {m: {k: round(after[m][k] - before[m][k], 1) for k in after[m]} for m in MODELS}
    return {"report": session.job_report, "qa": session.qa_report, "chunks": session.chunks, "delivery": delivery,
            "first_chunk_s": arrivals[0], "streamed_s": arrivals[-1], "total_s": total, "triton": delta,
            "resize_at": resize_at}


def stages(job: dict) -> dict[str, float]:
    pre = job["report"].get("timings_ms", {})
    validation = sum(v for k, v in pre.items() if k.startswith("decode")) / 1000
    preprocessing = sum(v for k, v in pre.items() if not k.startswith("decode")) / 1000
    generation = sum(c.get("render_ms", 0.0) for c in job["chunks"]) / 1000
    # each segment's wall time: tracking and the colour match overlap, the mouth pass and a re-check are inside
    qa = sum(s["timings_ms"]["wall"] for s in job["qa"]["segments"]) / 1000
    timings = job["delivery"]["timings"]
    return {"upload + validation": round(validation, 3), "pre-processing": round(preprocessing, 3),
            "generation": round(generation, 3), "post-processing + QA": round(qa, 3),
            "encoding": round(timings["encode_close_s"], 3),
            "delivery": round(timings["sign_s"] + timings["verify_s"] + timings["audit_s"], 3)}


def chart(measured: dict[str, float], gpu_generation: float | None, path: Path, title: str,
          where: str = "CPU") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(SEED_BUDGET)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    low = np.array([SEED_BUDGET[n][0] for n in names])
    high = np.array([SEED_BUDGET[n][1] for n in names])
    ax.barh(y + 0.2, high - low, left=low, height=0.35, color="#cccccc", label="seed budget (range, H100)")
    ax.barh(y - 0.2, [measured[n] for n in names], height=0.35, color="#2b6cb0", label=f"measured here ({where})")
    if gpu_generation is not None:
        ax.barh(names.index("generation") - 0.2, gpu_generation, height=0.12, color="#c05621",
                label="measured: Wan2.2-S2V-14B on H100 (engine)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds for one 10 s clip (stages overlap: generation, QA and encoding stream)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chart", type=Path, required=True)
    parser.add_argument("--url", default=None, help="a running server's gRPC host:port (default: start one)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    parameters = {"fps": 25.0}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TALKINGHEAD_HOME", str(Path(tmp) / "home"))
        if args.url:
            job = run_job(args.url, args.seconds, Path(tmp) / "clip.mp4", parameters)
        else:
            options = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                    weights=Path(tmp) / "no-weights")
            with TritonServer(options, log_path=Path(tmp) / "tritonserver.log"):
                job = run_job(options.grpc_url, args.seconds, Path(tmp) / "clip.mp4", parameters)
    measured = stages(job)
    gpu_file = ROOT / "perf" / "results" / "e2e_h100.json"
    gpu = json.loads(gpu_file.read_text())["runs"][0] if gpu_file.exists() else None
    result = {
        "script": "perf/latency_budget.py", "argv": sys.argv[1:], "clip_seconds": args.seconds,
        "engine": job["chunks"][0]["engine"], "load_average_1min": round(os.getloadavg()[0], 2),
        "stages_s": measured, "seed_budget_s": SEED_BUDGET,
        "time_to_first_chunk_s": round(job["first_chunk_s"], 3), "streamed_s": round(job["streamed_s"], 3),
        "end_to_end_s": round(job["total_s"], 3), "qa_verdict": job["qa"]["verdict"],
        "preprocess_timings_ms": job["report"].get("timings_ms"), "delivery_timings_s": job["delivery"]["timings"],
        "encode": {k: job["delivery"]["encode"].get(k) for k in ("frames", "fps", "codec", "time_to_first_packet_s",
                                                                  "encode_s")},
        "segments": [{"segment": s["segment"], "frames": s["frames"], "timings_ms": s["timings_ms"]}
                     for s in job["qa"]["segments"]],
        "triton_stats_delta_ms": job["triton"],
        "h100_engine_run": gpu,
    }
    write_json(args.out, result)
    summarise_run(result, args.chart, f"one {args.seconds:g} s clip: {result['engine']} on CPU",
                  gpu["total_s"] if gpu else None)
    return result


def summarise_run(run: dict, chart_path: Path | None, title: str, gpu_generation: float | None = None,
                  where: str = "CPU") -> None:
    """The stage chart (when a path is given) and the headline figures on stdout."""
    if chart_path is not None:
        chart(run["stages_s"], gpu_generation, chart_path, f"{title}, end to end {run['end_to_end_s']:.1f} s "
              f"(first chunk {run['time_to_first_chunk_s']:.1f} s)", where)
    print(json.dumps({k: run[k] for k in ("stages_s", "time_to_first_chunk_s", "end_to_end_s")}, indent=2))


if __name__ == "__main__":
    main()
