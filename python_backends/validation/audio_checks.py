"""Policy checks on the speech upload, from the measurements audio_features puts in its report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from .limits import ValidationLimits

REPORT_KEYS = ("duration_s", "clipped_fraction", "active_fraction", "loudness_lufs_in")


def check_audio_upload(data: bytes, limits: ValidationLimits) -> None:
    """Cheap checks on the encoded bytes before any decoding (codes audio_empty, audio_too_large)."""
    if not data:
        raise InputError("the speech file is empty (0 bytes): upload a WAV, MP3, M4A or OGG recording",
                         "audio_empty")
    if len(data) > limits.max_audio_bytes:
        raise InputError(
            f"the speech file is {len(data) / 1e6:.1f} MB; the limit is "
            f"{limits.max_audio_bytes / 1e6:.1f} MB: upload a shorter or compressed recording "
            "(e.g. MP3 or M4A)",
            "audio_too_large",
        )


def _number(report: Mapping[str, Any], key: str) -> float:
    if key not in report:
        # A programming error between audio_features and this check, not the user's fault.
        raise KeyError(f"audio report has no {key!r}; it has {sorted(report)}")
    value = report[key]
    if value is None:
        return -math.inf  # JSON has no -inf: audio_features sends null loudness for digital silence
    return float(value)


def check_audio(report: Mapping[str, Any], limits: ValidationLimits) -> None:
    """Raise InputError for speech that is too short, too long, silent or clipped.

    Codes: audio_too_short, audio_too_long, audio_silent, audio_clipped. Each message names the measured
    value, the limit and what to do.
    """
    duration = _number(report, "duration_s")
    clipped = _number(report, "clipped_fraction")
    active = _number(report, "active_fraction")
    loudness = _number(report, "loudness_lufs_in")

    if not duration >= limits.min_audio_s:  # `not >=` also catches NaN
        raise InputError(
            f"the speech is {max(duration, 0.0):.1f} s long (minimum {limits.min_audio_s:g} s): "
            f"record at least {limits.min_audio_s:g} s of speech",
            "audio_too_short",
        )
    if duration > limits.max_audio_s:
        raise InputError(
            f"the speech is {duration:.1f} s long (maximum {limits.max_audio_s:g} s): trim it or split it "
            "into shorter clips",
            "audio_too_long",
        )
    if not loudness >= limits.min_loudness_lufs:
        measured = "digital silence" if loudness == -math.inf else f"{loudness:.1f} LUFS"
        raise InputError(
            f"the audio is silent ({measured}; at least {limits.min_loudness_lufs:g} LUFS is needed): check "
            "that the microphone works and record the speech again",
            "audio_silent",
        )
    if not active >= limits.min_active_fraction:
        raise InputError(
            f"only {max(active, 0.0):.0%} of the audio contains sound "
            f"(minimum {limits.min_active_fraction:.0%}): upload a recording of someone speaking, "
            "without long silences",
            "audio_silent",
        )
    if clipped > limits.max_clipped_fraction:
        raise InputError(
            f"{clipped:.1%} of the audio samples are clipped (limit {limits.max_clipped_fraction:.1%}): "
            "record again with the microphone level lower or further from the mouth",
            "audio_clipped",
        )
