"""What each video engine is and can do, in one table: `ENGINES[key]` is its `EngineSpec`.

An engine declares its key (the request's `engine`), the weights folders it loads (settings of the video_generator
model), its typed options built from those settings, its loader, whether it renders a requested segment itself
(`start_frame`, `frame_count`, continuing from `motion_frames`), its native clip length (the orchestrator sizes
segments in whole clips, `segment_frames`) and the label disclosed with every chunk it makes. The service
(service.py) and the orchestrator (pipeline.py) read this table; nothing else names an engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contract import ANIMATE, LIVEAVATAR, PREVIEW, S2V, GenerationParams
from ..weights import official_path

if TYPE_CHECKING:
    from .job import VideoEngine
    from .service import VideoGeneratorSettings

MODEL = "video_generator"
PREVIEW_LABEL = "preview engine: landmark-driven warping of the photo, not a generative model"


@dataclass(frozen=True)
class EngineSpec:
    key: str
    drives: str  # "speech" or "driving video": what makes it move
    # <weights root>/video_generator/ entries it loads (None: it needs no weights), from the model's settings.
    folders: Callable[[VideoGeneratorSettings], tuple[str, ...]] | None
    # Its typed options from the model's settings (the `wan_*` switches included) and the weights root.
    options: Callable[[VideoGeneratorSettings, Path | None], Any] | None
    # (paths of `folders`, device, options) -> the loaded engine.
    loader: Callable[[tuple[Path, ...], str, Any], VideoEngine] | None
    renders_segments: bool  # renders [start_frame, +frame_count) itself, continuing from motion_frames
    native_clip_s: float | None  # new video one clip of it makes (None: any length)
    label: str  # disclosed with every chunk (chunk_info["label"]) and in the MP4
    # The photo is scaled to cover the frame and cropped (S2V's fit_photo, the preview's crop to the aspect); False:
    # letterboxed inside it (Animate's padding_resize). QA tracking derives the face size to expect from it.
    photo_covers_frame: bool = True
    # One request's stream can go on into the next segment's request (live_streams.py): an engine that streams a
    # whole video block-causally, whose segment start costs a new stream.
    continues_streams: bool = False

    def paths(self, settings: VideoGeneratorSettings, root: Path | None) -> tuple[Path, ...] | None:
        """The files it loads, or None when any is missing."""
        if self.folders is None:
            return ()
        found = tuple(official_path(MODEL, entry, root) for entry in self.folders(settings))
        return None if any(path is None for path in found) else found  # type: ignore[return-value]

    def needs(self, settings: VideoGeneratorSettings) -> str:
        entries = " and ".join(f"{entry}" for entry in (self.folders(settings) if self.folders else ()))
        return f"engine {self.key} needs {entries} under <weights root>/{MODEL}/; without it use engine=preview"

    def load(self, paths: tuple[Path, ...], device: str, settings: VideoGeneratorSettings,
             root: Path | None) -> VideoEngine:
        assert self.loader is not None and self.options is not None
        return self.loader(paths, device, self.options(settings, root))


def _fp8(settings: VideoGeneratorSettings) -> str | None:
    return None if settings.wan_fp8 == "none" else settings.wan_fp8


def _vae_and_text_encoder(settings: VideoGeneratorSettings) -> dict[str, Any]:
    """The VAE's switches, and umT5's place: what shares the GPU with the DiT."""
    return {"vae_memory_format": settings.wan_vae_memory_format, "vae_compile": settings.wan_vae_compile,
            "vae_cudnn_benchmark": settings.wan_vae_cudnn_benchmark,
            "text_encoder_cpu": settings.wan_text_encoder_cpu}


def _stages(settings: VideoGeneratorSettings) -> dict[str, bool]:
    return {"overlap": settings.wan_overlap, "dit_priority": settings.wan_dit_priority}


def _s2v_options(settings: VideoGeneratorSettings, root: Path | None = None):
    from .wan.s2v.engine import WanS2VOptions

    return WanS2VOptions(
        sampler=settings.wan_sampler, default_steps=settings.wan_steps or None, lora=settings.wan_lora or None,
        fp8=_fp8(settings), attention_backend=settings.wan_attention, compile=settings.wan_compile,
        vae_dtype=settings.wan_vae_dtype, balance_clips=settings.wan_balance_clips, **_stages(settings),
        **_vae_and_text_encoder(settings))


def _liveavatar_options(settings: VideoGeneratorSettings, root: Path | None = None):
    from .wan.s2v.liveavatar_engine import LiveAvatarOptions

    return LiveAvatarOptions(fp8=_fp8(settings), attention_backend=settings.wan_attention,
                             compile=settings.wan_compile, vae_dtype=settings.wan_vae_dtype,
                             history_frames=settings.liveavatar_history_frames,
                             ref_distance=settings.liveavatar_ref_distance or None,
                             kv_cache_fp8=settings.liveavatar_kv_cache_fp8, **_stages(settings),
                             **_vae_and_text_encoder(settings))


def animate_lora(settings: VideoGeneratorSettings, root: Path | None) -> Path | None:
    return official_path(MODEL, settings.animate_lora, root) if settings.animate_lora else None


def _animate_options(settings: VideoGeneratorSettings, root: Path | None):
    """The `wan_*` switches reach Animate too (sampler, steps, FP8, compile, VAE dtype, overlap); its DiT attends with
    sdpa only. LightX2V's LoRA, when present, sets its own step count."""
    from .wan.animate.engine import WanAnimateOptions

    lora = animate_lora(settings, root)
    return WanAnimateOptions(
        sampler=settings.wan_sampler, fp8=_fp8(settings), compile=settings.wan_compile,
        vae_dtype=settings.wan_vae_dtype, lora=None if lora is None else str(lora), **_stages(settings),
        **_vae_and_text_encoder(settings),
        default_steps=settings.animate_lora_steps if lora is not None else settings.wan_steps or None)


def _load_s2v(paths: tuple[Path, ...], device: str, options: Any) -> VideoEngine:
    from .wan.s2v.engine import WanS2VEngine

    return WanS2VEngine.from_folder(paths[0], device=device, options=options)


def _load_liveavatar(paths: tuple[Path, ...], device: str, options: Any) -> VideoEngine:
    from .wan.s2v.liveavatar_engine import WanLiveAvatarEngine

    return WanLiveAvatarEngine.from_folders(paths[0], paths[1].parent, device=device, options=options)


def _load_animate(paths: tuple[Path, ...], device: str, options: Any) -> VideoEngine:
    from .wan.animate.engine import WanAnimateEngine

    return WanAnimateEngine.from_folder(paths[0], device=device, options=options)


def _liveavatar_folders(settings: VideoGeneratorSettings) -> tuple[str, ...]:
    from .wan.s2v.liveavatar_engine import LORA_FILE

    return settings.s2v_folder, f"{settings.liveavatar_folder}/{LORA_FILE}"


# Native clips: S2V 80 frames at 16 fps (infer_frames), LiveAvatar 48 at 16 fps, Animate 77 frames overlapping by
# 1 at the driving video's rate (30 fps officially: 76 new frames).
ENGINES: dict[str, EngineSpec] = {spec.key: spec for spec in (
    EngineSpec(PREVIEW, "speech", None, None, None, True, None, PREVIEW_LABEL),
    EngineSpec(S2V, "speech", lambda s: (s.s2v_folder,), _s2v_options, _load_s2v, True, 80 / 16,
               f"Wan2.2 {S2V} (generative model)"),
    EngineSpec(LIVEAVATAR, "speech", _liveavatar_folders, _liveavatar_options, _load_liveavatar, True, 48 / 16,
               f"Wan2.2 {LIVEAVATAR} (generative model)", continues_streams=True),
    EngineSpec(ANIMATE, "driving video", lambda s: (s.animate_folder,), _animate_options, _load_animate, True,
               76 / 30, f"Wan2.2 {ANIMATE} (generative model)", photo_covers_frame=False),
)}
SPEECH_ENGINES = (LIVEAVATAR, S2V)  # what `auto` picks for speech, first present first


def _clip_s(engine: str | None, continued: bool) -> float | None:
    """The native clip a segment of `engine` costs whole; None where any length costs only its own frames (no native
    clip, the engine unknown, or a segment that continues the engine's stream)."""
    spec = ENGINES.get(engine or "")
    if spec is None or not spec.native_clip_s or (continued and spec.continues_streams):
        return None
    return spec.native_clip_s


def any_length(engine: str | None, continued: bool = False) -> bool:
    """Whether a segment of `engine` (known) may be cut to any length at no cost beyond its own frames."""
    return engine in ENGINES and _clip_s(engine, continued) is None


def segment_frames(engine: str | None, segment_s: float, fps: float, continued: bool = False) -> int:
    """Frames per segment: the whole number of the engine's native clips nearest `segment_s` (at least one), or
    `segment_s` itself for an engine without a native clip (or before the engine is known) and for one whose
    segments continue its stream (`continued`: the frames a segment's last block makes past its end are the next
    segment's, so no size wastes work)."""
    clip = _clip_s(engine, continued)
    seconds = segment_s if clip is None else max(1, round(segment_s / clip)) * clip
    return max(1, int(round(seconds * fps)))


def served_frame_count(engine: str, params: GenerationParams) -> int:
    """The frames a request gets: its frame_count, or with `whole_clips` (the orchestrator sized it before it knew
    the engine) what the orchestrator would ask of this engine now, so it never costs a clip cut short."""
    if not (params.whole_clips and params.frame_count):
        return params.frame_count
    return segment_frames(engine, params.frame_count / params.fps, params.fps, continued=bool(params.stream))
