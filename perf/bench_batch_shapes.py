"""What a batch size the process has not run yet costs: the first call against the next two, at batch sizes in
the order QA meets them (a whole request, then plosive runs and last partial batches), for Wav2Lip, SyncNet (lips
and audio) and ArcFace IResNet-50 on cuda, random weights (speed only). cuDNN picks and sets up its kernels per
new input shape; a model that sees a new batch size on every segment pays it on every segment.

`--bucketed`: as the predictors run now (python_backends/shape_buckets.py): every bucket warmed first (the time it
took is in the JSON), then each size padded to its bucket.

    python3 perf/bench_batch_shapes.py --out $OUT/batch_shapes_h100.json
    python3 perf/bench_batch_shapes.py --bucketed --out $OUT/batch_shapes_bucketed_h100.json

perf/results/batch_shapes_h100.json came from this script's first version, which made each call's random inputs
inside the timed call (microseconds on the GPU) and had no --bucketed; it and batch_shapes_{plain_h100_s31,
bucketed_h100}.json came from versions that did not yet name the GPU, host and torch in the JSON (the device
machine's reply did: one NVIDIA H100 80GB HBM3, 16 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import hardware, write_json  # noqa: E402  (perf/ is on sys.path)

from python_backends.face_embedding.iresnet import build_iresnet  # noqa: E402
from python_backends.lipsync_scorer.syncnet import SyncNet  # noqa: E402
from python_backends.mouth_refiner.wav2lip import Wav2Lip  # noqa: E402
from python_backends.shape_buckets import padded_forward, warm_buckets  # noqa: E402

SIZES = (8, 6, 9, 11, 15, 20, 13)


def timed(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - started) * 1000, 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bucketed", action="store_true", help="warm the buckets, then pad to them")
    args = parser.parse_args(argv)
    dev = "cuda"
    out = {"script": "perf/bench_batch_shapes.py", "gpu": torch.cuda.get_device_name(), "host": hardware(),
           "torch": torch.__version__, "cudnn_benchmark": torch.backends.cudnn.benchmark, "bucketed": args.bucketed}
    w, s, a = Wav2Lip().to(dev).eval(), SyncNet().to(dev).eval(), build_iresnet("iresnet50").to(dev).eval()
    # name: (forward, the inputs for n items, the largest batch the GPU profile runs it at)
    models = {
        "wav2lip": (w, lambda n: (torch.randn(n, 1, 80, 16, device=dev), torch.randn(n, 6, 96, 96, device=dev)), 128),
        "syncnet_lip": (s.forward_lip, lambda n: (torch.randn(n, 3, 5, 224, 224, device=dev),), 128),
        "syncnet_aud": (s.forward_aud, lambda n: (torch.randn(n, 1, 13, 20, device=dev),), 128),
        "arcface": (a, lambda n: (torch.randn(n, 3, 112, 112, device=dev),), 256),
    }
    with torch.inference_mode():
        for name, (forward, inputs, largest) in models.items():
            rows = {}
            if args.bucketed:
                started = time.perf_counter()
                warm_buckets(forward, inputs, largest)
                torch.cuda.synchronize()
                rows["warm_s"] = round(time.perf_counter() - started, 3)
            for n in SIZES:
                given = inputs(n)
                fn = ((lambda g=given, f=forward, m=largest: padded_forward(f, *g, largest=m)) if args.bucketed
                      else (lambda g=given, f=forward: f(*g)))
                rows[n] = {"first_ms": timed(fn), "second_ms": timed(fn), "third_ms": timed(fn)}
            out[name] = rows
            print(name, rows, flush=True)
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
