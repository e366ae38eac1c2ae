"""What every video engine takes and yields: a generation job and a stream of frame chunks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

AUTO = "auto"
PREVIEW = "preview"
S2V = "s2v-14B"
LIVEAVATAR = "liveavatar-14B"  # Wan2.2-S2V-14B + LiveAvatar's DMD LoRA, block-causal, 4 steps
ANIMATE = "animate-14B"
ENGINES = (PREVIEW, S2V, LIVEAVATAR, ANIMATE)


@dataclass(frozen=True)
class GenerationParams:
    """Per-request knobs (Triton request parameters feed these). None means the engine's own default."""

    engine: str = AUTO  # auto | preview | s2v-14B | liveavatar-14B | animate-14B
    seed: int = 0
    steps: int | None = None  # denoising steps (Wan S2V official: 40; distilled: 4-8)
    guidance: float | None = None  # classifier-free guidance scale (Wan S2V official: 4.5)
    width: int = 0  # 0: the engine's default for the photo
    height: int = 0
    fps: float = 25.0
    max_duration_s: float = 60.0
    chunk_frames: int = 16  # frames per streamed chunk (Wan engines stream per decoded latent chunk)
    prompt: str = ""
    # A segment of the clip: frames [start_frame, start_frame + frame_count) at `fps` (0: to the end). The
    # orchestrator re-generates a segment that failed QA this way, continuing from `motion_frames`.
    start_frame: int = 0
    frame_count: int = 0


@dataclass(frozen=True)
class GenerationJob:
    photo: np.ndarray  # [H, W, 3] uint8 RGB, upright
    params: GenerationParams = field(default_factory=GenerationParams)
    face_box: np.ndarray | None = None  # [4] x1, y1, x2, y2
    landmarks: np.ndarray | None = None  # [68, 2] dlib / 300-W order
    embedding: np.ndarray | None = None  # identity embedding of the photo, for re-anchoring
    waveform: np.ndarray | None = None  # [S] float32, 16 kHz mono (speech-driven engines)
    wav2vec2_features: np.ndarray | None = None  # [L, T, D] at 50 Hz (Wan S2V)
    driving_frames: np.ndarray | None = None  # [N, h, w, 3] uint8 (Animate)
    driving_fps: float | None = None
    motion_frames: np.ndarray | None = None  # [n, H, W, 3] uint8: the accepted frames just before start_frame


@dataclass(frozen=True)
class FrameChunk:
    start_frame: int
    frames: np.ndarray  # [n, H, W, 3] uint8 RGB
    fps: float
    total_frames: int  # best estimate of the clip's length; the last chunk makes it exact

    @property
    def start_time_s(self) -> float:
        return self.start_frame / self.fps


class VideoEngine(Protocol):
    name: str

    def generate(self, job: GenerationJob) -> Iterator[FrameChunk]:
        """Yield chunks in order as they are ready; stop early if the consumer stops iterating."""


def unknown_engine(name: str) -> str:
    shown = name if len(name) <= 80 else name[:80] + "..."
    return f"unknown engine {shown!r}; choose one of {', '.join((AUTO, *ENGINES))}"


def params_from_request(values: dict) -> GenerationParams:
    """Per-request parameters (Triton request `parameters`) -> GenerationParams; bad ones are the user's error."""
    from ..errors import ConfigError, InputError
    from ..settings import from_mapping

    try:
        params = from_mapping(GenerationParams, values)
    except ConfigError as exc:
        raise InputError(f"bad generation parameter: {exc}", "bad_parameter") from None
    if not 1.0 <= params.fps <= 60.0:
        raise InputError(f"fps must be between 1 and 60, got {params.fps:g}", "bad_parameter")
    if params.width < 0 or params.height < 0 or (params.width == 0) != (params.height == 0):
        raise InputError("give both width and height (pixels), or neither", "bad_parameter")
    if params.steps is not None and not 1 <= params.steps <= 100:
        raise InputError(f"steps must be between 1 and 100, got {params.steps}", "bad_parameter")
    if params.max_duration_s <= 0 or params.chunk_frames < 1:
        raise InputError("max_duration_s must be positive and chunk_frames at least 1", "bad_parameter")
    if params.start_frame < 0 or params.frame_count < 0:
        raise InputError("start_frame and frame_count must not be negative", "bad_parameter")
    if params.engine not in (AUTO, *ENGINES):
        raise InputError(unknown_engine(params.engine), "bad_parameter")
    _check_bounds(params, values)
    return params


# Upper bounds on what one request may ask for, so that no parameter value can exhaust the server (found by the
# property tests in tests/reliability): a chunk of frames crosses process boundaries in one piece.
MAX_SEED = 2**31 - 1  # every engine's generator takes it, re-roll offsets included (pipeline.REROLL_SEED_STRIDE)
MIN_SIDE, MAX_SIDE = 64, 2048  # generation size in pixels (Wan works at 480p-720p; output_width resizes after QA)
MAX_CHUNK_FRAMES = 256
MAX_CHUNK_BYTES = 1 << 30  # frames per chunk x width x height x 3
MAX_DURATION_S = 3600.0
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000
_INTEGERS = ("seed", "steps", "width", "height", "chunk_frames", "start_frame", "frame_count")


def _check_bounds(params: GenerationParams, values: dict) -> None:
    import math

    from ..errors import InputError

    def bad(message: str) -> InputError:
        return InputError(message, "bad_parameter")

    for key in _INTEGERS:
        raw = values.get(key)
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise bad(f"{key} must be a whole number, got {raw!r}")
    if not 0 <= params.seed <= MAX_SEED:
        raise bad(f"seed must be between 0 and {MAX_SEED}, got {params.seed}")
    for name in ("width", "height"):
        side = getattr(params, name)
        if side and not MIN_SIDE <= side <= MAX_SIDE:
            raise bad(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels (or unset), got {side}")
    if params.chunk_frames > MAX_CHUNK_FRAMES:
        raise bad(f"chunk_frames must be at most {MAX_CHUNK_FRAMES}, got {params.chunk_frames}")
    if params.chunk_frames * params.width * params.height * 3 > MAX_CHUNK_BYTES:
        raise bad(f"{params.chunk_frames} frames of {params.width}x{params.height} per chunk exceed "
                  f"{MAX_CHUNK_BYTES >> 20} MB: lower chunk_frames or the size")
    if not params.max_duration_s <= MAX_DURATION_S:  # `not <=` also refuses NaN
        raise bad(f"max_duration_s must be at most {MAX_DURATION_S:g}, got {params.max_duration_s!r}")
    if params.guidance is not None and not 0.0 <= params.guidance <= MAX_GUIDANCE:
        raise bad(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {params.guidance!r}")
    if len(params.prompt) > MAX_PROMPT_CHARS:
        raise bad(f"the prompt has {len(params.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    most = int(MAX_DURATION_S * 60)
    if params.start_frame > most or params.frame_count > most:
        raise bad(f"start_frame and frame_count must be at most {most}")
    if not math.isfinite(params.fps):
        raise bad(f"fps must be a number between 1 and 60, got {params.fps!r}")


def segment_range(params: GenerationParams, total: int) -> range:
    """The frames of the clip (`total` long) this request asks for; empty asks are the user's error."""
    from ..errors import InputError

    stop = total if params.frame_count == 0 else min(total, params.start_frame + params.frame_count)
    if params.start_frame >= total:
        raise InputError(f"start_frame {params.start_frame} is past the clip's end ({total} frames at "
                         f"{params.fps:g} fps)", "bad_parameter")
    return range(params.start_frame, stop)
