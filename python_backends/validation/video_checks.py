"""Probe and read an uploaded driving video with the ffmpeg binary that imageio-ffmpeg ships.

ffmpeg runs as a child process with an argument list (no shell), on a private temporary file, under a
timeout, and may only use the container demuxers listed below and the `file` protocol: a playlist or
concat script posing as a video cannot make it read other files or the network.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .limits import ValidationLimits

log = logging.getLogger(__name__)

# Demuxers for MP4/MOV/M4V/3GP, MKV/WebM and AVI (names as `ffmpeg -demuxers` lists them).
ALLOWED_DEMUXERS = "mov,matroska,avi"
_HINT = "upload an MP4, MOV or WebM video"

_DIMENSIONS = re.compile(r", (\d{1,6})x(\d{1,6})(?=[\s,\[])")
_FPS = re.compile(r", ([\d.]+)(k?) fps")
_TBR = re.compile(r", ([\d.]+)(k?) tbr")
_CODEC = re.compile(r"Video: ([A-Za-z0-9_]+)")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_PROGRESS_FRAME = re.compile(r"^frame=(\d+)\s*$", re.MULTILINE)
_PROGRESS_TIME = re.compile(r"^out_time=(\d+):(\d\d):(\d\d(?:\.\d+)?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as displayed, i.e. after the container's rotation is applied
    height: int
    fps: float
    frame_count: int
    duration_s: float
    codec: str
    rotation_deg: int = 0


def ffmpeg_exe() -> str:
    import imageio_ffmpeg  # imported here: only the video path needs it

    return imageio_ffmpeg.get_ffmpeg_exe()


def _unreadable(reason: str) -> InputError:
    return InputError(f"the driving video could not be read ({reason}): {_HINT}", "video_unreadable")


def _check_bytes(data: object, limits: ValidationLimits) -> bytes:
    if isinstance(data, np.ndarray) and data.dtype == object and data.size == 1:
        data = data.reshape(-1)[0]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"the driving video must be sent as file bytes, got {type(data).__name__}",
                         "video_unreadable")
    data = bytes(data)
    if not data:
        raise InputError(f"the driving video is empty (0 bytes): {_HINT}", "video_empty")
    if len(data) > limits.max_video_bytes:
        raise InputError(
            f"the driving video file is {len(data) / 1e6:.1f} MB; the limit is "
            f"{limits.max_video_bytes / 1e6:.1f} MB: upload a shorter or more compressed video",
            "video_too_large",
        )
    return data


@contextmanager
def _temp_file(data: bytes) -> Iterator[str]:
    # ffmpeg needs a seekable file for MP4 (the index may sit at the end); mkstemp makes it private (0600).
    handle, path = tempfile.mkstemp(prefix="talkinghead-video-", suffix=".bin")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:
            log.warning("could not remove temporary video file %s", path)


def _input_args(path: str) -> list[str]:
    return [
        ffmpeg_exe(), "-hide_banner", "-nostdin",
        "-format_whitelist", ALLOWED_DEMUXERS, "-protocol_whitelist", "file",
        "-i", path,
    ]


def _run(argv: list[str], limits: ValidationLimits) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, timeout=limits.ffmpeg_timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise InputError(
            f"reading the driving video took longer than {limits.ffmpeg_timeout_s:g} s: upload a shorter "
            "video in a common format (MP4 with H.264)",
            "video_timeout",
        ) from None


def _seconds(hours: str, minutes: str, seconds: str) -> float:
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _rate(match: re.Match | None) -> float:
    if match is None:
        return 0.0
    value = float(match.group(1))
    return value * 1000.0 if match.group(2) == "k" else value


def _last_error_line(stderr: str) -> str:
    if "Invalid data found when processing input" in stderr:
        return "not a video in a supported container"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        lowered = line.lower()
        if "error" in lowered or "invalid" in lowered or "matches no streams" in lowered:
            # ffmpeg prefixes lines with "[in#0 @ 0x...]"; that part means nothing to a user.
            return re.sub(r"^\[[^\]]*\]\s*", "", line)[:200]
    return lines[-1][:200] if lines else "ffmpeg gave no reason"


def _probe_path(path: str, limits: ValidationLimits) -> VideoInfo:
    # Stream copy into the null muxer: it walks every packet (an exact frame count) without decoding.
    argv = _input_args(path) + ["-map", "0:v:0", "-c", "copy", "-f", "null", "-progress", "pipe:1",
                                "-nostats", "-"]
    result = _run(argv, limits)
    stderr = result.stderr.decode("utf-8", "replace")
    progress = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        if "matches no streams" in stderr:
            raise _unreadable("the file has no video stream")
        raise _unreadable(_last_error_line(stderr))

    input_part = re.split(r"^(?:Stream mapping:|Output #0)", stderr, maxsplit=1, flags=re.MULTILINE)[0]
    video_lines = [line for line in input_part.splitlines() if "Video:" in line and "Stream #" in line]
    if not video_lines:
        raise _unreadable("the file has no video stream")
    line = video_lines[0]
    dims = _DIMENSIONS.search(line)
    if dims is None:
        raise _unreadable("its frame size is unknown")
    width, height = int(dims.group(1)), int(dims.group(2))
    codec_match = _CODEC.search(line)
    codec = codec_match.group(1) if codec_match else "unknown"

    rotation_match = _ROTATION.search(input_part)
    rotation = int(round(float(rotation_match.group(1)))) % 360 if rotation_match else 0
    if rotation in (90, 270):
        width, height = height, width  # ffmpeg auto-rotates decoded frames, so report the displayed size

    frames = [int(v) for v in _PROGRESS_FRAME.findall(progress)]
    frame_count = frames[-1] if frames else 0
    duration_match = _DURATION.search(input_part)
    duration = _seconds(*duration_match.groups()) if duration_match else 0.0
    if duration <= 0:
        times = _PROGRESS_TIME.findall(progress)
        duration = _seconds(*times[-1]) if times else 0.0
    fps = _rate(_FPS.search(line)) or _rate(_TBR.search(line))
    if fps <= 0 and duration > 0:
        fps = frame_count / duration
    if duration <= 0 and fps > 0:
        duration = frame_count / fps
    if frame_count <= 0 or width <= 0 or height <= 0:
        raise _unreadable("it contains no video frames")
    return VideoInfo(width, height, round(fps, 3), frame_count, round(duration, 3), codec, rotation)


def _check_info(info: VideoInfo, limits: ValidationLimits) -> None:
    if info.width * info.height > limits.max_video_pixels:
        raise InputError(
            f"the driving video is {info.width}x{info.height} pixels per frame "
            f"({info.width * info.height / 1e6:.1f} MP; the limit is "
            f"{limits.max_video_pixels / 1e6:.1f} MP): export it at 1080p or lower",
            "video_too_many_pixels",
        )
    if info.duration_s > limits.max_video_s:
        raise InputError(
            f"the driving video is {info.duration_s:.1f} s long (maximum {limits.max_video_s:g} s): "
            "trim it and upload it again",
            "video_too_long",
        )


def probe_video(data: bytes, limits: ValidationLimits) -> VideoInfo:
    """Size, frame rate, frame count and duration of a video upload, without decoding its frames.

    Raises InputError (codes video_empty, video_too_large, video_unreadable, video_timeout,
    video_too_many_pixels, video_too_long).
    """
    data = _check_bytes(data, limits)
    with _temp_file(data) as path:
        info = _probe_path(path, limits)
    _check_info(info, limits)
    return info


def _output_size(info: VideoInfo, max_side: int | None) -> tuple[int, int]:
    width, height = info.width, info.height
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


def read_frames(
    data: bytes,
    every_n: int = 1,
    max_frames: int | None = None,
    limits: ValidationLimits | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode every `every_n`-th frame (at most `max_frames`) as RGB uint8, shape (N, H, W, 3).

    Frames are upright (the container's rotation applied) and, with `max_side`, downscaled so the long
    side is at most that. Raises the same InputErrors as probe_video, plus video_too_large when the
    frames would not fit in limits.max_decoded_video_bytes.
    """
    if every_n < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    limits = limits or ValidationLimits()
    data = _check_bytes(data, limits)
    with _temp_file(data) as path:
        info = _probe_path(path, limits)
        _check_info(info, limits)
        width, height = _output_size(info, max_side)
        expected = math.ceil(info.frame_count / every_n)
        if max_frames is not None:
            expected = min(expected, max_frames)
        frame_bytes = width * height * 3
        if expected * frame_bytes > limits.max_decoded_video_bytes:
            raise InputError(
                f"the driving video has {expected} frames of {width}x{height} to read "
                f"({expected * frame_bytes / 1e9:.1f} GB decoded; the limit is "
                f"{limits.max_decoded_video_bytes / 1e9:.1f} GB): upload a shorter or smaller video",
                "video_too_large",
            )
        filters = []
        if every_n > 1:
            filters.append(f"select=not(mod(n\\,{every_n}))")
        if (width, height) != (info.width, info.height):
            filters.append(f"scale={width}:{height}:flags=area")
        argv = _input_args(path) + ["-map", "0:v:0", "-an", "-sn", "-dn"]
        if filters:
            argv += ["-vf", ",".join(filters)]
        # passthrough: keep only the decoded (selected) frames; the default constant-rate output would
        # duplicate frames to fill the gaps that `select` leaves.
        argv += ["-fps_mode", "passthrough", "-frames:v", str(expected), "-f", "rawvideo",
                 "-pix_fmt", "rgb24", "-v", "error", "pipe:1"]
        result = _run(argv, limits)
    if result.returncode != 0:
        raise _unreadable(_last_error_line(result.stderr.decode("utf-8", "replace")))
    count = len(result.stdout) // frame_bytes
    if count == 0:
        raise _unreadable("no frame could be decoded")
    frames = np.frombuffer(result.stdout, dtype=np.uint8, count=count * frame_bytes)
    return frames.reshape(count, height, width, 3).copy()
