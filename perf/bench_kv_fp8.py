"""LiveAvatar's FP8 KV rows (causal.KVRows) on the GPU: the fused read and write against eager PyTorch's, and the
rounding.

One layer's keys at 704x384 as a block forward reads them (4 blocks of 3,168 tokens plus the condition: about
15,000 tokens, 40 heads of 128), random bf16, and one block's keys as a forward writes them. Checks that the Triton
read and write give the eager values bit for bit (counting the values that differ), times both ways against eager
PyTorch, and reports the relative error of the FP8 round trip against the bf16 keys.

    python perf/bench_kv_fp8.py --out $OUT/kv_fp8_h100.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_json  # noqa: E402

from python_backends.generation.wan.common.fp8 import quantize  # noqa: E402
from python_backends.generation.wan.s2v.causal import KVRows  # noqa: E402


def timed_ms(fn, repeats: int = 50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=15000)
    parser.add_argument("--block-tokens", type=int, default=3168)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    keys = torch.randn(1, args.tokens, 40, 128, device="cuda", dtype=torch.bfloat16)
    rows = KVRows(keys, args.tokens, fp8=True)
    everything = slice(0, args.tokens)
    rows.write(everything, keys)
    fused = rows.read(everything)
    eager = rows.data.to(torch.bfloat16) * rows.scale
    round_trip = float((fused.float() - keys.float()).norm() / keys.float().norm())
    block = slice(args.tokens - args.block_tokens, args.tokens)  # the newest block, as a forward writes it
    new_keys = torch.randn(1, args.block_tokens, 40, 128, device="cuda", dtype=torch.bfloat16)
    rows.write(block, new_keys)
    eager_q, eager_scale = quantize(new_keys, "rowwise")

    def eager_write() -> None:
        q, scale = quantize(new_keys, "rowwise")
        rows.data[:, block], rows.scale[:, block] = q, scale

    result = {
        "script": "perf/bench_kv_fp8.py", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "shape": list(keys.shape), "fused_equals_eager": bool(torch.equal(fused, eager)),
        "round_trip_relative_error": round_trip,
        "read_fused_ms": round(timed_ms(lambda: rows.read(everything)), 4),
        "read_eager_ms": round(timed_ms(lambda: rows.data.to(torch.bfloat16) * rows.scale), 4),
        "write_shape": list(new_keys.shape),
        "write_values_differing": int((rows.data[:, block].view(torch.uint8) != eager_q.view(torch.uint8)).sum()),
        "write_scales_differing": int((rows.scale[:, block] != eager_scale.to(rows.scale.dtype)).sum()),
        "write_fused_ms": round(timed_ms(lambda: rows.write(block, new_keys)), 4),
        "write_eager_ms": round(timed_ms(eager_write), 4),
        "bytes_fp8_with_scales": rows.data.numel() + rows.scale.numel() * rows.scale.element_size(),
        "bytes_bf16": keys.numel() * keys.element_size(),
    }
    print(result, flush=True)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
