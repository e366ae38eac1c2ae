"""The video_generator model's logic: pick an engine per request, run it, turn chunks into output arrays.

Engines load lazily and stay loaded: the preview engine costs nothing, a Wan 14B engine is loaded the first
time a request needs it (or at start with `preload`). Which engine made a video, and what a clip costs with its
sampler (`sampling`: steps, guidance, DiT forwards per clip), is in every chunk's info. For speech `auto` takes
LiveAvatar (4 steps, no CFG, block-causal) when its LoRA sits beside the official S2V folder, else the official
S2V sampler (40 UniPC steps x CFG 4.5 = 80 DiT forwards per 80-frame clip), else the preview engine.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import spec
from ..errors import ConfigError, InputError, TalkingHeadError, WeightsUnavailable
from ..frame_interpolation import config as interpolation
from ..licences import LicencePolicy
from ..weights import ALLOWED, OFFICIAL, SHIPPED, UNAVAILABLE, WeightsChoice, weights_root
from .engines import ENGINES as ENGINE_SPECS
from .engines import MODEL, PREVIEW_LABEL, SPEECH_ENGINES, animate_lora, served_frame_count
from .job import (
    ANIMATE,
    AUTO,
    ENGINES,
    LIVEAVATAR,
    PREVIEW,
    S2V,
    FrameChunk,
    GenerationJob,
    VideoEngine,
    params_from_request,
    segment_range,
    unknown_engine,
)
from .live_streams import LiveStream, LiveStreams, fingerprint
from .preview import ENGINE_NAME as PREVIEW_NAME
from .preview import PreviewEngine

log = logging.getLogger(__name__)

LIVEAVATAR_LICENCE = "Apache-2.0 (LiveAvatar LoRA, Alibaba-Quark/LiveAvatar; base Wan2.2-S2V-14B, Apache-2.0)"
# ModelTC/LightX2V and ModelTC/Wan2.2-Lightning carry Apache-2.0 LICENSE files; the Hugging Face cards of the LoRA
# files themselves could not be read from here.
LIGHTX2V_LICENCE = "Apache-2.0 per ModelTC's LightX2V / Wan2.2-Lightning repositories (check the model card)"


@dataclass(frozen=True)
class VideoGeneratorSettings:
    engine: str = AUTO  # used when a request names none: auto | preview | s2v-14B | liveavatar-14B | animate-14B
    keepalive_s: float = spec.STREAM_KEEPALIVE_S  # keep-alive interval of the stream (triton_io.StreamingModel)
    s2v_folder: str = "Wan2.2-S2V-14B"  # official release folder under <weights root>/video_generator/
    liveavatar_folder: str = "LiveAvatar"  # Quark-Vision/Live-Avatar (liveavatar.safetensors) beside s2v_folder
    animate_folder: str = "Wan2.2-Animate-14B"
    # LightX2V's 4-step distill LoRA for Animate (its configs/wan22/wan_animate_lora.json), under
    # <weights root>/video_generator/; merged with `animate_lora_steps` UniPC steps when the file is present.
    animate_lora: str = "Wan2.1-Distill-Loras/wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors"
    animate_lora_steps: int = 4
    preload: bool = False  # load the Wan engine at start instead of on first use
    # Official S2V engine switches (WanS2VOptions): sampler unipc|euler|euler-diffusers, default steps (0: official
    # 40), a LoRA file in the release folder, FP8 linear layers (rowwise|tensor|none), the self-attention (sdpa or an
    # 8-bit Triton kernel, wan/attention.py ATTENTION_BACKENDS), torch.compile; FP8, compile, the attention and the
    # VAE dtype apply to LiveAvatar too, whose sampler is its own.
    wan_sampler: str = "unipc"
    wan_steps: int = 0
    wan_lora: str = ""
    wan_fp8: str = "none"
    wan_attention: str = "sdpa"
    wan_compile: bool = False
    wan_vae_dtype: str = "float32"
    wan_vae_memory_format: str = "contiguous"  # or channels_last_3d (wan/common/vae.py configure_vae)
    wan_vae_compile: bool = False  # torch.compile the VAE's norm + SiLU pairs
    wan_vae_cudnn_benchmark: bool = False  # cuDNN times its convolution algorithms per shape (process-wide)
    # umT5-XXL on the CPU (official --t5_cpu): 11 GiB of GPU memory for the DiT, seconds per new prompt
    wan_text_encoder_cpu: bool = False
    wan_overlap: bool = True  # decoding, interpolation and the host copy overlap the DiT (stage_pipeline.py)
    wan_dit_priority: bool = False  # the DiT's CUDA stream before the overlapped stages' (stage_pipeline.py)
    wan_balance_clips: bool = False  # S2V: as many clips as full ones would take, each only as long as needed
    # 16 fps -> params.fps for the Wan engines: keys interpolation (auto | none | flow | rife), rife_file, rife_scale
    frame_interpolation: interpolation.InterpolationSettings = field(
        default_factory=interpolation.InterpolationSettings)
    # Streams held between a job's segment requests (live_streams.py): at most this many (0: none; each keeps
    # its KV caches and VAE states on the GPU), each let go when not continued within live_stream_idle_s.
    live_streams: int = 1
    live_stream_idle_s: float = 60.0
    liveavatar_history_frames: int = 365  # frames VAE-encoded for motion latents / decoder priming (release: 365)
    liveavatar_ref_distance: int = 0  # 0: drawn per forward from 4..30 as the release does; 4..30 fixes it
    liveavatar_kv_cache_fp8: bool = False  # its KV caches in e4m3 (half the memory, FP8 rounding; not the release's)
    # Benchmarks only: build the speech engines at release size with random weights in memory instead of reading
    # release folders (wan/random_engine.py). Speed is real; the video is noise.
    benchmark_random_weights: bool = False
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)

    def __post_init__(self) -> None:
        if self.engine not in (AUTO, *ENGINES):
            raise ConfigError(f"engine must be one of {(AUTO, *ENGINES)}, got {self.engine!r}")
        if self.live_streams < 0 or not self.live_stream_idle_s > 0:
            raise ConfigError(f"live_streams must be >= 0 and live_stream_idle_s > 0, got {self.live_streams} and "
                              f"{self.live_stream_idle_s:g}")


def wan_paths(settings: VideoGeneratorSettings, engine: str, root: Path | None) -> tuple[Path, ...] | None:
    """The files an engine loads from under <root>/video_generator/, or None when any is missing."""
    return ENGINE_SPECS[engine].paths(settings, root)


def _animate_note(settings: VideoGeneratorSettings, root: Path | None) -> str:
    if wan_paths(settings, ANIMATE, root) is None:
        return ""
    lora = animate_lora(settings, root)
    if lora is None:
        return "; Animate-14B: official 20 UniPC steps, no CFG (20 DiT forwards per 77-frame clip)"
    return (f"; Animate-14B + LightX2V 4-step LoRA {lora} ({LIGHTX2V_LICENCE}): {settings.animate_lora_steps} "
            f"UniPC steps, no CFG")


def choose_weights(settings: VideoGeneratorSettings, root: Path | None = None) -> WeightsChoice:
    """What `auto` would use for speech, what a clip costs with it, and what else is there."""
    paths = wan_paths(settings, LIVEAVATAR, root)
    if paths is not None and settings.engine in (AUTO, LIVEAVATAR):
        from .wan.s2v.engine import describe_sampling

        note = (f"Wan2.2-S2V-14B ({paths[0]}) with LiveAvatar's DMD LoRA merged, block-causal streaming within "
                f"704x384 (an area): {describe_sampling(_options(settings, LIVEAVATAR).sampling())}")
        return WeightsChoice(MODEL, LIVEAVATAR, OFFICIAL, paths[1], LIVEAVATAR_LICENCE,
                             note=note + _animate_note(settings, root), parts=(paths[0],), commercial_use=ALLOWED)
    paths = wan_paths(settings, S2V, root)
    if paths is not None and settings.engine in (AUTO, S2V):
        from .wan.s2v.engine import describe_sampling

        note = (f"{describe_sampling(_options(settings, S2V).sampling())}; for LiveAvatar's 4-step distilled "
                f"streaming put Quark-Vision/Live-Avatar's liveavatar.safetensors in <weights root>/{MODEL}/"
                f"{settings.liveavatar_folder}/")
        return WeightsChoice(MODEL, S2V, OFFICIAL, paths[0], "Apache-2.0 (Wan2.2)",
                             note=note + _animate_note(settings, root), commercial_use=ALLOWED)
    if settings.engine in (AUTO, PREVIEW):
        return WeightsChoice(
            MODEL, PREVIEW_NAME, SHIPPED, None, "Apache-2.0 (ours; no weights)",
            note=f"{PREVIEW_LABEL}; put the official {settings.s2v_folder}/ release folder under "
            f"<weights root>/{MODEL}/ for Wan2.2-S2V-14B" + _animate_note(settings, root),
            commercial_use=ALLOWED,
        )
    return WeightsChoice(MODEL, settings.engine, UNAVAILABLE, None, "-",
                         note=f"no {settings.engine} weights under <weights root>/{MODEL}/")


def choose_interpolation_weights(settings: VideoGeneratorSettings, root: Path | None = None) -> WeightsChoice:
    return interpolation.choose_weights(settings.frame_interpolation, root)


class EngineRegistry:
    def __init__(self, settings: VideoGeneratorSettings, device: str, root: Path | None = None) -> None:
        self.settings, self.device = settings, device
        self.root = root if root is not None else weights_root()
        self._engines: dict[str, VideoEngine] = {PREVIEW: PreviewEngine()}
        self._lock = threading.Lock()
        self.streams = LiveStreams(settings.live_streams, settings.live_stream_idle_s)
        if settings.preload:
            speech = self._speech_engine()
            if speech is not None:
                self.get(speech)

    def _paths(self, engine: str) -> tuple[Path, ...] | None:
        return wan_paths(self.settings, engine, self.root)

    def summary(self) -> str:
        """For the model's startup log: the engine `auto` takes for speech and what a clip costs with it, and on a GPU
        the CUDA libraries the process runs with."""
        if self.settings.benchmark_random_weights:
            from .wan.s2v.random_engine import STAND_INS

            text = f"speech engine {self._speech_engine()} [benchmark]: {'; '.join(STAND_INS)}"
        else:
            choice = choose_weights(self.settings, self.root)
            text = f"speech engine {choice.engine} [{choice.source}]: {choice.note}"
        if str(self.device).startswith("cuda"):
            from .cuda_libraries import describe_cuda_runtime

            text += f"; {describe_cuda_runtime()}"
        return text

    def _speech_engine(self) -> str | None:
        if self.settings.benchmark_random_weights:
            return self.settings.engine if self.settings.engine in SPEECH_ENGINES else SPEECH_ENGINES[0]
        return next((name for name in SPEECH_ENGINES if self._paths(name) is not None), None)

    def resolve(self, requested: str, job: GenerationJob) -> str:
        name = self.settings.engine if requested == AUTO else requested
        if name not in (AUTO, *ENGINES):
            raise InputError(unknown_engine(requested), "bad_parameter")
        if name != AUTO:
            return name
        if job.driving_frames is not None and job.waveform is None and self._paths(ANIMATE) is not None:
            return ANIMATE
        if job.waveform is not None:
            return self._speech_engine() or PREVIEW
        return PREVIEW

    def get(self, name: str) -> VideoEngine:
        with self._lock:
            if name not in self._engines:
                paths = self._paths(name)
                if self.settings.benchmark_random_weights and name in SPEECH_ENGINES:
                    engine = _random_wan(name, self.device, self.settings)
                elif paths is None:
                    raise WeightsUnavailable(_missing(self.settings, name))
                else:
                    engine = _load_wan(name, paths, self.device, self.settings, self.root)
                engine.interpolation = interpolation.resolve(self.settings.frame_interpolation, self.root)
                engine.interpolation.interpolator(self.device)  # a bad RIFE file fails here, not mid-request
                engine.prepare()
                self._engines[name] = engine
            return self._engines[name]


def _options(settings: VideoGeneratorSettings, engine: str):
    return ENGINE_SPECS[engine].options(settings, None)


def _missing(settings: VideoGeneratorSettings, name: str) -> str:
    return ENGINE_SPECS[name].needs(settings)


def _load_wan(name: str, paths: tuple[Path, ...], device: str, settings: VideoGeneratorSettings,
              root: Path | None) -> VideoEngine:
    return ENGINE_SPECS[name].load(paths, device, settings, root)


def _random_wan(name: str, device: str, settings: VideoGeneratorSettings) -> VideoEngine:
    from .wan.s2v.random_engine import build_random_engine

    return build_random_engine(_options(settings, name), device)


MIN_IMAGE_SIDE = 32  # below this there is no face to animate (found by tests/reliability: a 0x0 image streamed)


def _check_inputs(inputs: dict[str, np.ndarray]) -> None:
    photo = inputs[spec.IMAGE]
    if photo.ndim != 3 or photo.shape[2] != 3 or min(photo.shape[:2]) < MIN_IMAGE_SIDE:
        raise InputError(f"image must be an RGB photo [H, W, 3] of at least {MIN_IMAGE_SIDE} pixels per side, got "
                         f"{list(photo.shape)}: send the photo as preprocess decoded it", "bad_image")
    for name in (spec.FACE_BOX, spec.LANDMARKS, spec.EMBEDDING, spec.WAVEFORM, spec.WAV2VEC2_FEATURES):
        value = inputs.get(name)
        if value is not None and value.size and not np.isfinite(value).all():
            raise InputError(f"{name} holds NaN or infinite values: send what preprocess returned", "bad_input")


def job_from_inputs(inputs: dict[str, np.ndarray], parameters: dict) -> GenerationJob:
    def get(name: str) -> np.ndarray | None:
        return inputs.get(name)

    _check_inputs(inputs)

    return GenerationJob(
        photo=np.ascontiguousarray(inputs[spec.IMAGE], np.uint8),
        params=params_from_request(parameters),
        face_box=get(spec.FACE_BOX),
        landmarks=get(spec.LANDMARKS),
        embedding=get(spec.EMBEDDING),
        waveform=get(spec.WAVEFORM),
        wav2vec2_features=get(spec.WAV2VEC2_FEATURES),
        driving_frames=get(spec.DRIVING_FRAMES),
        driving_fps=float(inputs[spec.DRIVING_FPS].reshape(-1)[0]) if spec.DRIVING_FPS in inputs else None,
        motion_frames=get(spec.MOTION_FRAMES),
    )


def chunk_outputs(chunk: FrameChunk, info: dict) -> dict[str, np.ndarray]:
    return {
        spec.FRAMES: chunk.frames,
        spec.START_FRAME: np.array([chunk.start_frame], np.int64),
        spec.TOTAL_FRAMES: np.array([chunk.total_frames], np.int64),
        spec.FPS: np.array([chunk.fps], np.float32),
        spec.CHUNK_INFO: np.array([json.dumps(info).encode()], dtype=np.object_),
    }


def _segment_of(chunks: Iterator[FrameChunk], params) -> Iterator[FrameChunk]:
    """The requested segment cut from a whole-clip stream, for engines that cannot start mid-clip (Animate):
    right, but the frames before the segment are still generated."""
    for chunk in chunks:
        segment = segment_range(params, chunk.total_frames)
        lo, hi = max(segment.start, chunk.start_frame), min(segment.stop, chunk.start_frame + len(chunk.frames))
        if lo < hi:
            yield FrameChunk(lo, chunk.frames[lo - chunk.start_frame: hi - chunk.start_frame], chunk.fps,
                             chunk.total_frames)
        if chunk.start_frame + len(chunk.frames) >= segment.stop:
            return


def _live_segment(streams: LiveStreams, engine: VideoEngine, name: str, job: GenerationJob,
                  served: dict) -> Iterator[FrameChunk]:
    """The request's segment from the stream its `stream_after` attempt left held, else from a new stream over the
    rest of the video, held afterwards under its `stream` token. `served` says which (and the stream's seed)."""
    p = job.params
    key = fingerprint(job, name)
    live = streams.take(p.stream_after, key, p.start_frame) if p.stream_after else None
    if live is None:
        streams.make_room()
        rest = replace(job, params=replace(p, frame_count=0))
        live = LiveStream(key, engine.generate(rest), p.start_frame, p.seed, p.start_frame)
    served.update(stream="continued" if live.started_at < p.start_frame else "started", stream_seed=live.seed,
                  stream_started_at=live.started_at)
    held = False
    try:
        yield from live.until(p.start_frame + p.frame_count if p.frame_count else None)
        held = streams.keep(p.stream, live)
    finally:
        if not held:  # ended, or the request stopped early: nothing will continue it
            live.close()


def generate(registry: EngineRegistry, inputs: dict[str, np.ndarray], parameters: dict) -> Iterator[dict]:
    """Run one request: yields the output arrays of each chunk as soon as the engine produces it."""
    job = job_from_inputs(inputs, parameters)
    name = registry.resolve(job.params.engine, job)
    engine = registry.get(name)
    started = time.perf_counter()
    spec_of = ENGINE_SPECS[name]
    if job.params.whole_clips:
        job = replace(job, params=replace(job.params, frame_count=served_frame_count(name, job.params)))
    served: dict = {}
    if spec_of.continues_streams and job.params.stream:
        chunks = _live_segment(registry.streams, engine, name, job, served)
    else:
        if name != PREVIEW:  # a Wan request takes the memory held streams keep
            registry.streams.make_room()
        chunks = engine.generate(job)
    if not spec_of.renders_segments:
        chunks = _segment_of(chunks, job.params)
    try:
        yield from _chunk_outputs(chunks, engine.name, name, job, served, started)
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        p = job.params
        size = f"{p.width}x{p.height}" if p.width and p.height else "its default size"
        text = "" if registry.settings.wan_text_encoder_cpu else (
            ", set video_generator's wan_text_encoder_cpu (umT5 on the CPU leaves 11 GiB to the DiT)")
        message = (f"video_generator ran out of GPU memory generating {size} with {name} "
                   f"({'. '.join(str(exc).split('. ')[:3])}.): ask for a smaller width and height{text}, or serve it "
                   "on a GPU with more memory")
        log.warning("%s: %s", message, exc)  # the allocator's whole account (per process, reserved) is the operator's
        traceback.clear_frames(exc.__traceback__)  # the failed request's tensors go with its frames
    else:
        return
    del chunks
    _release_cached_gpu_memory()
    raise TalkingHeadError(message)


def _out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__ == "torch"


def _release_cached_gpu_memory() -> None:
    """Give the blocks PyTorch caches back to the driver after an out-of-memory error, so that the next request
    (or another process on the GPU) starts from free memory."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def _chunk_outputs(chunks: Iterator, engine_name: str, name: str, job: GenerationJob, served: dict,
                   started: float) -> Iterator[dict]:
    spec_of, last = ENGINE_SPECS[name], started
    for index, chunk in enumerate(chunks):
        now = time.perf_counter()
        info = {
            "engine": engine_name,
            "engine_id": name,
            "label": spec_of.label,
            "native_clip_s": spec_of.native_clip_s,
            "chunk_index": index,
            "frames": int(len(chunk.frames)),
            "render_ms": round((now - last) * 1000.0, 1),
            "elapsed_ms": round((now - started) * 1000.0, 1),
            "seed": job.params.seed,
            **served,
        }
        sampling = getattr(chunk, "sampling", None)
        if sampling:  # what the clip costs: sampler, steps, guidance, DiT forwards per clip
            info["sampling"] = dict(sampling)
        timing = getattr(chunk, "timing", None)
        if timing:  # the Wan engines' seconds per part (the first chunk: the request's start by phase, start_*_s)
            info["timing_s"] = {key: round(float(value), 4) for key, value in timing.items()}
        last = now
        yield chunk_outputs(chunk, info)
