"""What the Wan engines run after the DiT, as stages of `stage_pipeline.run_stages`: decoded pixels in, chunks of
output frames out (the copy to the host, frame-rate conversion with interpolation, chunking).

The engines' denoising loop is the source; the VAE decoding is a stage where it does not feed the next clip's
conditioning (LiveAvatar) and part of the source where it does (S2V re-encodes the decoded motion frames, Animate
a clip's last decoded frames as the next clip's temporal guidance). With `overlap` on (OverlapOptions, the
default) the stages run while the DiT denoises the next block or clip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ....frame_interpolation.resampler import InterpolatingResampler
from ...job import FrameChunk
from ...stage_pipeline import Stage, run_stages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverlapOptions:
    """The Wan engines' stage-pipeline switches (`wan_overlap`): everything after the DiT that the next clip does
    not need runs in stage threads (their own CUDA streams) while the DiT works on the next block or clip
    (generation/stage_pipeline.py); at most overlap_depth items wait between two stages. The same frames either
    way. With dit_priority (`wan_dit_priority`) the DiT's stream has the GPU's highest priority and the stages'
    the lowest; off by default: measured, the clip ended later (stage_pipeline.py). Subclasses that add a
    __post_init__ call this one."""

    overlap: bool = True
    overlap_depth: int = 2
    dit_priority: bool = False

    def __post_init__(self) -> None:
        if self.overlap_depth < 1:
            raise ValueError(f"overlap_depth must be at least 1, got {self.overlap_depth}")


@dataclass(frozen=True)
class WanFrameChunk(FrameChunk):
    """A FrameChunk with the clip it came from and how long its parts took.

    timing keys: elapsed_s (since the job started), denoise_s (the clip's denoising, all attempts), encode_s
    (the clip's VAE encoding of reference / motion frames), decode_s (VAE decoding done for this chunk),
    steps; on CUDA alloc_retries: the caching allocator's failed cudaMallocs since the job started (each one frees
    its cache and waits for the device: memory pressure, which slows every block near a full card).
    """

    clip: int = 0
    timing: Mapping[str, float] = field(default_factory=dict)
    sampling: Mapping[str, object] = field(default_factory=dict)  # what the job costs (WanS2VEngine.sampling)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[1, 3, t, H, W] in [-1, 1] -> [t, H, W, 3] uint8 as the official save_video (no rounding)."""
    x = ((pixels[0].float().clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class PhaseClock:
    """Seconds per phase of a job's start, each phase timed from the end of the previous one after waiting for the
    GPU (`sync`: the engine's _sync), so that a phase's GPU work is counted in it and not in the next."""

    def __init__(self, sync: Callable[[], None], prefix: str = "start_") -> None:
        self.sync, self.prefix = sync, prefix
        self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> float:
        """End `phase` now: the seconds since the last lap, added to the phase's total."""
        self.sync()
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        key = f"{self.prefix}{phase}_s"
        self.phases[key] = self.phases.get(key, 0.0) + seconds
        return seconds


@dataclass(frozen=True)
class PixelPiece:
    """Decoded frames [1, 3, t, H, W] in [-1, 1] of one clip, with what they cost.

    timing: the latest value of each key wins (clip-level numbers such as denoise_s, steps); sums: added up
    over the pieces of a chunk (decode_s, encode_s). flush: emit what is buffered after this piece (the end of a
    clip or block), as the engines always streamed.
    """

    pixels: torch.Tensor
    clip: int
    timing: Mapping[str, float] = field(default_factory=dict)
    sums: Mapping[str, float] = field(default_factory=dict)
    flush: bool = False


class ChunkMaker:
    """PixelPiece -> WanFrameChunks: uint8 on the host, cut to the frames the request needs, resampled to the
    output rate (interpolated), buffered into chunks of `chunk_frames`."""

    def __init__(self, resampler: InterpolatingResampler, needed: int, first_index: int, fps: float, total: int,
                 chunk_frames: int, sampling: Mapping[str, object], started: float) -> None:
        self.resampler, self.needed, self.index, self.fps, self.total = resampler, needed, first_index, fps, total
        self.first = first_index
        self.chunk_frames, self.sampling, self.started = chunk_frames, sampling, started
        self.produced = 0  # source (16 fps) frames taken so far
        self.buffer: list[np.ndarray] = []
        self.clip, self.timing, self.sums = 0, {}, {}
        self._device: torch.device | None = None  # count_alloc_retries
        self._retries_before = 0

    def count_alloc_retries(self, device: torch.device) -> None:
        """Report the allocator's retries on `device` from now on (WanFrameChunk's alloc_retries)."""
        if device.type == "cuda":
            self._device, self._retries_before = device, _alloc_retries(device)

    def run(self, piece: PixelPiece) -> list[WanFrameChunk]:
        t0 = time.perf_counter()
        frames = to_uint8(piece.pixels[:, :, : max(0, self.needed - self.produced)])  # the copy to the host
        self.produced += len(frames)
        self.buffer.extend(self.resampler.push(frames))
        self.clip, self.timing = piece.clip, {**self.timing, **piece.timing}
        for key, value in {**piece.sums, "host_s": time.perf_counter() - t0}.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        out = []
        while len(self.buffer) >= self.chunk_frames:
            out.append(self._emit(self.chunk_frames))
        if piece.flush and self.buffer:
            out.append(self._emit(len(self.buffer)))
        return out

    def flush(self) -> list[WanFrameChunk]:
        return [self._emit(len(self.buffer))] if self.buffer else []

    def _emit(self, count: int) -> WanFrameChunk:
        frames, self.buffer = self.buffer[:count], self.buffer[count:]
        timing: dict[str, Any] = {**self.timing, **self.sums, "elapsed_s": time.perf_counter() - self.started}
        self.sums = dict.fromkeys(self.sums, 0.0)  # a later chunk of the same pieces says 0, not nothing
        if self._device is not None:
            timing["alloc_retries"] = _alloc_retries(self._device) - self._retries_before
        chunk = WanFrameChunk(self.index, np.stack(frames), self.fps, self.total, clip=self.clip, timing=timing,
                              sampling=self.sampling)
        self.index += count
        return chunk


def _alloc_retries(device: torch.device) -> int:
    return int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0))


def stream_chunks(engine: Any, label: str, source: Iterable[Any], chunks: ChunkMaker, source_name: str,
                  stages: tuple[Stage, ...] = ()) -> Iterator[WanFrameChunk]:
    """The chunks of a job: `source` (the engine's DiT loop), then `stages`, then `chunks`, overlapped as the
    engine's options (OverlapOptions) say; the run's stage times stay on `engine.last_stages` (the latest job's,
    for benchmarks)."""
    options = engine.options
    chunks.count_alloc_retries(torch.device(engine.device))
    run = run_stages(source, [*stages, Stage("frames", chunks.run, chunks.flush)], depth=options.overlap_depth,
                     device=engine.device, source_name=source_name, overlap=options.overlap,
                     prioritise_source=options.dit_priority)
    try:
        yield from run
    finally:
        run.close()
        engine.last_stages = run.stats
    log.info("%s job done: %d frames at %.3g fps in %.2f s (stages: %s)", label, chunks.index - chunks.first,
             chunks.fps, time.perf_counter() - chunks.started, run.stats.as_dict())
