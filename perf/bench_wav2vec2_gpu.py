"""wav2vec2 (XLSR-53's shape, random weights) on the GPU: what a request's speech features cost, and how much of it is
cuDNN timing its convolution algorithms.

A served LiveAvatar or S2V job encodes its whole recording with wav2vec2 before the first block. Its convolutions
(the feature encoder's seven, the positional one) see a new shape for every new recording length, and once the VAE's
`wan_vae_cudnn_benchmark` has switched cuDNN's benchmark mode on (process-wide), each new shape is timed first; PyTorch
keeps those timings per thread. This times `Wav2Vec2Features.encode` call by call: a new length, the same length
again, the same length on a new thread, with benchmark mode on during the forward (the encoder's own
`cudnn_heuristics` bypassed, as before it existed) and off (the encoder as shipped, the process flag on as the VAE
leaves it).

    python perf/bench_wav2vec2_gpu.py --out $OUT/wav2vec2_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_json  # noqa: E402

from python_backends.audio import wav2vec2  # noqa: E402
from python_backends.audio.wav2vec2 import SAMPLE_RATE, Wav2Vec2Features  # noqa: E402
from python_backends.generation.wan.common.stand_ins import write_wav2vec2  # noqa: E402

# The order matters: each call is timed as it comes, after the calls before it (first sight of a length, then again).
CALLS = (
    # (cuDNN benchmark mode during the forward, seconds of speech, thread)
    (True, 6.0, "main"), (True, 6.0, "main"), (True, 10.0, "main"), (True, 10.0, "main"), (True, 10.0, "new"),
    (True, 9.37, "main"), (False, 8.21, "main"), (False, 8.21, "main"), (False, 8.21, "new"), (False, 10.0, "new"),
)


def timed_call(encoder: Wav2Vec2Features, waveform: np.ndarray, thread: str) -> float:
    out: dict[str, float] = {}

    def run() -> None:
        torch.cuda.synchronize()
        start = time.perf_counter()
        encoder.encode([waveform])
        torch.cuda.synchronize()
        out["ms"] = (time.perf_counter() - start) * 1e3

    if thread == "new":
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    else:
        run()
    return round(out["ms"], 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_wav2vec2(Path(scratch) / "wav2vec2", 1024, 24, release_shape=True)
        encoder = Wav2Vec2Features(folder, device="cuda")
    rng = np.random.default_rng(0)
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = True  # as configure_vae leaves them
    shipped = wav2vec2.cudnn_heuristics
    calls = []
    for benchmark, seconds, thread in CALLS:
        wav2vec2.cudnn_heuristics = (lambda device: contextlib.nullcontext()) if benchmark else shipped
        waveform = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
        calls.append({"cudnn_benchmark": benchmark, "seconds": seconds, "thread": thread,
                      "ms": timed_call(encoder, waveform, thread)})
        print(calls[-1], flush=True)
    result = {"script": "perf/bench_wav2vec2_gpu.py", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "model": encoder.describe(),
              "weights": "random, XLSR-53's shape (speed only)", "calls": calls}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
