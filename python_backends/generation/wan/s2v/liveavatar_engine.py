"""LiveAvatar (Alibaba-Quark/LiveAvatar, Apache-2.0): Wan2.2-S2V-14B + its DMD LoRA, 4 steps, no CFG, streamed
block by block. What its single-GPU inference script runs (infinite_inference_single_gpu.sh ->
minimal_inference/s2v_streaming_interact.py -> liveavatar/models/wan/causal_s2v_pipeline.py `WanS2V.generate`,
@9c2c38d), rewritten on our S2V engine:

Weights: `<root>/video_generator/Wan2.2-S2V-14B/` (the official release, unchanged) and
`<root>/video_generator/LiveAvatar/liveavatar.safetensors` (`huggingface-cli download Quark-Vision/Live-Avatar
--local-dir <root>/video_generator/LiveAvatar`, the release's own ckpt/ layout). The LoRA (PEFT keys, rank 128,
alpha 64 on every q, k, v, o, ffn.0, ffn.2: liveavatar/configs/s2v_causal_sft.yaml) is merged at load, strictly
(lora.py), before FP8 if asked, as the release does.

Per job:
1. Size: the official get_size_less_than_area of the photo within the area 704 x 384 (`--size "704*384"` is an
   area; sides multiples of 64). The reference latent is the *second* latent frame of 5 copies of the photo
   (`vae.encode(ref x 5)[:, :, 1:]`; here read off the history's encoding, which starts with those 5), and the
   motion latents are the VAE latents of the photo repeated 5 x 73 = 365 times (the release repeats its 5-frame
   reference tensor 73 times); the DiT's frame packer takes their last 19. They never change during the video:
   without --enable_online_decode (the script's default) the condition is prefilled once
   (causal_s2v.CausalS2V.prefill) and continuity comes from the KV caches.
2. Clips of --infer_frames 48 frames = 12 latent frames = 4 blocks of 3 latent frames. Per clip, noise
   [16, 12, H/8, W/8] from seed + clip; per block, 4 Euler steps on diffusers' FlowMatchEulerDiscreteScheduler
   with shift 3 (t = 1000, 857.69, 602.15, 8.93; scheduler.py "euler-diffusers"), no CFG (guide 0), each step
   through that step's KV cache (one clip of blocks, as a ring), the reference keys rolled out by a distance
   drawn per forward (causal_s2v.RefDistances). Each block's audio is its own 12 frames of the clip's window.
3. Decode: per clip, the causal VAE is primed with the latents of the last 365 output frames (the photo at
   first; the release re-encodes them after every clip), then decodes the clip; the first clip drops its first
   3 frames. Here the decoder is fed block by block, so each block's 12 frames stream as soon as it is denoised
   (the same pixels as decoding the clip at once: vae.LatentDecoder). The priming reaches the release's decoder
   state without re-encoding the whole history (HistoryPrimer): the state depends on the last 38 latent frames
   only, and those on the last 261 frames, so only they are encoded and decoded, and where the history moved by
   a multiple of 4 frames the encoder simply goes on with the clip's new frames (the same frames, to round-off).
   Two more exact shortcuts: the photo's still run at the history's start is encoded only until the encoder
   reaches its fixed point (117 of the 261 frames, once per request; LatentEncoder), each of its units only until
   it settles on the still chunks (the full-resolution ones after 2; vae._SettlingChain), and priming runs per
   latent frame only the decoder parts the state depends on (the full-resolution ones for the last 1-4 of the 38;
   LatentDecoder.advance).
   The motion condition is encoded from the same 261-frame tail: frame packing reads only the last 19 latents.

Departures (the S2V engine's where they apply): `audio_sync` (on: audio windows start 3 frames earlier so
output frame k belongs to audio frame k; the release muxes the 3-frame lead); length (exactly the audio's
frames, and no block past the last needed frame is denoised; the release makes whole clips); photo fit (scale to
cover + crop); noise from a CPU generator in float32 (release: bf16 on the GPU); the reference distance from a
seeded generator (release: unseeded); frame rate by nearest-time selection; rotary precision as causal_s2v.py
says. A segment that starts mid-video (a QA re-roll) starts a new causal stream: its condition is
prefilled with the caller's last frames as motion frames (what the release's --enable_online_decode does after
the first clip) and its KV caches start empty. A segment that continues an accepted one served by video_generator
goes on with that request's stream instead (generation/live_streams.py): one causal stream, as the release runs.

Random test weights stay random: nothing here measures LiveAvatar's quality; that is the release's claim.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ....errors import InputError, WeightsUnavailable
from ...job import GenerationJob
from ...stage_pipeline import Stage, on_kept_thread
from ..common.configs import S2V_14B, WanS2VTaskConfig
from ..common.scheduler import make_sampler
from ..common.streaming import ChunkMaker, PhaseClock, PixelPiece, stream_chunks
from ..common.vae import (
    SPATIAL_STRIDE,
    TEMPORAL_STRIDE,
    FixedPointMemo,
    LatentDecoder,
    LatentEncoder,
    WanVAE,
    decoder_memory,
    encoder_memory,
)
from .causal import BLOCK_FRAMES, CausalS2V, RefDistances, ref_shift
from .engine import (
    FIRST_CLIP_DROPPED_FRAMES,
    FramePlan,
    WanFrameChunk,
    WanS2VEngine,
    WanS2VOptions,
    audio_window,
    check_photo,
    fit_photo,
    frame_plan,
    motion_pixels,
    output_size,
    resample_to_video_rate,
)
from .model import ZIP_FRAME_BUCKETS

log = logging.getLogger(__name__)

ENGINE_KEY = "liveavatar-14B"  # GenerationParams.engine value
LORA_FILE = "liveavatar.safetensors"
LORA_RANK, LORA_ALPHA = 128, 64.0  # liveavatar/configs/s2v_causal_sft.yaml
LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")  # same file, lora_target_modules
REFERENCE_COPIES = 5  # the release encodes 5 copies of the photo and keeps the second latent frame
MOTION_HISTORY_FRAMES = REFERENCE_COPIES * S2V_14B.motion_frames  # 365: the 5-frame reference repeated 73 times
VAE_START_ROLE = "vae-start"  # the kept thread that encodes a request's history (stage_pipeline.on_kept_thread)


@dataclass(frozen=True)
class LiveAvatarOptions(WanS2VOptions):
    """The release's settings (infinite_inference_single_gpu.sh) as defaults; steps may be set per request."""

    sampler: str = "euler-diffusers"  # --sample_solver euler: diffusers' FlowMatchEulerDiscreteScheduler
    default_steps: int | None = 4  # --sample_steps 4
    default_guidance: float | None = 0.0  # --sample_guide_scale 0: no CFG
    shift: float | None = 3.0  # the pipeline builds its Euler scheduler with shift=3
    infer_frames: int = 48  # --infer_frames 48
    max_area: int = 704 * 384  # --size "704*384"
    lora_alpha: float | None = LORA_ALPHA
    lora_targets: tuple[str, ...] | None = LORA_TARGETS
    block_frames: int = BLOCK_FRAMES  # latent frames per block (num_frames_per_block)
    ref_distance: int | None = None  # None: drawn per forward from 4..30 as the release does; fixed otherwise
    # Frames of history VAE-encoded for the DiT's motion latents (once) and whose latents prime the decoder (every
    # clip): the release's 365 (1 + 4k). Fewer changes the motion condition and, under 261, the primed state.
    history_frames: int = MOTION_HISTORY_FRAMES
    # The release primes each clip's decoder by re-encoding the whole history and decoding all its latents; the
    # causal VAE's state only depends on the last of them, so by default only those are encoded and decoded
    # (HistoryPrimer: the same state, the same frames). True runs the release's full re-encode, for comparison.
    full_history_priming: bool = False
    # The release's DiT blocks hand the residual stream on in the compute dtype (bf16 on a GPU: its
    # CausalWanAttentionBlock_S2V; common/transformer.py WanAttentionBlock.residual_dtype), half the bytes of the
    # official S2V's float32 stream between blocks and in the audio injection. False keeps the float32 stream.
    release_residual: bool = True
    # The per-step KV caches in e4m3 with a scale per token and head (causal.KVRows): half their memory, with FP8's
    # rounding in every cached key and value. Not the release's; it fits 832x480 on an 80 GB card.
    kv_cache_fp8: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_frames < 1 or self.infer_frames % (TEMPORAL_STRIDE * self.block_frames):
            raise ValueError(f"infer_frames ({self.infer_frames}) must be a whole number of blocks of "
                             f"{self.block_frames} latent frames ({TEMPORAL_STRIDE * self.block_frames} frames)")
        if self.history_frames < 1 or (self.history_frames - 1) % TEMPORAL_STRIDE:
            raise ValueError(f"history_frames must be 1 + 4k, got {self.history_frames}")

    @property
    def blocks_per_clip(self) -> int:
        return self.infer_frames // (TEMPORAL_STRIDE * self.block_frames)

    def sampling(self, task: WanS2VTaskConfig = S2V_14B, steps: int | None = None,
                 guidance: float | None = None) -> dict[str, object]:
        out = super().sampling(task, steps, guidance)
        out.update(dit_forwards_per_clip=out["steps"] * self.blocks_per_clip,
                   latent_frames_per_forward=self.block_frames, blocks_per_clip=self.blocks_per_clip)
        return out


def liveavatar_lora(folder: Path) -> Path:
    """<folder>/liveavatar.safetensors, or WeightsUnavailable saying how to get it."""
    path = Path(folder) / LORA_FILE
    if not path.is_file():
        raise WeightsUnavailable(f"{path} is missing: download Quark-Vision/Live-Avatar into {folder} "
                                 f"(huggingface-cli download Quark-Vision/Live-Avatar --local-dir {folder})")
    return path


class HistoryPrimer:
    """Decoders in the state a fresh LatentDecoder reaches after decoding `vae.encode(history)`, the release's
    per-clip priming, for a history that slides along the video, at a cost independent of its length.

    Exact, not approximate: the decoder's state depends only on its last R = decoder_memory latent frames, and
    the last R latent frames of encoding the history only on its last 4 (R - 1) + encoder_memory + 1 frames (the
    history is 1 + 4k frames, so its tail keeps the 4-frame grouping). So a restart encodes just that tail and
    decodes its last R latents. Better still, when the history moved by a multiple of 4 frames and is at least
    that long, the encoder stream and the primed decoder simply go on with the new frames (their latents are
    those of the new history's end: the old history's start is outside what they depend on). Every layer sees
    the shapes it sees on the full path (a decoder call per latent frame, an encoder call per 4-frame chunk, the
    1x1x1 heads per frame or chunk) and full tails, so with deterministic kernels the state is bitwise the same.
    Priming computes no pixels: LatentDecoder.advance runs only the decoder parts that the state depends on."""

    def __init__(self, vae: WanVAE, full: bool = False) -> None:
        self.vae, self.full = vae, full
        self.latents_needed = decoder_memory(vae)
        self.encoder_frames = encoder_memory(vae)
        self.frames_needed = self._frames_for(self.latents_needed)
        self.encoder: LatentEncoder | None = None
        self.primed: LatentDecoder | None = None
        # the photo's still run reaches the encoder's fixed point once per request: a restart (the first clip's
        # history moves 45 frames, off the 4-frame grouping) starts there
        self.fixed_point = FixedPointMemo()

    def _frames_for(self, latents: int) -> int:
        """How many of the history's last frames give its last `latents` latent frames exactly (any, if full)."""
        return 1 << 62 if self.full else TEMPORAL_STRIDE * (latents - 1) + self.encoder_frames + 1

    def encode(self, history: torch.Tensor, latents: int = 0) -> torch.Tensor:
        """Start over on `history` (1 + 4k frames): the latents of its tail that priming needs, and at least its
        last `latents` latent frames exactly (those of encoding all of it); all of them if `latents` < 0."""
        count = history.shape[2]
        keep = count if latents < 0 else min(count, self._frames_for(max(latents, self.latents_needed)))
        self.encoder, self.primed = LatentEncoder(self.vae, self.fixed_point), None
        return self.encoder.feed(history[:, :, count - keep :])

    def advance(self, history: torch.Tensor, new_frames: int) -> torch.Tensor:
        """The history moved on by its last `new_frames` frames: the latents priming needs next."""
        if (self.encoder is None or self.primed is None or new_frames % TEMPORAL_STRIDE
                or not new_frames <= history.shape[2] or history.shape[2] < self.frames_needed):
            return self.encode(history)
        return self.encoder.feed(history[:, :, history.shape[2] - new_frames :])

    def prime(self, latents: torch.Tensor) -> LatentDecoder:
        """Feed what encode/advance returned; a decoder in the primed state that the caller may go on with."""
        if self.primed is None:
            self.primed = LatentDecoder(self.vae)
        if self.full:  # the release decodes every latent frame in full
            for _ in self.primed.feed(latents):
                pass
        else:  # only the work the state depends on: nothing for latents before the last R, then fewer parts
            self.primed.advance(latents)
        return self.primed.fork()


class WanLiveAvatarEngine(WanS2VEngine):
    """Wan2.2-S2V-14B with the LiveAvatar LoRA merged, run block-causally (see the module docstring)."""

    renders_segments = True
    uses_negative_prompt = False  # no CFG: the release samples with guide scale 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.options, LiveAvatarOptions):
            raise TypeError("WanLiveAvatarEngine needs LiveAvatarOptions")
        self.causal = CausalS2V(self.transformer, self.options.block_frames,
                                (self.task.motion_frames, self.task.lat_motion_frames))
        compute_dtype = self.transformer.patch_embedding.weight.dtype
        for block in self.transformer.blocks:
            block.residual_dtype = compute_dtype if self.options.release_residual else None
        self.name = self.name.replace("wan2.2-s2v", "liveavatar-wan2.2-s2v", 1)

    @classmethod
    def from_folders(cls, s2v_folder: Path | str, liveavatar_folder: Path | str,
                     device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                     options: LiveAvatarOptions | None = None,
                     task: WanS2VTaskConfig = S2V_14B) -> WanLiveAvatarEngine:
        """The official S2V release folder plus the LiveAvatar folder holding liveavatar.safetensors."""
        options = options or LiveAvatarOptions()
        lora = liveavatar_lora(Path(liveavatar_folder))
        return cls.from_folder(s2v_folder, device, dtype, replace(options, lora=str(lora.resolve())), task=task)

    # -- the job ----------------------------------------------------------------------------------------------------

    def _history(self, job: GenerationJob, photo: torch.Tensor, plan: FramePlan, fps: float) -> torch.Tensor:
        """[1, 3, history_frames, H, W]: the photo repeated (the release's motion frames), or for a segment from the
        middle the caller's last frames at the end of it."""
        count = self.options.history_frames
        height, width = photo.shape[-2:]
        if not plan.continuing:  # a view: the encoder reads only the still run's start (_still_start), not 365 copies
            return photo.expand(-1, -1, count, -1, -1)
        return motion_pixels(job.motion_frames, plan.segment.start, fps, plan.first16, self.task.sample_fps, count,
                             height, width, fill=photo).to(self.device, photo.dtype)

    def generate(self, job: GenerationJob) -> Iterator[WanFrameChunk]:
        """Stream the video of `job` block by block; stops working when the consumer stops."""
        started = time.perf_counter()
        # The request's start by phase, reported with the first chunk (its timing's start_*_s): one wait for the GPU
        # per phase, a few per request.
        clock = PhaseClock(self._sync)
        p, opt, task = job.params, self.options, self.task
        photo = check_photo(job)
        steps, guidance = self._settings(job)
        if guidance > 1.0:
            raise InputError(f"LiveAvatar is distilled to run without classifier-free guidance (the release runs "
                             f"--sample_guide_scale 0); leave guidance unset instead of {guidance:g}", "bad_guidance")
        sampling = self.sampling(steps, guidance)
        height, width = output_size(photo.shape[:2], p.width, p.height, opt.max_area)
        features = self._audio_features(job)
        features30 = resample_to_video_rate(features)
        clock.lap("audio_features")
        fps16 = task.sample_fps
        plan = frame_plan(p, self._duration(job, features), fps16, self.interpolation, self.device)
        dropped = 0 if plan.continuing else FIRST_CLIP_DROPPED_FRAMES
        audio_offset = plan.first16 - dropped if opt.audio_sync else plan.first16
        per_block = TEMPORAL_STRIDE * opt.block_frames
        blocks = math.ceil((plan.needed + dropped) / per_block)  # none past the last needed frame
        frame_base = (plan.first16 + FIRST_CLIP_DROPPED_FRAMES) // TEMPORAL_STRIDE if plan.continuing else 0
        context = self._text(self._prompt(job))
        clock.lap("text")
        log.info("LiveAvatar job: %dx%d -> %d block(s) of %d frames, %d steps (%s), no CFG", width, height, blocks,
                 per_block, steps, opt.sampler)

        fitted = fit_photo(photo, height, width)
        pixels = torch.from_numpy(fitted).to(self.device).permute(2, 0, 1)[None, :, None].float().div(127.5).sub(1.0)
        pixels = pixels.to(self.vae.dtype)
        history = self._history(job, pixels, plan, p.fps)
        primer = HistoryPrimer(self.vae, opt.full_history_priming)
        # The DiT's motion condition: frame packing reads only the last 19 latent frames, and those are exact from
        # the history's tail that priming encodes anyway; without frame packing, all of them as the release does.
        condition = sum(ZIP_FRAME_BUCKETS) if self.transformer.config.enable_framepack else -1
        # on a kept thread: cuDNN's plans (and benchmark timings) are per thread, and this one may be a serving
        # pool's thread that never ran the VAE (stage_pipeline._Workers)
        motion_latents = on_kept_thread(VAE_START_ROLE, lambda: primer.encode(
            history, -1 if opt.full_history_priming else condition), self.device)
        encode_s = clock.lap("history_encode")
        if plan.continuing or opt.full_history_priming or history.shape[2] < REFERENCE_COPIES:
            ref_latents = on_kept_thread(VAE_START_ROLE, lambda: self.vae.encode(
                pixels.expand(-1, -1, REFERENCE_COPIES, -1, -1))[:, :, 1:2], self.device)
        else:
            # The history's tail starts with the photo still, so its encoding began as encoding the 5 copies does
            # (the photo alone, then 4 copies, through the same layers): its second latent frame is the
            # reference latent, bitwise, and the request's start saves a VAE encode.
            ref_latents = motion_latents[:, :, 1:2]
        encode_s += clock.lap("reference_encode")
        lat_shape = (1, self.transformer.config.in_dim, opt.infer_frames // TEMPORAL_STRIDE,
                     height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)
        cond = self.causal.prefill(ref_latents, motion_latents, [context])
        # the condition's keys and values live on in the step caches, which copy them (cond is released here)
        caches = self.causal.new_step_caches(cond, steps, opt.blocks_per_clip, *lat_shape[-2:], opt.kv_cache_fp8)
        del cond
        distances = RefDistances(p.seed, opt.ref_distance)
        encode_s += clock.lap("dit_prefill")
        shift = task.sample_shift if opt.shift is None else opt.shift

        source = self._denoised_blocks(blocks, lat_shape, shift, steps, p.seed, features30, audio_offset, frame_base,
                                       caches, distances)
        decoder = _BlockDecoder(self, primer, motion_latents, history, dropped, plan.needed + dropped,
                                {"encode_s": encode_s, **clock.phases})
        chunks = ChunkMaker(plan.resampler, plan.needed, plan.segment.start, p.fps, plan.total, plan.total + 1,
                            sampling, started)
        yield from stream_chunks(self, "LiveAvatar", source, chunks, "denoise",
                                 (Stage("decode", decoder.run, start=decoder.start),))

    def _denoised_blocks(self, blocks: int, lat_shape: tuple[int, ...], shift: float, steps: int, seed: int,
                         features30: torch.Tensor, audio_offset: int, frame_base: int, caches: list,
                         distances: RefDistances) -> Iterator[_Block]:
        """The source of the stage pipeline: the DiT's blocks, one after another (nothing here waits on decoding:
        the next block continues from the KV caches, not from decoded frames)."""
        opt, fps16 = self.options, self.task.sample_fps
        per_block = TEMPORAL_STRIDE * opt.block_frames
        model_dtype = self.transformer.patch_embedding.weight.dtype
        for n in range(blocks):
            clip, index = divmod(n, opt.blocks_per_clip)
            if index == 0:  # a new clip's noise
                generator = torch.Generator(device="cpu").manual_seed(seed + clip)
                noise = torch.randn(lat_shape, generator=generator, dtype=torch.float32).to(self.device)
            t0 = time.perf_counter()
            latents = noise[:, :, index * opt.block_frames : (index + 1) * opt.block_frames]
            audio = audio_window(features30, n * per_block + audio_offset, per_block, fps16).to(model_dtype)
            frame_start = frame_base + n * opt.block_frames
            sampler = make_sampler(opt.sampler, steps, shift)
            for step in range(steps):
                moved = ref_shift(frame_start, distances.next())
                flow = self.causal.block(latents, sampler.timestep(self.device), audio, caches[step], n, frame_start,
                                         moved)
                latents = sampler.step(flow, latents)
            self._sync()
            yield _Block(n, clip, index, latents, time.perf_counter() - t0, float(steps))


@dataclass(frozen=True)
class _Block:
    n: int
    clip: int
    index: int  # within its clip
    latents: torch.Tensor
    denoise_s: float
    steps: float


class _BlockDecoder:
    """The decode stage: per clip, the causal VAE primed with the latents of the last `history_frames` frames (the
    photo's for the first clip), then each block's latents decoded as it arrives, up to `frames` (the dropped
    included). Priming is off the critical path: the first clip's before the first block arrives (`start`), the
    next clip's right after this clip's last block went out, while the DiT denoises the next block. `start` holds
    the request's start by phase (encode_s and PhaseClock's start_*_s); it goes out with the first piece, with the
    first clip's priming as start_decoder_prime_s."""

    def __init__(self, engine: WanLiveAvatarEngine, primer: HistoryPrimer, motion_latents: torch.Tensor,
                 history: torch.Tensor, dropped: int, frames: int, start: dict[str, float]) -> None:
        self.engine, self.primer, self.motion_latents, self.history = engine, primer, motion_latents, history
        self.moved = 0  # frames the history moved on since the last priming
        self.dropped, self.frames = dropped, frames
        self.per_block = TEMPORAL_STRIDE * engine.options.block_frames
        self.spent = {**start, "decode_s": 0.0}  # not yet reported with a piece
        self.decoder: LatentDecoder | None = None
        self.clip_pixels: list[torch.Tensor] = []

    def start(self) -> None:
        self._prime(0)

    def _prime(self, clip: int) -> None:
        engine = self.engine
        t0 = time.perf_counter()
        # the release decodes each clip after the latents of the last 365 frames (its motion latents first);
        # HistoryPrimer reaches the same decoder state from the history's tail
        prefix = self.motion_latents if clip == 0 else self.primer.advance(self.history, self.moved)
        engine._sync()
        t1 = time.perf_counter()
        self.spent["encode_s"] += t1 - t0
        self.decoder = self.primer.prime(prefix)
        engine._sync()
        decode_s = time.perf_counter() - t1
        self.spent["decode_s"] += decode_s
        if clip == 0:  # concurrent with the first block's denoising when the stages overlap
            self.spent["start_decoder_prime_s"] = decode_s
        self.clip_pixels = []

    def run(self, block: _Block) -> Iterator[PixelPiece]:
        engine, vae = self.engine, self.engine.vae
        timing = {"denoise_s": block.denoise_s, "steps": block.steps, "block": float(block.n)}
        # The last block's frames leave per latent frame: nothing is denoised after it, so its decoding, the copy,
        # interpolation and encoding are the video's tail, and pipelining them shortens it. The others leave whole
        # (one copy and one interpolation batch each): their stages overlap the next block's denoising anyway.
        latents, last = block.latents, (block.n + 1) * self.per_block >= self.frames
        if last:  # past the last frame needed: not decoded (the decoder is causal)
            latents = latents[:, :, : math.ceil((self.frames - block.n * self.per_block) / TEMPORAL_STRIDE)]
        pieces, count = self.decoder.feed(latents), latents.shape[2]  # a piece per latent frame
        if not last:
            pieces, count = iter([torch.cat(list(pieces), dim=2)]), 1
        t0 = time.perf_counter()
        for index, pixels in enumerate(pieces):
            if self.dropped:
                pixels, self.dropped = pixels[:, :, self.dropped:], max(0, self.dropped - pixels.shape[2])
            self.clip_pixels.append(pixels.to(vae.dtype))
            engine._sync()
            self.spent["decode_s"] += time.perf_counter() - t0
            if pixels.shape[2]:  # a piece all dropped (a first block decoded frame by frame) leaves its cost spent
                sums, self.spent = self.spent, {"encode_s": 0.0, "decode_s": 0.0}
                yield PixelPiece(pixels, block.clip, timing, sums, flush=index == count - 1)
            t0 = time.perf_counter()
        if block.index == engine.options.blocks_per_clip - 1 and not last:
            # the next clip's decoder primes on this clip's last frames
            recent = torch.cat(self.clip_pixels, dim=2)[:, :, -engine.task.motion_frames:]
            # the history keeps its length (1 + 4k frames), also when it is shorter than a clip
            self.history = torch.cat([self.history, recent], dim=2)[:, :, -self.history.shape[2]:]
            self.moved = recent.shape[2]
            self._prime(block.clip + 1)
