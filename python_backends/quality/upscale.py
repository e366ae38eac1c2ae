"""Resizing accepted frames to the requested output resolution.

QA judges the generated resolution (cheaper, and what the generator actually drew); the resize comes last. This
build has no learned super-resolution model (e.g. Real-ESRGAN): frames are resized with Lanczos, and the report
says so, so an upscaled video is never presented as having gained detail.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InputError

MAX_SIDE = 3840  # 4K UHD


def parse_output_size(parameters: dict) -> tuple[dict, tuple[int, int] | None]:
    """Pop output_width / output_height from the request parameters: (the rest, (width, height) or None)."""
    rest = dict(parameters)
    width, height = rest.pop("output_width", None), rest.pop("output_height", None)
    if width is None and height is None:
        return rest, None
    try:
        size = (int(width), int(height))
    except (TypeError, ValueError):
        raise InputError("give both output_width and output_height as whole pixels", "bad_parameter") from None
    if not all(16 <= side <= MAX_SIDE for side in size) or any(side % 2 for side in size):
        raise InputError(f"output size must be even and within 16..{MAX_SIDE} px per side, got {size[0]}x{size[1]}",
                         "bad_parameter")
    return rest, size


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    if frames.shape[1:3] == (height, width):
        return frames
    grow = width * height > frames.shape[1] * frames.shape[2]
    interpolation = cv2.INTER_LANCZOS4 if grow else cv2.INTER_AREA
    return np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in frames])


def resize_note(generated: tuple[int, int], size: tuple[int, int] | None) -> dict:
    if size is None or size == generated:
        return {"status": "not_requested"}
    return {"status": "resized", "from": list(generated), "to": list(size), "method": "lanczos" if
            size[0] * size[1] > generated[0] * generated[1] else "area",
            "super_resolution": "unavailable: no learned upscaler in this build (frames gain no detail)"}
