"""Argument types the perf scripts share: sizes written WIDTHxHEIGHT, alone or comma-separated."""

from __future__ import annotations

import argparse


def frame_size(text: str) -> tuple[int, int]:
    """'832x480' -> (832, 480); argparse reports anything else with the form to use."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give WIDTHxHEIGHT, e.g. 832x480") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return width, height


def frame_sizes(text: str) -> list[tuple[int, int]]:
    """'832x480,704x384' -> [(832, 480), (704, 384)]."""
    return [frame_size(part) for part in text.split(",")]
