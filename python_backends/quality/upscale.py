"""Resizing accepted frames to the requested output resolution.

QA judges the generated resolution (cheaper, and what the generator actually drew); the resize comes last. This
build has no learned super-resolution model (e.g. Real-ESRGAN): frames are resized with Lanczos, and the report
says so, so an upscaled video is never presented as having gained detail.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..contract import NO_SUPER_RESOLUTION, OUTPUT_PARAMETERS, parse_job_params


def parse_output_size(parameters: dict) -> tuple[dict, tuple[int, int] | None]:
    """Pop output_width / output_height from the request parameters: (the rest, (width, height) or None)."""
    rest = dict(parameters)
    size = {name: rest.pop(name) for name in OUTPUT_PARAMETERS if name in rest}
    return rest, parse_job_params(size).output_size if size else None


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
            size[0] * size[1] > generated[0] * generated[1] else "area", "where": "talking_head (cv2, after QA)",
            "super_resolution": NO_SUPER_RESOLUTION}
