"""The request contract shared by client, gateway and server: what a job may ask for, and what one segment of it
asks the video generator for. No numpy, no torch: the CLI and the gateway image import it as it is.

- `JobParams`: the public parameters of a job (talking_head's request parameters, the CLI's generation flags, the
  gateway's allow-list and its OpenAPI help all come from its fields and their metadata).
- `GenerationParams`: what one video_generator request takes: the generation fields of a job plus the segment
  (`start_frame`, `frame_count`) the orchestrator chose, with the seed it derived (`derive_seed`).
- `spec` (model and tensor names) and the errors are re-exported, so a caller needs this module alone.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from . import spec
from .errors import ConfigError, InputError, TalkingHeadError, WeightsUnavailable
from .settings import from_mapping, shown

__all__ = [
    "spec", "ConfigError", "InputError", "TalkingHeadError", "WeightsUnavailable", "JobParams", "GenerationParams",
    "SegmentRequest", "derive_seed", "parse_job_params", "parse_generation_params", "PUBLIC_PARAMETERS",
    "GENERATION_PARAMETERS", "OUTPUT_PARAMETERS", "INTEGER_PARAMETERS", "NO_SUPER_RESOLUTION", "cli_flag",
]

# Engine keys a request may name (python_backends/generation/engines.py says what each one is).
AUTO = "auto"
PREVIEW = "preview"
S2V = "s2v-14B"
LIVEAVATAR = "liveavatar-14B"  # Wan2.2-S2V-14B + LiveAvatar's DMD LoRA, block-causal, 4 steps
ANIMATE = "animate-14B"
ENGINES = (PREVIEW, S2V, LIVEAVATAR, ANIMATE)

# Upper bounds on what one request may ask for, so that no parameter value can exhaust the server (found by the
# property tests in tests/reliability): a chunk of frames crosses process boundaries in one piece.
SEED_MODULUS = 2**31
MAX_SEED = SEED_MODULUS - 1  # every engine's generator takes it; derived seeds stay below it (derive_seed)
MIN_SIDE, MAX_SIDE = 64, 2048  # generation size in pixels (Wan works at 480p-720p; output_width resizes after QA)
MIN_OUTPUT_SIDE, MAX_OUTPUT_SIDE = 16, 3840  # output size (4K UHD), even: H.264 4:2:0 needs it
MAX_CHUNK_FRAMES = 256
MAX_CHUNK_BYTES = 1 << 30  # frames per chunk x width x height x 3
MAX_DURATION_S = 3600.0
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000
REROLL_SEED_STRIDE = 7_919  # a re-roll's seed: far from the engines' own seed + clip of the same segment
SEGMENT_SEED_STRIDE = 104_729  # a segment's seed: its attempts never meet the next segment's
MAX_STREAM_TOKEN = 96
STREAM_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:._-")


def _param(default: Any, help: str, flag: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass(frozen=True)
class _GenerationFields:
    """The knobs of generation proper; None means the engine's own default."""

    engine: str = _param(AUTO, "the video engine (auto: the best one whose weights are present)",
                         choices=(AUTO, *ENGINES))
    seed: int = _param(0, "random seed (re-rolls derive theirs from it)")
    steps: int | None = _param(None, "denoising steps (Wan S2V official: 40; distilled: 4-8)")
    guidance: float | None = _param(None, "classifier-free guidance scale (Wan S2V official: 4.5)")
    width: int = _param(0, "generation width in pixels (0: the engine's default for the photo)")
    height: int = _param(0, "generation height in pixels")
    fps: float = _param(25.0, "frames per second")
    max_duration_s: float = _param(60.0, "longest video in seconds", flag="--max-duration")
    chunk_frames: int = _param(16, "frames per streamed chunk")
    prompt: str = _param("", "text prompt (Wan engines)")


# What every resize note says (talking_head's and the client encoder's): resizing adds no detail.
NO_SUPER_RESOLUTION = "unavailable: no learned upscaler in this build (frames gain no detail)"


@dataclass(frozen=True)
class JobParams(_GenerationFields):
    """A job's public parameters (talking_head's request parameters)."""

    output_width: int = _param(0, "resize the accepted video to this size after QA (Lanczos; no learned upscaler)")
    output_height: int = _param(0, "output height in pixels (with --output-width)")

    @property
    def output_size(self) -> tuple[int, int] | None:
        return (self.output_width, self.output_height) if self.output_width else None

    def generation(self) -> dict[str, Any]:
        """The generation fields, as video_generator request parameters (unset ones left out: Triton request
        parameters cannot be None)."""
        return {name: getattr(self, name) for name in GENERATION_PARAMETERS if getattr(self, name) is not None}


@dataclass(frozen=True)
class GenerationParams(_GenerationFields):
    """One video_generator request: frames [start_frame, start_frame + frame_count) at `fps` (0: to the end). The
    orchestrator re-generates a segment that failed QA this way, continuing from `motion_frames`."""

    start_frame: int = 0
    frame_count: int = 0
    # Live streams (generation/live_streams.py): this attempt's token, under which the engine may hold its stream
    # after the last frame, and the token of the attempt whose frames this request continues ("": none).
    stream: str = ""
    stream_after: str = ""
    # The orchestrator sized this segment before it knew the engine (under `auto`): an engine whose segments cost
    # whole native clips serves the nearest whole number of them (engines.segment_frames), not a clip cut short.
    whole_clips: bool = False


@dataclass(frozen=True)
class SegmentRequest:
    """What the orchestrator adds to a job's generation fields for one attempt at one segment."""

    start_frame: int
    frame_count: int
    seed: int
    stream: str = ""  # this attempt's token (GenerationParams.stream)
    stream_after: str = ""  # the token of the accepted attempt before it
    whole_clips: bool = False  # GenerationParams.whole_clips

    def parameters(self, params: JobParams) -> dict[str, Any]:
        tokens = {"stream": self.stream, "stream_after": self.stream_after} if self.stream else {}
        clips = {"whole_clips": True} if self.whole_clips else {}
        return {**params.generation(), "seed": self.seed, "start_frame": self.start_frame,
                "frame_count": self.frame_count, **tokens, **clips}


def derive_seed(base: int, segment: int, attempt: int) -> int:
    """The seed of `attempt` at `segment` of a job seeded `base`: the base itself for the first attempt at the first
    segment, always within [0, MAX_SEED] (a job seeded near 2^31 - 1 re-rolls like any other)."""
    return (base + segment * SEGMENT_SEED_STRIDE + attempt * REROLL_SEED_STRIDE) % SEED_MODULUS


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


PUBLIC_PARAMETERS = _names(JobParams)
GENERATION_PARAMETERS = _names(_GenerationFields)
OUTPUT_PARAMETERS = tuple(name for name in PUBLIC_PARAMETERS if name not in GENERATION_PARAMETERS)
SEGMENT_PARAMETERS = tuple(name for name in _names(GenerationParams) if name not in GENERATION_PARAMETERS)


def _is_integer(annotation: Any) -> bool:
    return annotation is int or int in typing.get_args(annotation)


INTEGER_PARAMETERS = tuple(name for name, kind in {**typing.get_type_hints(JobParams),
                                                    **typing.get_type_hints(GenerationParams)}.items()
                           if _is_integer(kind))


def cli_flag(name: str) -> str:
    return dataclasses.fields(JobParams)[PUBLIC_PARAMETERS.index(name)].metadata["flag"] or \
        "--" + name.replace("_", "-")


def _bad(message: str) -> InputError:
    return InputError(message, "bad_parameter")


def unknown_engine(name: str) -> str:
    return f"unknown engine {shown(name)}; choose one of {', '.join((AUTO, *ENGINES))}"


def _parse(cls: type, values: dict[str, Any]) -> Any:
    try:
        params = from_mapping(cls, values)
    except ConfigError as exc:
        raise _bad(f"bad generation parameter: {exc}") from None
    for key in INTEGER_PARAMETERS:
        raw = values.get(key)
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise _bad(f"{key} must be a whole number, got {raw!r}")
    _check_generation(params)
    return params


def parse_job_params(values: dict[str, Any]) -> JobParams:
    """A job's request parameters -> JobParams; anything else (start_frame included) is the user's error."""
    unknown = sorted(set(values) - set(PUBLIC_PARAMETERS))
    if unknown:
        raise _bad(f"unknown parameter {shown(unknown[0])}; allowed: {', '.join(PUBLIC_PARAMETERS)}")
    params = _parse(JobParams, values)
    size = (params.output_width, params.output_height)
    if (size[0] == 0) != (size[1] == 0):
        raise _bad("give both output_width and output_height as whole pixels, or neither")
    if params.output_size and (not all(MIN_OUTPUT_SIDE <= side <= MAX_OUTPUT_SIDE for side in size)
                               or any(side % 2 for side in size)):
        raise _bad(f"output size must be even and within {MIN_OUTPUT_SIDE}..{MAX_OUTPUT_SIDE} px per side, got "
                   f"{size[0]}x{size[1]}")
    return params


def parse_generation_params(values: dict[str, Any]) -> GenerationParams:
    """One video_generator request's parameters -> GenerationParams."""
    params = _parse(GenerationParams, values)
    if params.start_frame < 0 or params.frame_count < 0:
        raise _bad("start_frame and frame_count must not be negative")
    most = int(MAX_DURATION_S * 60)
    if params.start_frame > most or params.frame_count > most:
        raise _bad(f"start_frame and frame_count must be at most {most}")
    for token in (params.stream, params.stream_after):
        if len(token) > MAX_STREAM_TOKEN or not set(token) <= STREAM_TOKEN_CHARS:
            raise _bad(f"stream tokens are at most {MAX_STREAM_TOKEN} letters, digits and ':._-', got {shown(token)}")
    return params


def _check_generation(params: _GenerationFields) -> None:
    if not math.isfinite(params.fps) or not 1.0 <= params.fps <= 60.0:
        raise _bad(f"fps must be between 1 and 60, got {params.fps:g}")
    if params.width < 0 or params.height < 0 or (params.width == 0) != (params.height == 0):
        raise _bad("give both width and height (pixels), or neither")
    if params.steps is not None and not 1 <= params.steps <= 100:
        raise _bad(f"steps must be between 1 and 100, got {params.steps}")
    if params.max_duration_s <= 0 or params.chunk_frames < 1:
        raise _bad("max_duration_s must be positive and chunk_frames at least 1")
    if params.engine not in (AUTO, *ENGINES):
        raise _bad(unknown_engine(params.engine))
    if not 0 <= params.seed <= MAX_SEED:
        raise _bad(f"seed must be between 0 and {MAX_SEED}, got {params.seed}")
    for name in ("width", "height"):
        side = getattr(params, name)
        if side and not MIN_SIDE <= side <= MAX_SIDE:
            raise _bad(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels (or unset), got {side}")
    if params.chunk_frames > MAX_CHUNK_FRAMES:
        raise _bad(f"chunk_frames must be at most {MAX_CHUNK_FRAMES}, got {params.chunk_frames}")
    if params.chunk_frames * params.width * params.height * 3 > MAX_CHUNK_BYTES:
        raise _bad(f"{params.chunk_frames} frames of {params.width}x{params.height} per chunk exceed "
                   f"{MAX_CHUNK_BYTES >> 20} MB: lower chunk_frames or the size")
    if not params.max_duration_s <= MAX_DURATION_S:  # `not <=` also refuses NaN
        raise _bad(f"max_duration_s must be at most {MAX_DURATION_S:g}, got {params.max_duration_s!r}")
    if params.guidance is not None and not 0.0 <= params.guidance <= MAX_GUIDANCE:
        raise _bad(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {params.guidance!r}")
    if len(params.prompt) > MAX_PROMPT_CHARS:
        raise _bad(f"the prompt has {len(params.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
