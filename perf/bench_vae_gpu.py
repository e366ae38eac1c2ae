"""The Wan2.1 VAE's work at the start of a LiveAvatar request and per block, for each VAE speed option.

At release size (dim 96, random weights: speed does not depend on their values; the construction of
wan/s2v/random_engine.py) in bf16 on CUDA, per generated size (832x480 and 704x384 by default), timed with CUDA
events after one warm-up pass (which pays any compile):
- encode: the history tail the engine encodes (HistoryPrimer.encode: the last 261 frames, 1 + 4k, streamed in the
  official chunks: the first frame alone, then 4 at a time), for the motion latents and the decoder's priming;
- prime: bringing a fresh decoder to the state the last 38 latent frames of it leave (HistoryPrimer.prime:
  LatentDecoder.advance), every clip;
- block: decoding one block (3 latent frames, 12 frames) from the primed decoder, every block.
The request's start (`--parts start`, the default variant) compares the exact shortcuts with the work they
replace: encoding a still history (the photo repeated, as in every fresh request) with every chunk run vs the chunks
past the encoder's fixed point skipped (LatentEncoder._still_start) vs also each unit of the encoder run only until it
settles on the still chunks before the fixed point (_SettlingChain, the default); re-encoding at the first clip
boundary (the history moved by 45 new frames, off the 4-frame grouping) with every chunk vs from the fixed point the
start left (FixedPointMemo); and priming by decoding every latent frame in full (LatentDecoder.feed) vs running only
the decoder parts the state depends on (LatentDecoder.advance); each with whether the results are bitwise the same (the
latents; the next block decoded from either state).
Variants (vae.configure_vae, the `wan_vae_memory_format` / `wan_vae_compile` settings): default (contiguous,
eager), channels_last_3d, compile, both. Each variant's outputs are compared with the default's on the same inputs
(rel L2: |variant - default| / |default|); the decode inputs are the default's latents, so each figure is that
stage's own difference. In bf16 each is also compared with the same work in float32 (`rel_l2_vs_float32`): bf16
kernels that round differently all differ from each other, and what tells whether a variant loses accuracy is
whether it is further from float32 than the default is.

    python perf/bench_vae_gpu.py --out perf/results/vae_h200.json
    python perf/bench_vae_gpu.py --tiny --variants default,channels_last_3d --out /tmp/vae_tiny.json  # CPU smoke
    python perf/bench_vae_gpu.py --cpu --parts start --sizes 104x64 --out perf/results/vae_start_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_file, also when loaded by path (tests)

from cli_args import frame_sizes  # noqa: E402  (perf/ is on sys.path)
from results_file import hardware, write_json  # noqa: E402

from python_backends.generation.wan.common.vae import (  # noqa: E402
    FixedPointMemo,
    LatentDecoder,
    LatentEncoder,
    WanVAE,
    configure_vae,
)
from python_backends.generation.wan.s2v.liveavatar_engine import HistoryPrimer  # noqa: E402
from python_backends.generation.wan.s2v.random_engine import RELEASE_VAE_DIM, SMALL_VAE_DIM  # noqa: E402

VARIANTS: dict[str, tuple[str, bool]] = {  # name -> (memory format, compile)
    "default": ("contiguous", False),
    "channels_last_3d": ("channels_last_3d", False),
    "compile": ("contiguous", True),
    "both": ("channels_last_3d", True),
}
BLOCK_LATENTS = 3  # LiveAvatar's block (causal.BLOCK_FRAMES)
BLOCK_REPEATS = 3
TINY_SIZE = (16, 16)
TINY_HISTORY_FRAMES = 9  # the tiny run encodes this few frames instead of the 261 priming needs
RESTART_FRAMES = 45  # the first clip's frames less the 3 it drops: the history moves this far at its end


class Timer:
    """Milliseconds of GPU work between two points (CUDA events), or wall time on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, work: Callable[[], object]) -> tuple[object, float]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = work()
            end.record()
            end.synchronize()
            return out, start.elapsed_time(end)
        t0 = time.perf_counter()
        out = work()
        return out, (time.perf_counter() - t0) * 1000.0


def rel_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12))


def run_variant(vae: WanVAE, history: torch.Tensor, block: torch.Tensor, prefix: torch.Tensor | None,
                timer: Timer, repeats: int) -> dict:
    """Warm-up, then `repeats` timed passes of encode, prime and block decode; the last pass's outputs.
    `prefix` are the latents the decoder is primed with (the default variant's own when None)."""
    primer = HistoryPrimer(vae)

    def encode() -> torch.Tensor:
        return primer.encode(history)

    def prime(latents: torch.Tensor) -> LatentDecoder:
        decoder = LatentDecoder(vae)  # HistoryPrimer.prime's work
        decoder.advance(latents[:, :, -primer.latents_needed:])
        return decoder

    def decode_block(decoder: LatentDecoder) -> list[torch.Tensor]:
        return list(decoder.fork().feed(block))

    times: dict[str, list[float]] = {"encode": [], "prime": [], "block": []}
    t0 = time.perf_counter()
    for n in range(repeats + 1):
        latents, encode_ms = timer(encode)
        source = latents if prefix is None else prefix
        decoder, prime_ms = timer(lambda: prime(source))  # noqa: B023  (called at once)
        block_ms = []
        for _ in range(BLOCK_REPEATS):  # short: timed a few times per pass, each from the same primed state
            pixels, ms = timer(lambda: decode_block(decoder))  # noqa: B023
            block_ms.append(ms)
        if n == 0:
            warmup_s = time.perf_counter() - t0
            print(f"    warm-up {warmup_s:.1f} s", flush=True)
            continue
        times["encode"].append(encode_ms)
        times["prime"].append(prime_ms)
        times["block"].extend(block_ms)
    outputs = {"encode": latents, "block": torch.cat(pixels, dim=2)}  # the block shows the primed state too
    return {"ms": {key: round(min(v), 2) for key, v in times.items()},
            "ms_all": {key: [round(x, 2) for x in v] for key, v in times.items()},
            "warmup_s": round(warmup_s, 2), "outputs": outputs}


def float32_outputs(vae: WanVAE, history: torch.Tensor, block: torch.Tensor, prefix: torch.Tensor) -> dict:
    """run_variant's outputs from a float32 copy of `vae` (the same weights and inputs, eager, contiguous): the
    yardstick for the bf16 variants, whose kernels round differently from each other and from it."""
    vae32 = copy.deepcopy(vae).float()
    primer = HistoryPrimer(vae32)
    latents = primer.encode(history.float())
    decoder = LatentDecoder(vae32)
    decoder.advance(prefix.float()[:, :, -primer.latents_needed:])
    return {"encode": latents, "block": torch.cat(list(decoder.feed(block.float())), dim=2)}


# LatentEncoder's (skip_still_start, settle_still_start) per way of encoding a still start: every chunk run, chunks
# past the fixed point skipped, and also each unit run only until it settles (the default; the restart's way too)
ENCODE_WAYS = {"every_chunk": (False, False), "skipping": (True, False), "settling": (True, True),
               "from_fixed_point": (True, True)}


def start_work(vae: WanVAE, photo: torch.Tensor, block: torch.Tensor, timer: Timer, repeats: int) -> dict:
    """The request's start on a still history (`photo` repeated) and the restart at the first clip boundary (the
    history moved by RESTART_FRAMES new frames), each shortcut against the work it replaces; the best of `repeats`
    passes after a warm-up, each way."""
    primer = HistoryPrimer(vae)
    history = photo.expand(-1, -1, primer.frames_needed, -1, -1).contiguous()
    moved = (torch.rand(*photo.shape[:2], RESTART_FRAMES, *photo.shape[3:], generator=torch.Generator().manual_seed(2))
             * 2 - 1).to(photo.device, photo.dtype)
    restart = torch.cat([history[:, :, RESTART_FRAMES:], moved], dim=2)
    memo = FixedPointMemo()

    def timed(section: dict, name: str, work: Callable[[], object]) -> object:
        times = [timer(work)[1] for _ in range(repeats + 1)][1:]
        section[name] = {"ms": round(min(times), 2), "ms_all": [round(t, 2) for t in times]}
        return work()

    def encoder(video: torch.Tensor, way: str, fresh: bool) -> Callable[[], tuple[torch.Tensor, int]]:
        """fresh: a request's start, with a memo of its own (which the restart then uses)"""
        skip, settle = ENCODE_WAYS[way]

        def encode() -> tuple[torch.Tensor, int]:
            nonlocal memo
            LatentEncoder.skip_still_start, LatentEncoder.settle_still_start = skip, settle
            try:
                if skip and fresh:
                    memo = FixedPointMemo()
                stream = LatentEncoder(vae, memo if skip else None)
                return stream.feed(video), stream.encoded_frames
            finally:
                LatentEncoder.skip_still_start = LatentEncoder.settle_still_start = True
        return encode

    def primer_of(latents: torch.Tensor, advance: bool) -> Callable[[], LatentDecoder]:
        # a fresh primer per pass; full: every latent frame decoded in full, as before advance
        return lambda: HistoryPrimer(vae, full=not advance).prime(latents[:, :, -primer.latents_needed:])

    out: dict = {"history_frames": primer.frames_needed, "prime_latents": primer.latents_needed,
                 "restart_new_frames": RESTART_FRAMES}
    # each start pass is a new request with a memo of its own; the restart goes on from the last, as one request does
    for key, video, ways in (("encode", history, ("every_chunk", "skipping", "settling")),
                             ("restart_encode", restart, ("every_chunk", "from_fixed_point"))):
        section: dict = {}
        results = {name: timed(section, name, encoder(video, name, fresh=key == "encode")) for name in ways}
        for name, (_, frames) in results.items():
            section[name]["frames_encoded"] = frames
        section["bitwise_equal"] = all(bool(torch.equal(results[ways[0]][0], results[name][0])) for name in ways[1:])
        section["speedup"] = round(section[ways[0]]["ms"] / max(section[ways[-1]]["ms"], 1e-6), 3)
        if len(ways) > 2:  # what settling the units adds to skipping past the fixed point
            settling = max(section["settling"]["ms"], 1e-6)
            section["speedup_over_skipping"] = round(section["skipping"]["ms"] / settling, 3)
        out[key] = section
        if key == "encode":
            latents = results["every_chunk"][0]
    section, blocks = {}, {}
    for name, advance in (("decode_every_part", False), ("advance", True)):
        decoder = timed(section, name, primer_of(latents, advance))
        blocks[name] = torch.cat(list(decoder.feed(block)), dim=2)
    section["next_block_bitwise_equal"] = bool(torch.equal(blocks["advance"], blocks["decode_every_part"]))
    section["speedup"] = round(section["decode_every_part"]["ms"] / max(section["advance"]["ms"], 1e-6), 3)
    out["prime"] = section
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: a narrow VAE, tiny frames")
    parser.add_argument("--cpu", action="store_true", help="the release-size VAE on the CPU in float32")
    parser.add_argument("--parts", default="variants,start", help="of variants, start (see the docstring)")
    parser.add_argument("--sizes", type=frame_sizes, default="832x480,704x384", help="WxH,...")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed passes after the warm-up (the best is kept; the block is timed 3 times a pass)")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=False,
                        help="let cuDNN time its convolution algorithms, deterministic ones (vae_cudnn_benchmark)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or variants[0] != "default":
        parser.error(f"--variants must start with default and name only {', '.join(VARIANTS)}; got {args.variants}")
    parts = set(args.parts.split(","))
    if not parts or parts - {"variants", "start"}:
        parser.error(f"--parts must name variants and/or start; got {args.parts}")
    device = torch.device("cuda" if torch.cuda.is_available() and not (args.tiny or args.cpu) else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    base = WanVAE(dim=SMALL_VAE_DIM if args.tiny else RELEASE_VAE_DIM).to(device, dtype).eval().requires_grad_(False)
    if args.cudnn_benchmark:  # as the engines' vae_cudnn_benchmark: process-wide, among deterministic algorithms
        configure_vae(base, cudnn_benchmark=True)  # the default layout, uncompiled: only the flags change
    primer = HistoryPrimer(base)
    history_frames = TINY_HISTORY_FRAMES if args.tiny else primer.frames_needed
    result: dict = {
        "script": "perf/bench_vae_gpu.py", "argv": sys.argv[1:] if argv is None else argv, "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "hardware": hardware(),
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
        "vae_dim": base.encoder.conv1.out_channels,
        "weights": "random (speed does not depend on their values)", "cudnn_benchmark": args.cudnn_benchmark,
        "history_frames": history_frames, "prime_latents": primer.latents_needed, "block_latents": BLOCK_LATENTS,
        "timing": ("CUDA events" if device.type == "cuda" else "wall time") +
                  "; the best of the timed passes after one warm-up pass (which pays any compile)",
        "threads": torch.get_num_threads() if device.type == "cpu" else None, "parts": sorted(parts),
        "sizes": []}
    timer = Timer(device)
    sizes = [TINY_SIZE] if args.tiny else args.sizes
    for width, height in sizes:
        generator = torch.Generator().manual_seed(1)
        history = (torch.rand(1, 3, history_frames, height, width, generator=generator) * 2 - 1).to(device, dtype)
        block = torch.randn(1, 16, BLOCK_LATENTS, height // 8, width // 8, generator=generator).to(device)
        entry: dict = {"size": [width, height], "variants": {}}
        if "start" in parts:
            print(f"{width}x{height} the request's start", flush=True)
            entry["start"] = start_work(base, history[:, :, :1], block, timer, args.repeats)
            print(f"    {entry['start']}", flush=True)
        reference: dict[str, torch.Tensor] = {}
        for name in variants if "variants" in parts else ():
            print(f"{width}x{height} {name}", flush=True)
            vae = base if name == "default" else configure_vae(copy.deepcopy(base), *VARIANTS[name])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run = run_variant(vae, history, block, reference.get("encode"), timer, args.repeats)
            outputs = run.pop("outputs")
            if name == "default":
                reference = outputs
                if dtype != torch.float32:
                    reference32 = float32_outputs(base, history, block, outputs["encode"])
            run["rel_l2_vs_default"] = {key: rel_l2(outputs[key], reference[key]) for key in outputs}
            if dtype != torch.float32:  # a layout whose error against float32 is the default's is as accurate
                run["rel_l2_vs_float32"] = {key: rel_l2(outputs[key], reference32[key]) for key in outputs}
            run["peak_memory_gib"] = (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                      if device.type == "cuda" else None)
            if name == "default":
                run["speedup_vs_default"] = {key: 1.0 for key in run["ms"]}
            else:
                base_ms = entry["variants"]["default"]["ms"]
                run["speedup_vs_default"] = {key: round(base_ms[key] / max(ms, 1e-6), 3)
                                             for key, ms in run["ms"].items()}
            entry["variants"][name] = run
            print(f"    ms {run['ms']}  rel L2 {run['rel_l2_vs_default']} (vs float32 "
                  f"{run.get('rel_l2_vs_float32')})", flush=True)
            if vae is not base:
                del vae
        result["sizes"].append(entry)
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
