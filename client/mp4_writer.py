"""Pipe frame chunks into ffmpeg as they arrive and mux the speech: a playable H.264 + AAC MP4.

ffmpeg is the static build in the `imageio-ffmpeg` wheel; it runs with an argv list (never a shell) and
its own stderr is kept for the error message if it fails.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np


class EncodeError(RuntimeError):
    """ffmpeg refused the stream; the message carries its own last words."""


class StreamingMp4Writer:
    """Starts ffmpeg on the first chunk (when the frame size is known) and feeds it chunk by chunk."""

    def __init__(
        self, path: Path, fps: float, audio: Path | None = None, metadata: dict[str, str] | None = None,
        crf: int = 18, preset: str = "veryfast",
    ) -> None:
        self.path, self.fps, self.audio = Path(path), float(fps), audio
        self.metadata, self.crf, self.preset = dict(metadata or {}), crf, preset
        self.frames_written = 0
        self._process: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()
        self._size: tuple[int, int] | None = None

    def _start(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "pipe:0"]
        if self.audio is not None:
            argv += ["-i", str(self.audio)]
        argv += ["-map", "0:v:0"]
        if self.audio is not None:
            # The clip has ceil(duration * fps) frames, so it is a little longer than the speech: pad the
            # audio with silence and stop at the video's end (-shortest alone would drop the last frame).
            argv += ["-map", "1:a:0", "-af", "apad", "-shortest", "-c:a", "aac", "-b:a", "128k", "-ar", "48000"]
        # yuv420p needs even sides; pad by one pixel rather than scale, so no resampling blur.
        argv += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                 "-crf", str(self.crf), "-preset", self.preset, "-movflags", "+faststart"]
        for key, value in self.metadata.items():
            argv += ["-metadata", f"{key}={value}"]
        argv.append(str(self.path))
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=self._stderr)
        self._size = (height, width)

    def write(self, frames: np.ndarray) -> None:
        frames = np.ascontiguousarray(frames, np.uint8)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [n, H, W, 3] uint8, got {frames.shape}")
        if self._process is None:
            self._start(frames.shape[1], frames.shape[2])
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed mid-stream from {self._size} to {frames.shape[1:3]}")
        try:
            self._process.stdin.write(frames.tobytes())
        except BrokenPipeError:
            raise EncodeError(f"ffmpeg stopped: {self._ffmpeg_error()}") from None
        self.frames_written += len(frames)

    def close(self) -> Path:
        if self._process is None:
            raise EncodeError("no frames were written")
        self._process.stdin.close()
        code = self._process.wait()
        if code != 0:
            raise EncodeError(f"ffmpeg exited with code {code}: {self._ffmpeg_error()}")
        self._stderr.close()
        return self.path

    def abort(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self.path.unlink(missing_ok=True)

    def _ffmpeg_error(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"
