"""What an MP4 holds, read back independently of the encoder: codec, fps, frame count, audio duration, tags.

`imageio-ffmpeg` ships no ffprobe, and parsing `ffmpeg -i` text is brittle. PyAV wraps libavformat, the library
ffprobe itself is a front end for, so this reads the same container fields as structured values: the stream
durations are the ones ffprobe prints (after the MP4 edit lists that hide the AAC encoder priming and the padding
of its last frame, i.e. what a player plays), and the frame count comes from demuxing every video packet (one
packet per frame) rather than from a header field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import av


@dataclass(frozen=True)
class MediaInfo:
    format: str
    video_codec: str | None
    video_tag: str | None
    width: int | None
    height: int | None
    pix_fmt: str | None
    fps: float | None
    frames: int
    video_duration_s: float | None
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None
    audio_duration_s: float | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def audio_samples(self) -> int:
        return round((self.audio_duration_s or 0.0) * (self.sample_rate or 0))

    def as_dict(self) -> dict:
        return {**asdict(self), "audio_samples": self.audio_samples}


def _duration(stream) -> float | None:
    return float(stream.duration * stream.time_base) if stream is not None and stream.duration else None


def probe(path: Path) -> MediaInfo:
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = sum(1 for packet in container.demux(video) if packet.size) if video is not None else 0
        return MediaInfo(
            format=container.format.name,
            video_codec=video.codec_context.name if video is not None else None,
            video_tag=video.codec_tag if video is not None else None,
            width=video.width if video is not None else None,
            height=video.height if video is not None else None,
            pix_fmt=video.codec_context.pix_fmt if video is not None else None,
            fps=float(video.average_rate) if video is not None and video.average_rate else None,
            frames=frames,
            video_duration_s=_duration(video),
            audio_codec=audio.codec_context.name if audio is not None else None,
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            channels=audio.codec_context.channels if audio is not None else None,
            audio_duration_s=_duration(audio),
            metadata=dict(container.metadata),
        )
