"""What a batch size the process has not run yet costs: the first call against the next two, at batch sizes in
the order QA meets them (a whole request, then plosive runs and last partial batches), for Wav2Lip, SyncNet (lips
and audio) and ArcFace IResNet-50 on cuda, random weights (speed only). cuDNN picks and sets up its kernels per
new input shape; a model that sees a new batch size on every segment pays it on every segment.

    python3 perf/bench_batch_shapes.py --out $OUT/batch_shapes_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from python_backends.face_embedding.iresnet import build_iresnet  # noqa: E402
from python_backends.lipsync_scorer.syncnet import SyncNet  # noqa: E402
from python_backends.mouth_refiner.wav2lip import Wav2Lip  # noqa: E402

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
    args = parser.parse_args(argv)
    dev = "cuda"
    out = {"cudnn_benchmark": torch.backends.cudnn.benchmark}
    w, s, a = Wav2Lip().to(dev).eval(), SyncNet().to(dev).eval(), build_iresnet("iresnet50").to(dev).eval()
    models = {
        "wav2lip": lambda n: (lambda: w(torch.randn(n, 1, 80, 16, device=dev), torch.randn(n, 6, 96, 96, device=dev))),
        "syncnet_lip": lambda n: (lambda: s.forward_lip(torch.randn(n, 3, 5, 224, 224, device=dev))),
        "syncnet_aud": lambda n: (lambda: s.forward_aud(torch.randn(n, 1, 13, 20, device=dev))),
        "arcface": lambda n: (lambda: a(torch.randn(n, 3, 112, 112, device=dev))),
    }
    with torch.inference_mode():
        for name, make in models.items():
            rows = {}
            for n in SIZES:
                fn = make(n)
                rows[n] = {"first_ms": timed(fn), "second_ms": timed(fn), "third_ms": timed(fn)}
            out[name] = rows
            print(name, rows, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
