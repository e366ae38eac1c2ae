"""What every video engine takes and yields: a generation job and a stream of frame chunks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# The request contract lives in python_backends/contract.py (numpy-free, shared with the client and gateway).
from ..contract import (  # noqa: E402,F401 - re-exported for the engines
    ANIMATE,
    AUTO,
    ENGINES,
    LIVEAVATAR,
    MAX_CHUNK_BYTES,
    MAX_DURATION_S,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    PREVIEW,
    S2V,
    GenerationParams,
    unknown_engine,
)
from ..contract import parse_generation_params as params_from_request  # noqa: E402,F401


@dataclass(frozen=True)
class GenerationJob:
    photo: np.ndarray  # [H, W, 3] uint8 RGB, upright
    params: GenerationParams = field(default_factory=GenerationParams)
    face_box: np.ndarray | None = None  # [4] x1, y1, x2, y2
    landmarks: np.ndarray | None = None  # [68, 2] dlib / 300-W order
    embedding: np.ndarray | None = None  # identity embedding of the photo (the pipeline's identity gate judges)
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

    def prepare(self) -> None:
        """Work done once at load so that no request waits for it."""

    def generate(self, job: GenerationJob) -> Iterator[FrameChunk]:
        """Yield chunks in order as they are ready; stop early if the consumer stops iterating."""


def segment_range(params: GenerationParams, total: int) -> range:
    """The frames of the clip (`total` long) this request asks for; empty asks are the user's error."""
    from ..errors import InputError

    stop = total if params.frame_count == 0 else min(total, params.start_frame + params.frame_count)
    if params.start_frame >= total:
        raise InputError(f"start_frame {params.start_frame} is past the clip's end ({total} frames at "
                         f"{params.fps:g} fps)", "bad_parameter")
    return range(params.start_frame, stop)
