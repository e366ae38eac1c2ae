"""Decode any audio file ffmpeg reads into 16 kHz mono float32, with what the input was.

ffmpeg (the static binary shipped by imageio-ffmpeg) decodes the first audio stream at its native rate and
channel count; peak and clipping are measured on those native samples (resampling would smear a clipped
plateau), then the channels are averaged and resampled here with a polyphase filter. The bytes go through a
per-call temporary file rather than stdin because MP4/M4A files with the index at the end need a seekable
input.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ..errors import InputError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_DURATION_S = 0.1  # wav2vec2's feature encoder needs 400 samples; anything shorter is not speech
CLIP_LEVEL = 0.999  # |x| at or above this fraction of full scale counts as clipped
_FORMATS_HINT = "upload a WAV, MP3, M4A, OGG or FLAC file"

# Channel counts of ffmpeg's named layouts that are not of the "X.Y[.Z]" form.
_NAMED_LAYOUTS = {
    "mono": 1,
    "stereo": 2,
    "binaural": 2,
    "downmix": 2,
    "quad": 4,
    "quad(side)": 4,
    "hexagonal": 6,
    "octagonal": 8,
    "cube": 8,
    "hexadecagonal": 16,
}
_NUMERIC_LAYOUT = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\(.*\))?$")
_N_CHANNELS = re.compile(r"^(\d+) channels")
_INPUT = re.compile(r"^Input #0, (.+?), from ")
_AUDIO_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: Audio: (.+)$")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 [S], 16 kHz mono, not normalised
    input_format: str  # ffmpeg demuxer, e.g. "wav", "mp3", "mov,mp4,m4a,3gp,3g2,mj2"
    input_codec: str  # e.g. "pcm_s16le", "mp3", "aac", "opus"
    input_sample_rate_hz: int
    input_channels: int  # 0 when ffmpeg named a layout we could not count (then ffmpeg mixed to mono)
    peak: float  # max |x| over the native samples of every channel
    clipped_fraction: float  # fraction of native samples (all channels) with |x| >= CLIP_LEVEL

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class _StreamInfo:
    input_format: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def layout_channels(layout: str) -> int:
    """Channel count of an ffmpeg channel-layout name ("stereo", "5.1(side)", "7.1.4", "3 channels"); 0 if
    unknown."""
    layout = layout.strip()
    if layout in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[layout]
    match = _NUMERIC_LAYOUT.match(layout)
    if match:
        return sum(int(g) for g in match.groups() if g is not None)
    match = _N_CHANNELS.match(layout)
    return int(match.group(1)) if match else 0


def parse_stream_info(stderr: str) -> _StreamInfo | None:
    """Format, codec, rate and channels of the first audio stream of input #0, from ffmpeg's banner."""
    input_format, duration = "", None
    in_input = False
    for line in stderr.splitlines():
        header = _INPUT.match(line)
        if header:
            input_format, in_input = header.group(1), True
            continue
        if in_input and line and not line[0].isspace():
            break  # "Stream mapping:" / "Output #0" end the input section
        if not in_input:
            continue
        found = _DURATION.search(line)
        if found and duration is None:
            hours, minutes, seconds = found.groups()
            duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        stream = _AUDIO_STREAM.match(line)
        if stream:
            # "aac (LC) (mp4a / 0x6134706D), 44100 Hz, stereo, fltp, 128 kb/s (default)"
            parts = _split_top_level(stream.group(1))
            codec = parts[0].split(" ")[0]
            rate = next((int(p.split()[0]) for p in parts if p.endswith(" Hz")), 0)
            hz_index = next((i for i, p in enumerate(parts) if p.endswith(" Hz")), None)
            layout = parts[hz_index + 1] if hz_index is not None and hz_index + 1 < len(parts) else ""
            return _StreamInfo(input_format, codec, rate, layout_channels(layout), duration)
    return None


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses ("5.1(side)" and "(mp4a / 0x...)" stay whole)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _failure_reason(stderr: str, returncode: int) -> str:
    """ffmpeg's own last words, without the "[demuxer @ 0x...]" prefixes."""
    if "matches no streams" in stderr:
        info_format = re.search(r"Input #0, (.+?), from ", stderr)
        kind = f" (ffmpeg sees {info_format.group(1)})" if info_format else ""
        return f"the file has no audio stream{kind}"
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Error opening", "Conversion failed"))]
    return lines[-1] if lines else f"not a recognisable audio file; ffmpeg exit code {returncode}"


def _run_ffmpeg(path: Path, mono: bool, limit_s: float, timeout_s: float) -> tuple[bytes, str]:
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-i", str(path), "-map", "0:a:0",
            "-t", f"{limit_s:.3f}"]
    if mono:
        argv += ["-ac", "1"]
    argv += ["-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise InputError(
            f"decoding the audio took longer than {timeout_s:g} s; send a shorter or simpler file "
            f"({_FORMATS_HINT})",
            code="audio_decode_timeout",
        ) from None
    stderr = done.stderr.decode("utf-8", errors="replace")
    if done.returncode != 0:
        raise InputError(f"could not decode the audio ({_failure_reason(stderr, done.returncode)}): {_FORMATS_HINT}",
                         code="audio_undecodable")
    return done.stdout, stderr


def to_mono_16k(native: np.ndarray, rate: int) -> np.ndarray:
    """Average the channels ([S, C]) and resample to 16 kHz with a polyphase (Kaiser) low-pass."""
    mono = native.mean(axis=1, dtype=np.float64) if native.ndim == 2 else native.astype(np.float64)
    if rate != SAMPLE_RATE:
        common = math.gcd(rate, SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // common, rate // common)
    return mono.astype(np.float32)


def decode_audio(data: bytes, *, max_duration_s: float = 60.0, timeout_s: float = 30.0) -> DecodedAudio:
    """Decode an encoded audio file to 16 kHz mono float32. Raises InputError with what to do."""
    if not data:
        raise InputError(f"the audio is empty: {_FORMATS_HINT}", code="audio_empty")
    # Decode a little past the limit: enough to know the file is too long without reading hours.
    limit_s = max_duration_s + 0.5
    with tempfile.TemporaryDirectory(prefix="talkinghead-audio-") as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(data)
        raw, stderr = _run_ffmpeg(path, mono=False, limit_s=limit_s, timeout_s=timeout_s)
        info = parse_stream_info(stderr)
        if info is None or info.sample_rate <= 0:
            raise InputError(
                f"could not decode the audio (ffmpeg found no usable audio stream): {_FORMATS_HINT}",
                code="audio_undecodable",
            )
        channels = info.channels
        if channels <= 0 or len(raw) % (4 * channels) != 0:
            # A layout we cannot count: let ffmpeg mix to mono (peak/clipping then come from the mix).
            log.warning("unrecognised channel layout in %r; decoding through ffmpeg's mono mix", info)
            raw, stderr = _run_ffmpeg(path, mono=True, limit_s=limit_s, timeout_s=timeout_s)
            channels = 0
    native = np.frombuffer(raw, dtype="<f4").reshape(-1, max(channels, 1))
    if native.shape[0] == 0:
        raise InputError(f"could not decode the audio (the audio stream holds no samples): {_FORMATS_HINT}",
                         code="audio_undecodable")
    seconds = native.shape[0] / info.sample_rate
    if seconds > max_duration_s + 1e-3:
        raise InputError(
            f"audio is longer than {max_duration_s:g} s; split it or raise max_duration_s",
            code="audio_too_long",
        )
    if seconds < MIN_DURATION_S:
        raise InputError(
            f"audio is too short ({seconds:.3f} s); send at least {MIN_DURATION_S:g} s of speech",
            code="audio_too_short",
        )
    if not np.all(np.isfinite(native)):
        raise InputError(f"could not decode the audio (it holds NaN or infinite samples): {_FORMATS_HINT}",
                         code="audio_undecodable")
    magnitude = np.abs(native)
    return DecodedAudio(
        samples=to_mono_16k(native, info.sample_rate),
        input_format=info.input_format,
        input_codec=info.codec,
        input_sample_rate_hz=info.sample_rate,
        input_channels=channels,
        peak=float(magnitude.max()),
        clipped_fraction=float(np.count_nonzero(magnitude >= CLIP_LEVEL) / magnitude.size),
    )
