"""Wan2.2-S2V-14B as a streaming VideoEngine: photo + speech -> frame chunks, clip after clip.

What one `generate(job)` does, following `WanS2V.generate` (wan/speech2video.py, Wan-Video/Wan2.2 42bf4cf):

1. Size: the request's width x height (multiples of 16), or the official `get_size_less_than_area` of the photo
   within `max_area` (480 x 832 by default; sides multiples of 64). The photo is scaled to cover that size and
   centre-cropped, then VAE-encoded once: the reference latents, given to every clip (the model re-anchors the
   identity on them every clip, i.e. every 5 s at the official 80 frames per clip).
2. Audio: the wav2vec2 hidden states [25, T, 1024] at 50 Hz (from the job, or computed from the waveform with the
   release's wav2vec2), linearly resampled to 30 Hz (`linear_interpolation`, align_corners) and picked per video
   frame at 16 fps (`get_audio_embed_bucket_fps`: frame k takes 30 Hz frame round(30 k / 16), zeros past the
   end), laid out [B, layers, dim, frames] for the DiT.
3. Text: umT5 context of the prompt; the unconditional branch gets the negative prompt (official Chinese list
   by default) and all-zero audio, with guidance 4.5 (uncond + g (cond - uncond)); skipped when g <= 1.
4. Clips of `infer_frames` (80) frames: per clip, noise [16, infer_frames / 4, H/8, W/8] from seed + clip,
   `steps` (40) of flow-matching UniPC with shift 3; the first clip drops the motion tokens
   (drop_first_motion); later clips get the VAE latents of the last 73 generated frames (motion frames,
   zero frames before the video starts), re-encoded after every clip.
5. Decode: the clip's latents after the motion latents (after the reference latent for the first clip) through
   the causal VAE, streamed latent frame by latent frame (`WanVAE.decode_chunks`); the first clip drops its
   first 3 frames. Pixels map to uint8 as the official `save_video` (floor of (x + 1) / 2 * 255).

tests/parity/test_s2v_pipeline.py runs the official `WanS2V.generate` against this engine on one tiny release with
the departures below that change numbers switched to the official behaviour (`audio_sync=False`, `cfg_batched`
both ways, a photo at the output size): the streamed frames agree to float32 round-off.

Where this differs from the official pipeline, and why:

* Streaming: frames go out as the VAE decodes them, in chunks of `params.chunk_frames` (flushed at the end of
  every clip) with timing; the official decodes each clip whole and returns the video at the end.
* Length: the official makes int(seconds / 5) + 1 whole clips; here exactly ceil(seconds x fps) frames
  (capped at `params.max_duration_s`) are streamed, making as many clips as that needs.
* A/V sync (`audio_sync`, on by default): the official first clip drops its first 3 frames but not their audio,
  so its video runs 3 frames (0.19 s) ahead of the audio it is muxed with. Here every clip's audio window starts
  3 frames earlier (the first clip's is padded with copies of the first audio frame, as the model itself pads),
  so output frame k belongs to audio frame k. `audio_sync=False` reproduces the official indexing.
* Frame rate: Wan S2V generates 16 fps. Another `params.fps` is served by frame interpolation (output frame j
  is the frame at time j / fps between its two 16 fps neighbours: `frame_interpolation`, the engine's
  `interpolation`: optical flow by default, RIFE with its weights) or, with interpolation none, by nearest-time
  frame selection (repeated frames above 16 fps, skipped ones below).
* Noise is drawn from a CPU generator in float32 (same video for a seed on any device); the official draws bf16
  noise on the GPU (on the CPU in float32 it draws exactly ours). Latents stay float32 between steps (official:
  bf16).
* Photo fit: scale to cover + centre crop; the official resizes the short side to min(H, W) and centre-crops,
  which pads black bars when the photo's aspect is a little off the (64-rounded) target's.
* No identity check of its own: the talking_head pipeline judges every segment (identity gate included) and
  re-rolls a failing one with a derived seed, one policy with one threshold (python_backends/quality/).
* CFG branches are batched into one forward when `cfg_batched` (the official runs two forwards).
* `decode_context_latents` (off by default) primes the causal VAE decoder with only the last few motion latents
  instead of all 19: faster (at 480p the 19 cost about as much as decoding 70 frames), approximate.
* Audio longer than `params.max_duration_s` is cut one second past it before wav2vec2 (the official encodes the
  whole recording; the kept second gives the last frames their right-hand context).
* `sampler="euler"` with few steps is offered for step-distilled checkpoints; the official offers UniPC and DPM++.
* The pose-video condition (`pose_video`) and TTS of the official are not offered: cond_states are the official
  all-zero pose latents.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ....audio.wav2vec2 import FPS as WAV2VEC2_FPS
from ....audio.wav2vec2 import SAMPLE_RATE, Wav2Vec2Features, check_folder
from ....errors import InputError, WeightsUnavailable
from ....frame_interpolation.config import Interpolation
from ....transfer import to_device
from ...job import GenerationJob, GenerationParams, segment_range
from ..common.attention import ATTENTION_BACKENDS, SDPA, attention_function, check_attention_backend
from ..common.checkpoint import check_release_layout, load_s2v_transformer, shared_release_entries
from ..common.compile_threads import allow_compiled_calls_beside_compiling
from ..common.configs import S2V_14B, WanS2VTaskConfig, WanS2VTransformerConfig
from ..common.scheduler import SAMPLERS, make_sampler
from ..common.streaming import ChunkMaker, OverlapOptions, PhaseClock, PixelPiece, WanFrameChunk, stream_chunks
from ..common.text_encoder import UMT5Config, WanTextEncoder, load_text_encoder
from ..common.vae import SPATIAL_STRIDE, VAE_MEMORY_FORMATS, WanVAE, configure_vae, load_vae, read_checkpoint
from .model import WanS2VTransformer, cfg_forward, guide

if TYPE_CHECKING:
    from ....frame_interpolation.resampler import InterpolatingResampler
    from ..animate.configs import WanAnimateTaskConfig, WanAnimateTransformerConfig

log = logging.getLogger(__name__)

ENGINE_KEY = "s2v-14B"  # GenerationParams.engine value
AUDIO_VIDEO_RATE = 30  # AudioEncoder.video_rate: wav2vec2 states are resampled to 30 Hz before bucketing
FIRST_CLIP_DROPPED_FRAMES = 3  # WanS2V.generate: image[:, :, 3:] for the first clip when drop_first_motion
SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2
MIN_SIDE = 64  # frame packing's 4x motion patches need latent sides >= 8
MAX_SIDE = 2048
SIZE_DIVISOR = 64  # official get_size_less_than_area pads the derived size to multiples of 64


@dataclass(frozen=True)
class WanS2VOptions(OverlapOptions):
    """Engine-level choices; steps, guidance, seed, size and fps come with each job. overlap / overlap_depth
    (OverlapOptions): VAE decoding where the next clip does not need it, the host copy, interpolation and chunking
    beside the DiT."""

    sampler: str = "unipc"  # unipc (official) | euler (step-distilled checkpoints)
    default_steps: int | None = None  # None: the task's 40
    default_guidance: float | None = None  # None: the task's 4.5
    shift: float | None = None  # None: the task's 3.0
    infer_frames: int = 80  # frames per clip (multiple of 4); generate.py --infer_frames default
    max_area: int = 480 * 832  # default size budget for the photo's aspect (official '480*832')
    cfg_batched: bool = True  # both guidance branches in one forward
    audio_sync: bool = True  # shift audio windows by the first clip's dropped frames (see module docstring)
    default_prompt: str = "A person is talking to the camera, natural facial expressions and lip movements."
    negative_prompt: str | None = None  # None: the official sample_neg_prompt
    vae_dtype: str = "float32"  # the official VAE runs in float32
    vae_memory_format: str = "contiguous"  # or channels_last_3d (vae.configure_vae: same results, to round-off)
    vae_compile: bool = False  # torch.compile the VAE's norm + SiLU pairs (vae.configure_vae)
    vae_cudnn_benchmark: bool = False  # cuDNN times its convolution algorithms per shape (vae.configure_vae)
    # Motion latents decoded before a clip's own to prime the causal VAE decoder. None: all 19 (official,
    # exact); fewer is faster (at 480p the 19 cost about as much as decoding 70 frames) but approximate.
    decode_context_latents: int | None = None
    text_cache_size: int = 8  # prompts whose umT5 context is kept
    # umT5-XXL (11 GiB in bf16) on the CPU in float32, as the official --t5_cpu: the GPU memory goes to the DiT
    # (LiveAvatar's KV caches need it on an 80 GB card); a new prompt costs seconds there, a cached one nothing.
    text_encoder_cpu: bool = False
    # Speed switches (perf/RESULTS.md measures each on the H100):
    lora: str | None = None  # LoRA merged into the DiT at load, e.g. a step-distillation LoRA (LightX2V-style);
    #                          a path, absolute or relative to the release folder; pair it with sampler=euler
    lora_alpha: float | None = None  # for pairs without a file alpha; None: alpha = rank (scale 1)
    lora_strength: float = 1.0  # LightX2V's "strength": multiplies the whole LoRA delta
    lora_targets: tuple[str, ...] | None = None  # a PEFT release's target_modules: its LoRA must cover exactly
    #                                             those modules; None: any linear layers, as many as the file has
    fp8: str | None = None  # rowwise | tensor: FP8 e4m3 linear layers (Hopper/Ada); None keeps bf16
    # The DiT's self-attention: sdpa, or our 8-bit Triton kernel (attention.ATTENTION_BACKENDS; CUDA 8.9+)
    attention_backend: str = SDPA
    compile: bool = False  # torch.compile the DiT (first request pays the compile time)
    # Tiling: False makes full infer_frames clips (official), so a 10 s clip (163 frames with the 3 the first clip
    # drops) takes 3 x 80 = 240 frames of denoising; True keeps the clip count and shortens every clip to what the
    # job needs (3 x 56 = 168). Clips shorter than the released 80 frames are our departure.
    balance_clips: bool = False

    def sampling(self, task: WanS2VTaskConfig = S2V_14B, steps: int | None = None,
                 guidance: float | None = None) -> dict[str, object]:
        """What a clip costs in DiT forward passes with these settings (the defaults where None)."""
        steps = steps or self.default_steps or task.sample_steps
        if guidance is None:
            guidance = task.sample_guide_scale if self.default_guidance is None else self.default_guidance
        cfg = guidance > 1.0
        return {"sampler": self.sampler, "steps": steps, "guidance": guidance, "cfg": cfg,
                "frames_per_clip": self.infer_frames, "dit_forwards_per_clip": steps * (2 if cfg else 1),
                "latent_frames_per_forward": self.infer_frames // 4}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.infer_frames < 4 or self.infer_frames % 4:
            raise ValueError(f"infer_frames must be a positive multiple of 4, got {self.infer_frames}")
        if self.infer_frames <= FIRST_CLIP_DROPPED_FRAMES:
            raise ValueError(f"infer_frames must exceed the {FIRST_CLIP_DROPPED_FRAMES} frames the first clip drops")
        if self.default_steps is not None and self.default_steps < 1:
            raise ValueError(f"default_steps must be >= 1, got {self.default_steps}")
        if self.max_area < MIN_SIDE * MIN_SIDE:
            raise ValueError(f"max_area must be at least {MIN_SIDE * MIN_SIDE}, got {self.max_area}")
        if self.decode_context_latents is not None and self.decode_context_latents < 1:
            raise ValueError(f"decode_context_latents must be >= 1 or None, got {self.decode_context_latents}")
        if self.fp8 not in (None, "rowwise", "tensor"):
            raise ValueError(f"fp8 must be rowwise, tensor or unset, got {self.fp8!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, "
                             f"got {self.attention_backend!r}")
        check_vae_options(self.vae_dtype, self.vae_memory_format)


def check_vae_options(dtype: str, memory_format: str) -> None:
    """The VAE settings the S2V and Animate options share."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"vae_dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if memory_format not in VAE_MEMORY_FORMATS:
        raise ValueError(f"vae_memory_format must be one of {', '.join(VAE_MEMORY_FORMATS)}, got {memory_format!r}")


# ---------------------------------------------------------------- release folder


def release_entries(task: WanS2VTaskConfig = S2V_14B) -> dict[str, str]:
    """Relative path -> what it is, for every entry a release folder must have besides the DiT shards."""
    return {**shared_release_entries(task), task.wav2vec: "the wav2vec2 audio encoder folder"}


def check_release_folder(folder: Path, task: WanS2VTaskConfig = S2V_14B) -> None:
    """Raise WeightsUnavailable naming every file or folder of the official layout that `folder` lacks."""
    check_release_layout(folder, release_entries(task), "Wan2.2-S2V", "Wan-AI/Wan2.2-S2V-14B", "make_tiny_s2v_release")
    check_folder(folder / task.wav2vec)


def _shape(state: Mapping[str, torch.Tensor], key: str, source: Path) -> tuple[int, ...]:
    if key not in state:
        raise WeightsUnavailable(f"{source} lacks {key!r}: it is not a checkpoint of this layout")
    return tuple(state[key].shape)


def infer_umt5_config(state: Mapping[str, torch.Tensor], source: Path) -> UMT5Config:
    """The umT5 encoder size a checkpoint holds (umT5-XXL for the release); the strict loader checks the rest."""
    vocab, dim = _shape(state, "token_embedding.weight", source)
    layers = 0
    while f"blocks.{layers}.norm1.weight" in state:
        layers += 1
    if layers == 0:
        raise WeightsUnavailable(f"{source} has no encoder blocks ('blocks.0.norm1.weight' is missing)")
    shared = "pos_embedding.embedding.weight" in state
    buckets, heads = _shape(state, "pos_embedding.embedding.weight" if shared else
                            "blocks.0.pos_embedding.embedding.weight", source)
    return UMT5Config(vocab_size=vocab, dim=dim, dim_attn=_shape(state, "blocks.0.attn.q.weight", source)[0],
                      dim_ffn=_shape(state, "blocks.0.ffn.fc1.weight", source)[0], num_heads=heads,
                      num_layers=layers, num_buckets=buckets, shared_pos=shared)


def infer_vae_dim(state: Mapping[str, torch.Tensor], source: Path) -> int:
    """The VAE's base width (96 for Wan2.1_VAE.pth)."""
    return _shape(state, "encoder.conv1.weight", source)[0]


def text_encoder_placement(device: torch.device, text_encoder_cpu: bool,
                           t5_dtype: str = "bfloat16") -> tuple[torch.device, torch.dtype]:
    """Where umT5 runs and in what: float32 on the CPU (the DiT's, or beside a GPU DiT with text_encoder_cpu), else
    the release's t5_dtype."""
    if text_encoder_cpu or device.type == "cpu":
        return torch.device("cpu"), torch.float32
    return device, getattr(torch, t5_dtype)


def load_vae_and_text_encoder(folder: Path, task: WanS2VTaskConfig | WanAnimateTaskConfig, device: torch.device,
                              vae_dtype: str, transformer: WanS2VTransformerConfig | WanAnimateTransformerConfig,
                              vae_memory_format: str = "contiguous", vae_compile: bool = False,
                              vae_cudnn_benchmark: bool = False,
                              text_encoder_cpu: bool = False) -> tuple[WanVAE, WanTextEncoder]:
    """The Wan2.1 VAE and the umT5 encoder of a release folder, shared by the S2V and Animate engines; umT5 in
    float32 on CPU (`device`'s or, with text_encoder_cpu, beside a GPU DiT), else in the release's t5_dtype, and
    checked to make the text features the DiT takes."""
    vae_path = folder / task.vae_checkpoint
    vae = load_vae(vae_path, device, getattr(torch, vae_dtype), dim=infer_vae_dim(read_checkpoint(vae_path), vae_path))
    configure_vae(vae, vae_memory_format, vae_compile, vae_cudnn_benchmark)
    t5_path = folder / task.t5_checkpoint
    t5_config = infer_umt5_config(read_checkpoint(t5_path), t5_path)
    if t5_config.dim != transformer.text_dim:
        raise WeightsUnavailable(f"{t5_path} makes {t5_config.dim}-wide text features but the DiT in {folder} "
                                 f"takes text_dim {transformer.text_dim}: the files are not from one release")
    t5_device, t5_dtype = text_encoder_placement(device, text_encoder_cpu, task.t5_dtype)
    text_encoder = load_text_encoder(t5_path, folder / task.t5_tokenizer, t5_device, t5_dtype, t5_config,
                                     text_len=transformer.text_len)
    return vae, text_encoder


# ---------------------------------------------------------------- audio


def resample_to_video_rate(features: torch.Tensor) -> torch.Tensor:
    """wav2vec2 states [L, T, D] at 50 Hz -> [L, D, int(T / 50 x 30)] at 30 Hz (official linear_interpolation)."""
    length = int(features.shape[1] / float(WAV2VEC2_FPS) * AUDIO_VIDEO_RATE)
    if length < 1:
        raise InputError("the speech is too short for Wan S2V: upload at least 0.1 s", "audio_too_short")
    return F.interpolate(features.transpose(1, 2).float(), size=length, mode="linear", align_corners=True)


def audio_window(features30: torch.Tensor, first: int, count: int, fps: int) -> torch.Tensor:
    """[1, L, D, count] features of video frames first .. first + count - 1 at `fps`.

    Frame k takes the 30 Hz frame round(30 k / fps) (numpy rounding, as get_sample_indices); frames before the
    start take the first frame and frames past the end are zeros (get_audio_embed_bucket_fps's padding).
    """
    frames = np.arange(first, first + count)
    index = np.round(np.maximum(frames, 0) * AUDIO_VIDEO_RATE / fps).astype(np.int64)
    valid = index < features30.shape[2]
    out = features30.new_zeros(1, features30.shape[0], features30.shape[1], count)
    if valid.any():
        positions = to_device(torch.from_numpy(np.flatnonzero(valid)), features30.device)
        out[0, :, :, positions] = features30[:, :, to_device(torch.from_numpy(index[valid]), features30.device)]
    return out


# ---------------------------------------------------------------- size and photo


def size_within_area(height: int, width: int, target_area: int, divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Official WanS2V.get_size_less_than_area: the largest scale (<= 1) whose 64-padded size fits the area."""
    if height * width <= target_area:
        min_scale, max_scale = 0.1, 1.0
    else:
        d = divisor - 1
        b = d * (height + width)
        a = height * width
        c = d**2 - target_area
        min_scale = (-b + math.sqrt(b**2 - 2 * a * c)) / (2 * a)
        max_scale = math.sqrt(target_area / (height * width))
    for i in range(100):
        scale = max_scale - (max_scale - min_scale) * i / 100
        new_h, new_w = int(height * scale), int(width * scale)
        padded_h = new_h + (64 - new_h % 64) % 64
        padded_w = new_w + (64 - new_w % 64) % 64
        if padded_h * padded_w <= target_area:
            return padded_h, padded_w
    aspect = width / height
    target_w = int((target_area * aspect) ** 0.5 // divisor * divisor)
    target_h = int((target_area / aspect) ** 0.5 // divisor * divisor)
    if target_w >= width or target_h >= height:
        target_w, target_h = int(width // divisor * divisor), int(height // divisor * divisor)
    return target_h, target_w


def output_size(photo_hw: tuple[int, int], width: int, height: int, max_area: int) -> tuple[int, int]:
    """(H, W) of the video: the requested size, one side derived from the photo's aspect, or the official default."""
    h, w = photo_hw
    if width < 0 or height < 0:
        raise InputError(f"width and height must be positive (or 0 for automatic), got {width}x{height}")
    if not width and not height:
        out_h, out_w = size_within_area(h, w, max_area)
        out_h, out_w = max(out_h, MIN_SIDE), max(out_w, MIN_SIDE)
        if max(out_h, out_w) > MAX_SIDE:
            raise InputError(f"a {w}x{h} photo is too elongated for Wan S2V ({out_w}x{out_h}); crop it nearer "
                             f"to the face or send width and height", "bad_size")
        return out_h, out_w
    if not width:
        width = max(SIZE_MULTIPLE, round(height * w / h / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    elif not height:
        height = max(SIZE_MULTIPLE, round(width * h / w / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise InputError(f"Wan S2V needs width and height in multiples of {SIZE_MULTIPLE}, got {width}x{height}; "
                         f"e.g. {round(width / 16) * 16}x{round(height / 16) * 16}", "bad_size")
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InputError(f"Wan S2V sizes run from {MIN_SIDE} to {MAX_SIDE} pixels a side, got {width}x{height}",
                         "bad_size")
    return height, width


def fit_photo(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale the photo to cover height x width and centre-crop it: [height, width, 3] uint8."""
    h, w = photo.shape[:2]
    scale = max(height / h, width / w)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    resized = cv2.resize(photo, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y0, x0 = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])


def motion_pixels(frames: np.ndarray | None, start: int, fps: float, first16: int, fps16: int, count: int,
                  height: int, width: int, fill: torch.Tensor | None = None) -> torch.Tensor:
    """[1, 3, count, H, W] in [-1, 1]: the `count` 16 fps frames before source frame `first16`, taken from the
    caller's frames (output frames start - len(frames) .. start - 1 at `fps`) by nearest time; where there are
    none, `fill` ([1, 3, 1, H, W]) or zero frames, as the official pads before the video starts."""
    out = torch.zeros(1, 3, count, height, width) if fill is None else fill.float().cpu().expand(
        1, 3, count, height, width).clone()
    if frames is None or not len(frames):
        return out
    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"motion_frames must be [n, H, W, 3] uint8, got {frames.shape}", "bad_motion_frames")
    oldest = start - len(frames)
    for k in range(count):
        source = first16 - count + k
        j = int(math.floor(source * fps / fps16 + 0.5))
        if source < 0 or not oldest <= j < start:
            continue
        frame = frames[j - oldest]
        if frame.shape[:2] != (height, width):
            frame = fit_photo(frame, height, width)
        out[0, :, k] = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div(127.5).sub(1.0)
    return out


def describe_sampling(sampling: Mapping[str, object]) -> str:
    """One line for logs and weight notes: sampler, steps, guidance and the DiT forwards a clip costs."""
    cfg = f"CFG {sampling['guidance']:g} (x2 forwards)" if sampling["cfg"] else "no CFG"
    return (f"{sampling['steps']} {sampling['sampler']} steps, {cfg}: {sampling['dit_forwards_per_clip']} DiT "
            f"forwards per {sampling['frames_per_clip']}-frame clip ({sampling['latent_frames_per_forward']} "
            f"latent frames a forward)")


def check_photo(job: GenerationJob) -> np.ndarray:
    photo = np.asarray(job.photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise InputError(f"the photo must be [H, W, 3] uint8 RGB, got {photo.shape} {photo.dtype}", "bad_photo")
    return photo


@dataclass(frozen=True)
class FramePlan:
    """Which frames a request streams: the clip's output frames, the requested segment of them, and the
    16 fps source frames that segment needs."""

    total: int  # output frames of the whole clip at params.fps
    segment: range  # the output frames this request streams
    resampler: InterpolatingResampler  # 16 fps frames in, params.fps frames out
    first16: int  # the first 16 fps frame of the segment
    needed: int  # 16 fps frames this request makes
    continuing: bool  # a segment from the middle: it continues from the caller's motion frames


def frame_plan(params: GenerationParams, seconds: float, fps16: int, interpolation: Interpolation,
               device: object = "cpu") -> FramePlan:
    source_total = max(1, math.ceil(seconds * fps16 - 1e-9))
    total = max(1, math.ceil(seconds * params.fps - 1e-9))
    segment = segment_range(params, total)
    resampler = interpolation.resampler(fps16, params.fps, source_total, len(segment), segment.start, device)
    first16 = resampler.base
    needed = resampler.source_stop - first16
    return FramePlan(total, segment, resampler, first16, needed, segment.start > 0)


# ---------------------------------------------------------------- engine


class WanEngineBase:
    """What the S2V and Animate engines share: the prompt cache, the per-job step/guidance defaults and the stream
    synchronisation behind their stage timings.

    Subclasses set text_encoder, device, options (default_steps, default_guidance, text_cache_size), task
    (sample_steps, sample_guide_scale) and _contexts (an insertion-ordered dict). `interpolation` converts the
    generated frame rate to params.fps (the video_generator service sets it from its settings).
    """

    interpolation: Interpolation = Interpolation()
    uses_negative_prompt = True  # its sampler reads the negative prompt's context (CFG); LiveAvatar's does not

    def _default_prompt(self) -> str:
        return self.options.default_prompt

    def _prompt(self, job: GenerationJob) -> str:
        return job.params.prompt or self._default_prompt()

    def _negative_prompt(self) -> str:
        return self.options.negative_prompt if self.options.negative_prompt is not None else self.task.sample_neg_prompt

    def prepare(self) -> None:
        """Encode the prompts a request without one uses at load: umT5 on the CPU (text_encoder_cpu) takes seconds
        per prompt, which the first request should not wait for."""
        self._text(self._default_prompt())
        if self.uses_negative_prompt:
            self._text(self._negative_prompt())

    def _text(self, prompt: str) -> torch.Tensor:
        context = self._contexts.get(prompt)
        if context is None:
            context = self.text_encoder([prompt])[0].to(self.device)
            if len(self._contexts) >= self.options.text_cache_size:
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[prompt] = context
        return context

    def _sync(self) -> None:
        """Wait for this thread's CUDA stream, so that the per-stage timings measure the stage rather than the
        queueing (the stream, not the device: stage threads run on their own streams meanwhile)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _settings(self, job: GenerationJob) -> tuple[int, float]:
        p = job.params
        steps = p.steps if p.steps is not None else (self.options.default_steps or self.task.sample_steps)
        guidance = p.guidance if p.guidance is not None else (
            self.task.sample_guide_scale if self.options.default_guidance is None else self.options.default_guidance)
        if not 1 <= steps <= 1000:
            raise InputError(f"steps must be between 1 and 1000, got {steps}", "bad_steps")
        if not 0.0 <= guidance <= 30.0:
            raise InputError(f"guidance must be between 0 and 30, got {guidance}", "bad_guidance")
        if p.fps <= 0 or p.chunk_frames < 1:
            raise InputError(f"fps must be positive and chunk_frames >= 1, got {p.fps} and {p.chunk_frames}")
        return steps, guidance


class WanS2VEngine(WanEngineBase):
    """The S2V-14B pipeline over our own DiT, VAE, umT5 and wav2vec2 modules (see the module docstring)."""

    renders_segments = True  # a segment starts at its own clip, conditioned on the caller's motion frames

    def __init__(self, transformer: WanS2VTransformer, vae: WanVAE, text_encoder: WanTextEncoder,
                 audio_encoder: Wav2Vec2Features | None, task: WanS2VTaskConfig = S2V_14B,
                 options: WanS2VOptions | None = None) -> None:
        self.transformer, self.vae, self.text_encoder = transformer, vae, text_encoder
        self.audio_encoder = audio_encoder
        self.task = task
        self.options = options or WanS2VOptions()
        self.device = transformer.patch_embedding.weight.device
        config = transformer.config
        official = config == WanS2VTransformerConfig()
        self.name = "wan2.2-s2v-14B" if official else (
            f"wan2.2-s2v-custom(dim={config.dim},layers={config.num_layers})")
        self._contexts: dict[str, torch.Tensor] = {}

    @classmethod
    def from_folder(cls, folder: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                    options: WanS2VOptions | None = None,
                    task: WanS2VTaskConfig = S2V_14B) -> WanS2VEngine:
        """Load the official release folder (or a tiny one of the same layout) strictly onto `device`.

        dtype is the DiT's (bf16 on GPU, float32 on CPU by default); umT5 runs in bf16 on GPU (the official
        t5_dtype) and float32 on CPU; the VAE in `options.vae_dtype`; wav2vec2 in float32.
        """
        folder, device = Path(folder), torch.device(device)
        options = options or WanS2VOptions()
        check_release_folder(folder, task)
        transformer = load_s2v_transformer(folder, device, dtype)
        config = transformer.config
        _apply_speed_options(transformer, folder, options)

        vae, text_encoder = load_vae_and_text_encoder(folder, task, device, options.vae_dtype, config,
                                                      options.vae_memory_format, options.vae_compile,
                                                      options.vae_cudnn_benchmark, options.text_encoder_cpu)
        audio_encoder = Wav2Vec2Features(folder / task.wav2vec, device=str(device))
        if (audio_encoder.layers, audio_encoder.dim) != (config.audio_layers, config.audio_dim):
            raise WeightsUnavailable(
                f"{folder / task.wav2vec} gives {audio_encoder.layers} hidden states of width {audio_encoder.dim}, "
                f"the DiT weighs {config.audio_layers} of width {config.audio_dim}")
        engine = cls(transformer, vae, text_encoder, audio_encoder, task, options)
        log.info("%s from %s on %s (DiT %s, %d layers, VAE %s); per clip by default: %s", engine.name, folder,
                 device, transformer.patch_embedding.weight.dtype, config.num_layers, options.vae_dtype,
                 describe_sampling(engine.sampling()))
        return engine

    # -- per-job inputs -----------------------------------------------------------------------------------------

    def _audio_features(self, job: GenerationJob) -> torch.Tensor:
        """[L, T, D] wav2vec2 states at 50 Hz, checked against what the DiT takes."""
        config = self.transformer.config
        if job.wav2vec2_features is not None and np.asarray(job.wav2vec2_features).size:
            features = torch.from_numpy(np.asarray(job.wav2vec2_features, np.float32))
        elif job.waveform is not None and len(job.waveform):
            if self.audio_encoder is None:
                raise InputError("this Wan S2V engine has no wav2vec2: send wav2vec2 features", "no_audio_features")
            # wav2vec2 attends over the whole recording (as the official, which encodes all of it); past
            # max_duration only a second of context is kept, so a long upload costs no quadratic attention.
            keep = int((job.params.max_duration_s + 1.0) * SAMPLE_RATE)
            waveform = np.asarray(job.waveform, np.float32)[:keep]
            features = torch.from_numpy(self.audio_encoder.encode([waveform])[0])
        else:
            raise InputError("Wan S2V needs speech: send a waveform or wav2vec2 features", "no_audio")
        if features.ndim != 3 or features.shape[0] != config.audio_layers or features.shape[2] != config.audio_dim:
            raise InputError(f"wav2vec2 features must be [{config.audio_layers}, T, {config.audio_dim}] (all hidden "
                             f"states of wav2vec2-large-xlsr-53-english), got {tuple(features.shape)}",
                             "bad_audio_features")
        return features.to(self.device)

    @staticmethod
    def _duration(job: GenerationJob, features: torch.Tensor) -> float:
        if job.waveform is not None and len(job.waveform):
            seconds = len(job.waveform) / SAMPLE_RATE
        else:
            seconds = features.shape[1] / WAV2VEC2_FPS
        seconds = min(seconds, job.params.max_duration_s)
        if seconds < 0.1:
            raise InputError("the speech (or max duration) is shorter than 0.1 s: send a longer recording",
                             "audio_too_short")
        return seconds

    def _reference(self, photo: np.ndarray, height: int, width: int) -> tuple[torch.Tensor, float]:
        fitted = fit_photo(photo, height, width)
        pixels = torch.from_numpy(fitted).to(self.device).permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0)
        start = time.perf_counter()
        # WanVAE.encode cannot take a single frame (its 4-frame chunking yields an empty chunk), so the photo is
        # encoded as the first of 5 equal frames: the causal encoder's first latent frame sees only the first
        # frame, so it is exactly the single-image latent the official code computes.
        latents = self.vae.encode(pixels[None, :, None].expand(-1, -1, 5, -1, -1))[:, :, :1]
        self._sync()
        return latents, time.perf_counter() - start

    # -- denoising ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _denoise(self, seed: int, shape: tuple[int, ...], steps: int, guidance: float, context: torch.Tensor,
                 context_null: torch.Tensor, ref: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor,
                 drop_motion: bool) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        shift = self.task.sample_shift if self.options.shift is None else self.options.shift
        sampler = make_sampler(self.options.sampler, steps, shift)
        model_dtype = self.transformer.patch_embedding.weight.dtype
        audio = audio.to(model_dtype)  # the official feeds the audio embedding in param_dtype
        kwargs = {"motion_frames": (self.task.motion_frames, self.task.lat_motion_frames),
                  "drop_motion_frames": drop_motion}
        for _ in range(steps):
            t = sampler.timestep(self.device)
            if guidance > 1.0 and self.options.cfg_batched:
                cond, uncond = cfg_forward(self.transformer, latents=latents, timestep=t, context=[context],
                                           context_null=[context_null], ref_latents=ref, motion_latents=motion,
                                           audio=audio, **kwargs)
                flow = guide(cond, uncond, guidance)
            else:
                flow = self.transformer(latents, t, [context], ref, motion, audio, **kwargs)
                if guidance > 1.0:
                    uncond = self.transformer(latents, t, [context_null], ref, motion, audio * 0.0, **kwargs)
                    flow = guide(flow, uncond, guidance)
            latents = sampler.step(flow, latents)
        return latents

    @torch.no_grad()
    def _decoded(self, prefix: torch.Tensor, latents: torch.Tensor, drop: int) -> Iterator[torch.Tensor]:
        """The clip's pixels [1, 3, t, H, W] as the causal VAE produces them, after `prefix` primed its memory."""
        context = self.options.decode_context_latents
        if context is not None and prefix.shape[2] > context:
            prefix = prefix[:, :, prefix.shape[2] - context :]
        skip = prefix.shape[2]
        for index, pixels in enumerate(self.vae.decode_chunks(torch.cat([prefix, latents], dim=2))):
            if index < skip:
                continue
            if drop:
                cut = min(drop, pixels.shape[2])
                pixels, drop = pixels[:, :, cut:], drop - cut
            if pixels.shape[2]:
                yield pixels

    # -- the job ----------------------------------------------------------------------------------------------------

    def generate(self, job: GenerationJob) -> Iterator[WanFrameChunk]:
        """Stream the video of `job` in chunks as it is decoded; stops working when the consumer stops."""
        started = time.perf_counter()
        # The request's start by phase, reported with the first chunk (its timing's start_*_s), as LiveAvatar does.
        clock = PhaseClock(self._sync)
        p, opt, task = job.params, self.options, self.task
        photo = check_photo(job)
        steps, guidance = self._settings(job)
        sampling = self.sampling(steps, guidance)
        height, width = output_size(photo.shape[:2], p.width, p.height, opt.max_area)

        features = self._audio_features(job)
        seconds = self._duration(job, features)
        features30 = resample_to_video_rate(features)
        clock.lap("audio_features")
        fps16 = task.sample_fps
        plan = frame_plan(p, seconds, fps16, self.interpolation, self.device)
        segment, resampler, continuing, first16, needed = (plan.segment, plan.resampler, plan.continuing,
                                                           plan.first16, plan.needed)
        total = plan.total
        per_clip = opt.infer_frames
        dropped = FIRST_CLIP_DROPPED_FRAMES if task.drop_first_motion and not continuing else 0
        clips = 1 + math.ceil(max(0, needed - (per_clip - dropped)) / per_clip)
        if opt.balance_clips:  # as many clips, each just long enough: no mostly unused last clip
            per_clip = max(4, math.ceil((needed + dropped) / clips / 4) * 4)
            clips = math.ceil((needed + dropped) / per_clip)
            sampling = {**sampling, "frames_per_clip": per_clip, "latent_frames_per_forward": per_clip // 4}
        audio_offset = first16 - dropped if opt.audio_sync else first16

        context = self._text(self._prompt(job))
        context_null = self._text(self._negative_prompt())
        clock.lap("text")
        ref_latents, encode_s = self._reference(photo, height, width)
        clock.lap("reference_encode")
        lat_h, lat_w = height // SPATIAL_STRIDE, width // SPATIAL_STRIDE
        shape = (1, self.transformer.config.in_dim, per_clip // 4, lat_h, lat_w)
        vae_dtype = self.vae.dtype
        last_frames = motion_pixels(job.motion_frames if continuing else None, segment.start, p.fps, first16, fps16,
                                    task.motion_frames, height, width).to(self.device, vae_dtype)
        log.info("Wan S2V job: %dx%d, %.2f s -> %d clip(s) of %d frames, %d steps (%s), guidance %.2f", width,
                 height, seconds, clips, per_clip, steps, opt.sampler, guidance)

        source = self._clip_pieces(job, clips, needed, dropped, continuing, audio_offset, features30, shape, steps,
                                   guidance, context, context_null, ref_latents, last_frames, encode_s, clock.phases)
        chunks = ChunkMaker(resampler, needed, segment.start, p.fps, total, p.chunk_frames, sampling, started)
        yield from stream_chunks(self, "Wan S2V", source, chunks, "denoise+decode")

    def _clip_pieces(self, job: GenerationJob, clips: int, needed: int, dropped: int, continuing: bool,
                     audio_offset: int,
                     features30: torch.Tensor, shape: tuple[int, ...], steps: int, guidance: float,
                     context: torch.Tensor, context_null: torch.Tensor, ref_latents: torch.Tensor,
                     last_frames: torch.Tensor, encode_s: float, start: Mapping[str, float]) -> Iterator[PixelPiece]:
        """The source of the stage pipeline: clip after clip, denoised and decoded (the next clip's motion frames
        are this clip's decoded last frames, so decoding cannot leave the DiT's thread here); each clip ends with
        an empty piece that flushes its last chunk. `start` (the request's start by phase) goes out with the first
        piece."""
        p, task = job.params, self.task
        vae_dtype = self.vae.dtype
        lat_h, lat_w = shape[3], shape[4]
        motion_latents = torch.zeros(1, 16, task.lat_motion_frames, lat_h, lat_w, device=self.device)
        decoded = 0  # 16 fps frames decoded so far
        for clip in range(clips):
            first_clip = clip == 0
            drop_motion = first_clip and task.drop_first_motion and not continuing
            if not drop_motion:  # (with drop_first_motion off, the first clip sees the encoded zero frames)
                t0 = time.perf_counter()
                motion_latents = self.vae.encode(last_frames)
                self._sync()
                encode_s += time.perf_counter() - t0
            per_clip = shape[2] * 4
            audio = audio_window(features30, clip * per_clip + audio_offset, per_clip, task.sample_fps)
            prefix = ref_latents if drop_motion else motion_latents
            drop = dropped if first_clip else 0

            seed = p.seed + clip
            t0 = time.perf_counter()
            latents = self._denoise(seed, shape, steps, guidance, context, context_null, ref_latents,
                                    motion_latents, audio, drop_motion)
            self._sync()
            denoise_s = time.perf_counter() - t0
            stream = self._decoded(prefix, latents, drop)
            timing = {"denoise_s": denoise_s, "encode_s": encode_s, "steps": float(steps)}
            encode_s = 0.0
            last_clip = clip == clips - 1
            keep: list[torch.Tensor] = []  # this clip's last motion_frames pixels, for the next clip's motion
            empty = None
            t0 = time.perf_counter()
            while True:
                piece = next(stream, None)
                if piece is None:
                    break
                if not last_clip:
                    keep.append(piece.to(vae_dtype))
                    while sum(x.shape[2] for x in keep[1:]) >= task.motion_frames:
                        keep.pop(0)
                self._sync()
                empty = piece[:, :, :0]
                decoded += piece.shape[2]
                yield PixelPiece(piece, clip, timing, {**start, "decode_s": time.perf_counter() - t0})
                start = {}
                if last_clip and decoded >= needed:
                    stream.close()
                    break
                t0 = time.perf_counter()
            if empty is not None:
                yield PixelPiece(empty, clip, timing, flush=True)
            if not last_clip:
                tail = torch.cat(keep, dim=2)[:, :, -task.motion_frames :]
                overlap = tail.shape[2]
                last_frames = torch.cat([last_frames[:, :, overlap:], tail], dim=2)

    def sampling(self, steps: int | None = None, guidance: float | None = None) -> dict[str, object]:
        """What a clip costs in DiT forward passes with these settings (the engine's defaults when None)."""
        return self.options.sampling(self.task, steps, guidance)


def _apply_speed_options(transformer: WanS2VTransformer, folder: Path, options: WanS2VOptions) -> None:
    """LoRA merge first (it changes the bf16 weights), then FP8 conversion, the attention, then compilation."""
    if options.lora:
        from ..common.lora import merge_lora_, peft_targets

        path = Path(options.lora) if Path(options.lora).is_absolute() else folder / options.lora
        targets = None if options.lora_targets is None else peft_targets(transformer, options.lora_targets)
        merge_lora_(transformer, path, alpha=options.lora_alpha, strength=options.lora_strength, targets=targets)
    if options.attention_backend != SDPA:
        check_attention_backend(options.attention_backend, next(transformer.parameters()).device)
        transformer.self_attention = attention_function(options.attention_backend)
        log.info("self-attention: %s", options.attention_backend)
    apply_fp8_and_compile(transformer, options.fp8, options.compile)


def apply_fp8_and_compile(transformer: torch.nn.Module, fp8: str | None, compile: bool) -> None:
    """FP8 conversion of the linear layers, then per-block compilation (any Wan DiT: S2V, Animate)."""
    if fp8:
        from ..common.fp8 import convert_to_fp8

        converted = convert_to_fp8(transformer, fp8, use_fast_accum=True)
        log.info("FP8 (%s) linear layers: %d", fp8, converted)
    if compile:
        compile_regions(transformer)


def compile_regions(transformer: torch.nn.Module, **compile_options) -> None:
    """Regional compilation, as perf/bench_generator.py measures it: one graph serves every block. Compiling the
    whole DiT instead did not finish a 1 s warm-up clip in 9 minutes on the H100 (the surrounding code varies per
    clip: motion-frame packing, audio windows), while per-block compiling takes ~20 s. S2V's audio injection runs
    between blocks: its norms and cross-attentions are compiled the same way (a graph each for all injectors), so
    their float32 elementwise passes over the video tokens fuse as the blocks' do."""
    allow_compiled_calls_beside_compiling()
    modules = list(transformer.blocks)
    injector = getattr(transformer, "audio_injector", None)
    if injector is not None:
        modules += [*injector.injector, *injector.injector_pre_norm_feat,
                    *getattr(injector, "injector_adain_layers", ())]
    for module in modules:
        module.compile(**compile_options)
