"""The video_generator model's logic: pick an engine per request, run it, turn chunks into output arrays.

Engines load lazily and stay loaded: the preview engine costs nothing, a Wan 14B engine is loaded the first
time a request needs it (or at start with `preload`). Which engine made a video is in every chunk's info.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import spec
from ..errors import ConfigError, InputError, WeightsUnavailable
from ..frame_interpolation import config as interpolation
from ..weights import OFFICIAL, SHIPPED, UNAVAILABLE, WeightsChoice, official_path, weights_root
from .job import (
    ANIMATE,
    AUTO,
    ENGINES,
    PREVIEW,
    S2V,
    FrameChunk,
    GenerationJob,
    VideoEngine,
    params_from_request,
    segment_range,
    unknown_engine,
)
from .preview import ENGINE_NAME as PREVIEW_NAME
from .preview import PreviewEngine

PREVIEW_LABEL = "preview engine: landmark-driven warping of the photo, not a generative model"


@dataclass(frozen=True)
class VideoGeneratorSettings:
    engine: str = AUTO  # used when a request names none: auto | preview | s2v-14B | animate-14B
    keepalive_s: float = spec.STREAM_KEEPALIVE_S  # keep-alive interval of the stream (triton_io.StreamingModel)
    s2v_folder: str = "Wan2.2-S2V-14B"  # official release folder under <weights root>/video_generator/
    animate_folder: str = "Wan2.2-Animate-14B"
    preload: bool = False  # load the Wan engine at start instead of on first use
    # Wan engine switches (WanS2VOptions): sampler unipc|euler, default steps (0: official 40), a LoRA file in
    # the release folder (e.g. step-distilled), FP8 linear layers (rowwise|tensor|none), the self-attention
    # (sdpa or an 8-bit Triton kernel, wan/attention.py ATTENTION_BACKENDS), torch.compile.
    wan_sampler: str = "unipc"
    wan_steps: int = 0
    wan_lora: str = ""
    wan_fp8: str = "none"
    wan_attention: str = "sdpa"
    wan_compile: bool = False
    wan_vae_dtype: str = "float32"
    # 16 fps -> params.fps for the Wan engines: keys interpolation (auto | none | flow | rife), rife_file, rife_scale
    frame_interpolation: interpolation.InterpolationSettings = field(
        default_factory=interpolation.InterpolationSettings)

    def __post_init__(self) -> None:
        if self.engine not in (AUTO, *ENGINES):
            raise ConfigError(f"engine must be one of {(AUTO, *ENGINES)}, got {self.engine!r}")


def choose_weights(settings: VideoGeneratorSettings, root: Path | None = None) -> WeightsChoice:
    """The engine `auto` would use for speech."""
    folder = official_path("video_generator", settings.s2v_folder, root)
    if folder is not None and settings.engine in (AUTO, S2V):
        return WeightsChoice("video_generator", S2V, OFFICIAL, folder, "Apache-2.0 (Wan2.2)")
    if settings.engine in (AUTO, PREVIEW):
        return WeightsChoice(
            "video_generator", PREVIEW_NAME, SHIPPED, None, "Apache-2.0 (ours; no weights)",
            note=f"{PREVIEW_LABEL}; put the official {settings.s2v_folder}/ release folder under "
            "<weights root>/video_generator/ for Wan2.2-S2V-14B",
        )
    return WeightsChoice("video_generator", settings.engine, UNAVAILABLE, None, "-",
                         note=f"no {settings.engine} weights under <weights root>/video_generator/")


def choose_interpolation_weights(settings: VideoGeneratorSettings, root: Path | None = None) -> WeightsChoice:
    return interpolation.choose_weights(settings.frame_interpolation, root)


class EngineRegistry:
    def __init__(self, settings: VideoGeneratorSettings, device: str, root: Path | None = None) -> None:
        self.settings, self.device = settings, device
        self.root = root if root is not None else weights_root()
        self._engines: dict[str, VideoEngine] = {PREVIEW: PreviewEngine()}
        self._lock = threading.Lock()
        if settings.preload and self._folder(S2V) is not None:
            self.get(S2V)

    def _folder(self, engine: str) -> Path | None:
        name = self.settings.s2v_folder if engine == S2V else self.settings.animate_folder
        return official_path("video_generator", name, self.root)

    def resolve(self, requested: str, job: GenerationJob) -> str:
        name = self.settings.engine if requested == AUTO else requested
        if name not in (AUTO, *ENGINES):
            raise InputError(unknown_engine(requested), "bad_parameter")
        if name != AUTO:
            return name
        if job.driving_frames is not None and job.waveform is None and self._folder(ANIMATE) is not None:
            return ANIMATE
        if job.waveform is not None and self._folder(S2V) is not None:
            return S2V
        return PREVIEW

    def get(self, name: str) -> VideoEngine:
        with self._lock:
            if name not in self._engines:
                folder = self._folder(name)
                if folder is None:
                    raise WeightsUnavailable(
                        f"engine {name} needs the official release folder under <weights root>/video_generator/ "
                        f"({self.settings.s2v_folder if name == S2V else self.settings.animate_folder}); "
                        "without it use engine=preview"
                    )
                engine = _load_wan(name, folder, self.device, self.settings)
                engine.interpolation = interpolation.resolve(self.settings.frame_interpolation, self.root)
                engine.interpolation.interpolator(self.device)  # a bad RIFE file fails here, not mid-request
                self._engines[name] = engine
            return self._engines[name]


def _load_wan(name: str, folder: Path, device: str, settings: VideoGeneratorSettings) -> VideoEngine:
    if name == S2V:
        from .wan.s2v_engine import WanS2VEngine, WanS2VOptions

        options = WanS2VOptions(
            sampler=settings.wan_sampler, default_steps=settings.wan_steps or None, lora=settings.wan_lora or None,
            fp8=None if settings.wan_fp8 == "none" else settings.wan_fp8, attention_backend=settings.wan_attention,
            compile=settings.wan_compile, vae_dtype=settings.wan_vae_dtype,
        )
        return WanS2VEngine.from_folder(folder, device=device, options=options)
    from .wan.animate_engine import WanAnimateEngine

    return WanAnimateEngine.from_folder(folder, device=device)


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


def generate(registry: EngineRegistry, inputs: dict[str, np.ndarray], parameters: dict) -> Iterator[dict]:
    """Run one request: yields the output arrays of each chunk as soon as the engine produces it."""
    job = job_from_inputs(inputs, parameters)
    name = registry.resolve(job.params.engine, job)
    engine = registry.get(name)
    started = last = time.perf_counter()
    chunks = engine.generate(job)
    if not getattr(engine, "renders_segments", False):
        chunks = _segment_of(chunks, job.params)
    for index, chunk in enumerate(chunks):
        now = time.perf_counter()
        info = {
            "engine": engine.name,
            "engine_id": name,
            "label": PREVIEW_LABEL if name == PREVIEW else f"Wan2.2 {name} (generative model)",
            "chunk_index": index,
            "frames": int(len(chunk.frames)),
            "render_ms": round((now - last) * 1000.0, 1),
            "elapsed_ms": round((now - started) * 1000.0, 1),
            "seed": job.params.seed,
        }
        last = now
        yield chunk_outputs(chunk, info)
