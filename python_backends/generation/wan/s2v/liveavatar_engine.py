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
   (`vae.encode(ref x 5)[:, :, 1:]`), and the motion latents are the VAE latents of the photo repeated 5 x 73 =
   365 times (the release repeats its 5-frame reference tensor 73 times); the DiT's frame packer takes their last
   19. They never change during the video: without --enable_online_decode (the script's default) the
   condition is prefilled once (causal_s2v.CausalS2V.prefill) and continuity comes from the KV caches.
2. Clips of --infer_frames 48 frames = 12 latent frames = 4 blocks of 3 latent frames. Per clip, noise
   [16, 12, H/8, W/8] from seed + clip; per block, 4 Euler steps on diffusers' FlowMatchEulerDiscreteScheduler
   with shift 3 (t = 1000, 857.69, 602.15, 8.93; scheduler.py "euler-diffusers"), no CFG (guide 0), each step
   through that step's KV cache (one clip of blocks, as a ring), the reference keys rolled out by a distance
   drawn per forward (causal_s2v.RefDistances). Each block's audio is its own 12 frames of the clip's window.
3. Decode: per clip, the causal VAE is primed with the latents of the last 365 output frames (the photo at
   first; the release re-encodes them after every clip), then decodes the clip; the first clip drops its first
   3 frames. Here the decoder is fed block by block, so each block's 12 frames stream as soon as it is denoised
   (the same pixels as decoding the clip at once: vae.LatentDecoder).

Departures (the S2V engine's where they apply): `audio_sync` (on: audio windows start 3 frames earlier so
output frame k belongs to audio frame k; the release muxes the 3-frame lead); length (exactly the audio's
frames, and no block past the last needed frame is denoised; the release makes whole clips); photo fit (scale to
cover + crop); noise from a CPU generator in float32 (release: bf16 on the GPU); the reference distance from a
seeded generator (release: unseeded); frame rate by nearest-time selection; bf16 / rotary precision as
causal_s2v.py says. A segment that starts mid-video (a QA re-roll) starts a new causal stream: its condition is
prefilled with the caller's last frames as motion frames (what the release's --enable_online_decode does after
the first clip) and its KV caches start empty.

Random test weights stay random: nothing here measures LiveAvatar's quality; that is the release's claim.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ....errors import InputError, WeightsUnavailable
from ...job import GenerationJob
from ..common.configs import S2V_14B, WanS2VTaskConfig
from ..common.scheduler import make_sampler
from ..common.vae import SPATIAL_STRIDE, TEMPORAL_STRIDE, LatentDecoder
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
    to_uint8,
)

log = logging.getLogger(__name__)

ENGINE_KEY = "liveavatar-14B"  # GenerationParams.engine value
LORA_FILE = "liveavatar.safetensors"
LORA_RANK, LORA_ALPHA = 128, 64.0  # liveavatar/configs/s2v_causal_sft.yaml
LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")  # same file, lora_target_modules
REFERENCE_COPIES = 5  # the release encodes 5 copies of the photo and keeps the second latent frame
MOTION_HISTORY_FRAMES = REFERENCE_COPIES * S2V_14B.motion_frames  # 365: the 5-frame reference repeated 73 times


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
    # Frames of history VAE-encoded for the DiT's motion latents (once) and to prime the decoder (every clip):
    # the release's 365 (1 + 4k). Fewer is faster (encoding 365 frames and decoding their 92 latents per 48-frame
    # clip is most of the VAE's work) but approximate: the causal VAE's state then starts later.
    history_frames: int = MOTION_HISTORY_FRAMES

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


class WanLiveAvatarEngine(WanS2VEngine):
    """Wan2.2-S2V-14B with the LiveAvatar LoRA merged, run block-causally (see the module docstring)."""

    renders_segments = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.options, LiveAvatarOptions):
            raise TypeError("WanLiveAvatarEngine needs LiveAvatarOptions")
        self.causal = CausalS2V(self.transformer, self.options.block_frames,
                                (self.task.motion_frames, self.task.lat_motion_frames))
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
        if not plan.continuing:
            return photo.expand(-1, -1, count, -1, -1).contiguous()
        return motion_pixels(job.motion_frames, plan.segment.start, fps, plan.first16, self.task.sample_fps, count,
                             height, width, fill=photo).to(self.device, photo.dtype)

    def generate(self, job: GenerationJob) -> Iterator[WanFrameChunk]:
        """Stream the video of `job` block by block; stops working when the consumer stops."""
        started = time.perf_counter()
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
        fps16 = task.sample_fps
        plan = frame_plan(p, self._duration(job, features), fps16, self.interpolation, self.device)
        dropped = 0 if plan.continuing else FIRST_CLIP_DROPPED_FRAMES
        audio_offset = plan.first16 - dropped if opt.audio_sync else plan.first16
        per_block = TEMPORAL_STRIDE * opt.block_frames
        blocks = math.ceil((plan.needed + dropped) / per_block)  # none past the last needed frame
        frame_base = (plan.first16 + FIRST_CLIP_DROPPED_FRAMES) // TEMPORAL_STRIDE if plan.continuing else 0
        context = self._text(p.prompt or opt.default_prompt)
        model_dtype = self.transformer.patch_embedding.weight.dtype
        log.info("LiveAvatar job: %dx%d -> %d block(s) of %d frames, %d steps (%s), no CFG", width, height, blocks,
                 per_block, steps, opt.sampler)

        t0 = time.perf_counter()
        fitted = fit_photo(photo, height, width)
        pixels = torch.from_numpy(fitted).to(self.device).permute(2, 0, 1)[None, :, None].float().div(127.5).sub(1.0)
        pixels = pixels.to(self.vae.dtype)
        ref_latents = self.vae.encode(pixels.expand(-1, -1, REFERENCE_COPIES, -1, -1))[:, :, 1:2]
        history = self._history(job, pixels, plan, p.fps)
        motion_latents = self.vae.encode(history)
        cond = self.causal.prefill(ref_latents, motion_latents, [context])
        caches = [self.causal.new_step_cache(opt.blocks_per_clip) for _ in range(steps)]
        distances = RefDistances(p.seed, opt.ref_distance)
        self._sync()
        encode_s = time.perf_counter() - t0
        lat_shape = (1, self.transformer.config.in_dim, opt.infer_frames // TEMPORAL_STRIDE,
                     height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)
        shift = task.sample_shift if opt.shift is None else opt.shift

        produced, out_index, prime_s = 0, plan.segment.start, 0.0
        for n in range(blocks):
            clip, index = divmod(n, opt.blocks_per_clip)
            if index == 0:  # a new clip: its noise, and the VAE decoder primed with the last frames' latents
                generator = torch.Generator(device="cpu").manual_seed(p.seed + clip)
                noise = torch.randn(lat_shape, generator=generator, dtype=torch.float32).to(self.device)
                t0 = time.perf_counter()
                # the release decodes each clip after the latents of the last 365 frames (its motion latents first)
                prefix = motion_latents if clip == 0 else self.vae.encode(history)
                self._sync()
                t1 = time.perf_counter()
                encode_s += t1 - t0
                decoder = LatentDecoder(self.vae)
                for _ in decoder.feed(prefix):
                    pass
                self._sync()
                prime_s = time.perf_counter() - t1
                clip_pixels: list[torch.Tensor] = []
            t0 = time.perf_counter()
            latents = noise[:, :, index * opt.block_frames : (index + 1) * opt.block_frames]
            audio = audio_window(features30, n * per_block + audio_offset, per_block, fps16).to(model_dtype)
            frame_start = frame_base + n * opt.block_frames
            sampler = make_sampler(opt.sampler, steps, shift)
            for step in range(steps):
                moved = ref_shift(frame_start, distances.next())
                flow = self.causal.block(latents, sampler.timestep(self.device), [context], audio, cond, caches[step],
                                         n, frame_start, moved)
                latents = sampler.step(flow, latents)
            self._sync()
            denoise_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            block_pixels = torch.cat(list(decoder.feed(latents)), dim=2)
            if dropped:
                block_pixels, dropped = block_pixels[:, :, dropped:], 0
            clip_pixels.append(block_pixels.to(self.vae.dtype))
            frames = to_uint8(block_pixels)[: max(0, plan.needed - produced)]
            decode_s, prime_s = time.perf_counter() - t0 + prime_s, 0.0
            produced += len(frames)
            out = plan.resampler.push(frames)
            if index == opt.blocks_per_clip - 1 and n + 1 < blocks:  # the next clip's decoder primes on these
                recent = torch.cat(clip_pixels, dim=2)[:, :, -self.task.motion_frames :]
                history = torch.cat([history[:, :, recent.shape[2] :], recent], dim=2)
            if out:
                timing = {"denoise_s": denoise_s, "encode_s": encode_s, "decode_s": decode_s, "steps": float(steps),
                          "block": float(n), "elapsed_s": time.perf_counter() - started}
                encode_s = 0.0
                yield WanFrameChunk(out_index, np.stack(out), p.fps, plan.total, clip=clip, timing=timing,
                                    sampling=sampling)
                out_index += len(out)
        log.info("LiveAvatar job done: %d frames at %.3g fps in %.2f s", out_index - plan.segment.start, p.fps,
                 time.perf_counter() - started)

