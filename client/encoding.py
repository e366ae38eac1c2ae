"""Streaming H.264 / H.265 + AAC encoder: frame chunks are encoded as they arrive, the audio is cut to the video.

Why PyAV (the `av` wheel) rather than piping into the `imageio-ffmpeg` binary: its wheel bundles libavcodec with
libx264, libx265 and the native AAC encoder (checked: `av.codecs_available`), and encoding in-process lets us
(1) see the first encoded packet the moment the encoder emits it (time to first encoded byte, exactly, not by
watching a file grow), (2) feed the audio in step with the video so the MP4 interleaves from the first second,
and (3) cut the audio to exactly `frames / fps` seconds from numbers we control. libavcodec runs x264/x265 in their
own threads with the GIL released, so the caller keeps receiving chunks while the encoder works.
"""

from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from .disclosure import LabelPlanes
from .watermark import WatermarkEmbedder

CODECS = {"h264": "libx264", "h265": "libx265"}
DEFAULT_CRF = {"h264": 18, "h265": 22}  # x265 spends ~4-6 CRF steps less than x264 for the same look
THREAD_TYPES = {"slice": "SLICE", "frame": "FRAME"}  # EncodeOptions.thread_type -> PyAV's ThreadType
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
AUDIO_RATE = 48_000
# ITU-R BT.709 tags (AVCOL_PRI/TRC/SPC_BT709 = 1, AVCOL_RANGE_MPEG = 1): players assume BT.709 for HD, so we
# convert with that matrix at every size and say so in the stream, instead of leaving an untagged BT.601 clip.
_BT709, _TV_RANGE = 1, 1
# Preparing a frame (swscale to the output size with Lanczos, the label, the watermark) would otherwise run in the
# caller's thread, one frame after another, while x264 spreads over every core; a few threads hide it, more would
# only take cores from x264 (1.24x the frames a second on a 16-core host: perf/RESULTS.md).
PREPARE_THREADS_MAX = 4


class EncodeError(RuntimeError):
    """The encoder or the audio input failed; the message says what to change."""


@dataclass(frozen=True)
class EncodeOptions:
    codec: str = "h264"
    crf: int | None = None  # None: DEFAULT_CRF[codec]
    preset: str = "veryfast"
    faststart: bool = True  # moov before mdat: playback starts before the whole file has downloaded
    audio_bitrate: int = 128_000
    threads: int = 0  # 0: the encoder picks (all cores)
    # How the encoder threads: "slice" (PyAV's default, which makes x264 use sliced threads: each frame split across
    # the threads, no added latency) or "frame" (x264's frame threads: several frames at once, a few frames more
    # latency; x264 documents it as the more efficient mode). The output differs (slices), not its look.
    thread_type: str = "slice"
    # (width, height) to scale every frame to inside the colour conversion (swscale, Lanczos), None: as received.
    # Why here: one pass replaces a separate resize and the RGB -> YUV conversion, and the server can stream the
    # generated size instead of the output size (832x480 against 1920x1080 RGB: 5.2x fewer bytes per frame).
    size: tuple[int, int] | None = None
    # Threads that convert, label and watermark frames ahead of the encoder, each frame on its own (swscale and the
    # numpy work release the GIL); 0: up to PREPARE_THREADS_MAX by the machine's cores, 1: in the caller's thread.
    prepare_threads: int = 0

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise EncodeError(f"codec {self.codec!r} is not supported; choose one of {', '.join(CODECS)}")
        if self.crf is not None and not 0 <= self.crf <= 51:
            raise EncodeError(f"crf {self.crf} is out of range; use 0 (lossless) to 51 (smallest)")
        if self.preset not in PRESETS:
            raise EncodeError(f"preset {self.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        if self.size is not None and not all(isinstance(side, int) and side > 0 and side % 2 == 0
                                             for side in self.size):
            raise EncodeError(f"output size {self.size} must be two even whole numbers of pixels (yuv420p)")
        if self.thread_type not in THREAD_TYPES:
            raise EncodeError(f"thread_type {self.thread_type!r} is unknown; choose one of {', '.join(THREAD_TYPES)}")
        if self.prepare_threads < 0:
            raise EncodeError(f"prepare_threads {self.prepare_threads} must be >= 0 (0: by the machine's cores)")

    @property
    def effective_crf(self) -> int:
        return DEFAULT_CRF[self.codec] if self.crf is None else self.crf

    @property
    def effective_prepare_threads(self) -> int:
        return self.prepare_threads or min(PREPARE_THREADS_MAX, os.cpu_count() or 1)


@dataclass(frozen=True)
class EncodeResult:
    path: Path
    codec: str
    width: int
    height: int
    fps: float
    frames: int
    sample_rate: int | None
    audio_samples: int  # exactly round(frames / fps * sample_rate) when there is audio
    bytes: int
    time_to_first_frame_s: float | None  # from `t0` to the first chunk handed to the encoder
    time_to_first_packet_s: float | None  # from `t0` to the first encoded video packet (first encoded byte)
    encode_s: float  # from `t0` to the finished file
    close_s: float  # flushing the encoder and writing the index (faststart rewrite) after the last chunk
    watermark: dict | None = None  # what was embedded in every frame (client/watermark.py), None when nothing
    scaled_from: tuple[int, int] | None = None  # (width, height) received, when the encoder scaled to the size

    @property
    def video_duration_s(self) -> float:
        return self.frames / self.fps

    @property
    def audio_duration_s(self) -> float | None:
        return self.audio_samples / self.sample_rate if self.sample_rate else None

    def as_dict(self) -> dict:
        return {
            "path": str(self.path), "codec": self.codec, "width": self.width, "height": self.height,
            "fps": self.fps, "frames": self.frames, "video_duration_s": round(self.video_duration_s, 6),
            "sample_rate": self.sample_rate, "audio_samples": self.audio_samples,
            "audio_duration_s": None if self.audio_duration_s is None else round(self.audio_duration_s, 6),
            "bytes": self.bytes, "time_to_first_frame_s": _round(self.time_to_first_frame_s),
            "time_to_first_packet_s": _round(self.time_to_first_packet_s), "encode_s": _round(self.encode_s),
            "close_s": _round(self.close_s), "watermark": self.watermark,
            "scaled_from": None if self.scaled_from is None else list(self.scaled_from),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def fps_fraction(fps: float) -> Fraction:
    """29.97 -> 30000/1001: the exact rate, so frame and sample counts agree to the sample."""
    if not 0 < fps <= 240:
        raise EncodeError(f"fps {fps} is out of range (0, 240]")
    return Fraction(fps).limit_denominator(1001)


def audio_samples_for(frames: int, fps: float | Fraction, sample_rate: int = AUDIO_RATE) -> int:
    """Samples that last exactly as long as `frames` video frames."""
    return round(Fraction(frames) * sample_rate / Fraction(fps))


def decode_audio(source: Path | bytes, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """Any audio ffmpeg reads -> float32 [channels (1 or 2), samples] at `sample_rate`."""
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else str(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise EncodeError(f"cannot read the audio: {exc}; give a WAV, MP3, FLAC, OGG or M4A file") from None
    with container:
        if not container.streams.audio:
            raise EncodeError("the audio file has no audio stream")
        stream = container.streams.audio[0]
        layout = "mono" if stream.codec_context.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
        parts = []
        try:
            for frame in container.decode(stream):
                parts.extend(f.to_ndarray() for f in resampler.resample(frame))
            parts.extend(f.to_ndarray() for f in resampler.resample(None))
        except av.error.FFmpegError as exc:
            raise EncodeError(f"the audio could not be decoded: {exc}") from None
    if not parts:
        return np.zeros((1 if layout == "mono" else 2, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(parts, axis=1), np.float32)


def encoder_frame(image: np.ndarray, size: tuple[int, int] | None = None,
                  reformatter: VideoReformatter | None = None) -> av.VideoFrame:
    """One [H, W, 3] uint8 RGB frame -> the encoder's yuv420p frame (BT.709, TV range), scaled to `size` (width,
    height) with Lanczos in the same swscale pass when given. Pass one `reformatter` for a stream of frames: it
    keeps swscale's context, whose filters (Lanczos to 1080p: ~3 ms a frame) a fresh frame's would rebuild."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    scale = {} if size is None else {"width": size[0], "height": size[1], "interpolation": Interpolation.LANCZOS}
    return (reformatter or VideoReformatter()).reformat(
        frame, format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG, **scale)


@dataclass
class _Timing:
    t0: float
    first_frame: float | None = None
    first_packet: float | None = None
    last_write: float | None = None
    extra: dict = field(default_factory=dict)


class StreamingEncoder:
    """Opens the MP4 on the first chunk (when the frame size is known) and encodes chunk by chunk.

    The file is written as `<name>.partial` beside `path` and renamed on `close()`: a crash or `abort()` never
    leaves a truncated MP4 that looks complete. `audio` is a file path or its bytes (any format ffmpeg reads), or
    float32 samples [channels, n] at 48 kHz; it is fed up to the current video time after every chunk, and
    `close()` pads it with silence or trims it so it lasts exactly `frames / fps`. `t0` (a `time.perf_counter()`
    value, default now) is where the time to the first frame and to the first encoded packet are counted from.
    `watermark` (an 8-byte payload, `client.watermark.payload_for_job`) is embedded invisibly in the luma of every
    frame, after the conversion to the encoder's pixel format, so it is exactly what the encoder is given.
    `label` (a text, e.g. disclosure.LABEL_TEXT) is drawn visibly in the bottom-right corner, also after the
    conversion, so it is drawn at the output size and stays sharp when the frames were scaled (`options.size`).
    """

    def __init__(
        self, path: Path, fps: float, audio: Path | bytes | np.ndarray | None = None,
        options: EncodeOptions | None = None, metadata: dict[str, str] | None = None, t0: float | None = None,
        watermark: bytes | None = None, label: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.options = options or EncodeOptions()
        self.rate = fps_fraction(fps)
        self.fps = float(fps)
        self.metadata = dict(metadata or {})
        self.frames_written = 0
        self._timing = _Timing(time.perf_counter() if t0 is None else t0)
        if audio is None or isinstance(audio, np.ndarray):
            self._audio = None if audio is None else np.atleast_2d(np.asarray(audio, np.float32))
        else:
            self._audio = decode_audio(audio)
        self._audio_fed = 0
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self._container = None
        self._video = self._audio_stream = None
        self._size: tuple[int, int] | None = None
        self._watermark_payload = watermark
        self._watermark: WatermarkEmbedder | None = None
        self._label_text = label
        self._label: LabelPlanes | None = None
        self._scale: tuple[int, int] | None = None  # (width, height) when frames are scaled in the conversion
        self._reformatters = threading.local()  # one swscale context per preparing thread
        self._preparers: ThreadPoolExecutor | None = None

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) of the frames received (before any scaling); None before the first chunk."""
        return self._size

    # -- opening ----------------------------------------------------------------------------------------------
    def _open(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The edit lists that cut the AAC priming and the padded last frame are written in the movie timescale:
        # at the default 1000 they round the audio to whole milliseconds (up to 47 samples lost); at the audio rate
        # they are exact to the sample.
        options = {"movie_timescale": str(AUDIO_RATE)}
        if self.options.faststart:
            options["movflags"] = "+faststart"
        self._container = av.open(str(self._partial), mode="w", format="mp4", options=options)
        for key, value in self.metadata.items():
            self._container.metadata[key] = value
        codec = self.options.codec
        video = self._container.add_stream(CODECS[codec], rate=self.rate)
        if self.options.size is not None and self.options.size != (width, height):
            self._scale = self.options.size
        video.width, video.height = self._scale or (width + width % 2, height + height % 2)
        video.pix_fmt = "yuv420p"
        video.time_base = 1 / self.rate
        context = video.codec_context
        context.thread_count = self.options.threads
        context.thread_type = THREAD_TYPES[self.options.thread_type]
        context.color_primaries = context.color_trc = context.colorspace = _BT709
        context.color_range = _TV_RANGE
        video.options = {"crf": str(self.options.effective_crf), "preset": self.options.preset}
        if codec == "h265":
            video.options["x265-params"] = "log-level=error"
            context.codec_tag = "hvc1"  # the HEVC sample entry Apple players require (ffmpeg defaults to hev1)
        self._video = video
        if self._audio is not None:
            layout = "mono" if self._audio.shape[0] == 1 else "stereo"
            stream = self._container.add_stream("aac", rate=AUDIO_RATE)
            stream.layout, stream.bit_rate = layout, self.options.audio_bitrate
            stream.time_base = Fraction(1, AUDIO_RATE)
            self._audio_stream = stream
        self._size = (height, width)
        if self._watermark_payload is not None:
            self._watermark = WatermarkEmbedder(self._watermark_payload, video.height, video.width)
        if self._label_text is not None:
            self._label = LabelPlanes(video.height, video.width, self._label_text)
        threads = self.options.effective_prepare_threads
        if threads > 1:
            self._preparers = ThreadPoolExecutor(threads, thread_name_prefix="encoder-prepare")

    def _prepare(self, image: np.ndarray) -> av.VideoFrame:
        """One RGB frame as the encoder takes it: converted (and scaled), labelled, watermarked."""
        reformatter = getattr(self._reformatters, "context", None)
        if reformatter is None:
            reformatter = self._reformatters.context = VideoReformatter()
        frame = encoder_frame(image, self._scale, reformatter)
        if self._label is not None:
            self._label.blend(frame)
        if self._watermark is not None:
            self._watermark.embed_plane(frame.planes[0])
        return frame

    def _stop_preparers(self) -> None:
        if self._preparers is not None:
            self._preparers.shutdown(wait=True, cancel_futures=True)
            self._preparers = None

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> None:
        """Encode a chunk of [n, H, W, 3] uint8 RGB frames."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be [n, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
        now = time.perf_counter()
        if self._container is None:
            self._timing.first_frame = now
            self._open(frames.shape[1], frames.shape[2])
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed mid-stream from {self._size} to {frames.shape[1:3]}")
        height, width = self._size
        if self._scale is None and (height % 2 or width % 2):
            # yuv420p needs even sides: repeat the last row / column rather than scale (no resampling blur).
            frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        # Frames are prepared ahead, in order, while the encoder takes the ones before them.
        prepared = (self._preparers.map(self._prepare, frames) if self._preparers is not None
                    else map(self._prepare, frames))
        try:
            for frame in prepared:
                frame.pts = self.frames_written
                self._mux(self._video.encode(frame))
                self.frames_written += 1
            self._feed_audio(audio_samples_for(self.frames_written, self.rate))
        except av.error.FFmpegError as exc:
            raise EncodeError(f"the {self.options.codec} encoder failed: {exc}") from None
        self._timing.last_write = time.perf_counter()

    def _mux(self, packets) -> None:
        for packet in packets:
            if self._timing.first_packet is None and packet.stream is self._video:
                self._timing.first_packet = time.perf_counter()
            self._container.mux(packet)

    def _feed_audio(self, until: int) -> None:
        """Encode audio samples [fed, until); silence past the end of the speech."""
        if self._audio_stream is None or until <= self._audio_fed:
            return
        have = self._audio.shape[1]
        block = self._audio[:, self._audio_fed:min(until, have)]
        if until > have:
            block = np.concatenate(
                [block, np.zeros((self._audio.shape[0], until - max(have, self._audio_fed)), np.float32)], axis=1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp",
                                           layout=self._audio_stream.layout.name)
        frame.sample_rate, frame.pts = AUDIO_RATE, self._audio_fed
        frame.time_base = Fraction(1, AUDIO_RATE)
        self._mux(self._audio_stream.encode(frame))
        self._audio_fed = until

    # -- finishing --------------------------------------------------------------------------------------------
    def close(self) -> EncodeResult:
        if self._container is None:
            raise EncodeError("no frames were written" if self._size is None else "the encoder was already closed")
        started = time.perf_counter()
        self._stop_preparers()
        try:
            self._mux(self._video.encode(None))
            if self._audio_stream is not None:
                self._feed_audio(audio_samples_for(self.frames_written, self.rate))
                self._mux(self._audio_stream.encode(None))
            self._container.close()
        except av.error.FFmpegError as exc:
            self.abort()
            raise EncodeError(f"finishing the MP4 failed: {exc}") from None
        self._container = None
        os.replace(self._partial, self.path)
        done = time.perf_counter()
        t0 = self._timing.t0
        height, width = self._size
        out_width, out_height = self._scale or (width + width % 2, height + height % 2)
        return EncodeResult(
            path=self.path, codec=self.options.codec, width=out_width, height=out_height,
            fps=self.fps, frames=self.frames_written,
            sample_rate=AUDIO_RATE if self._audio_stream is not None else None, audio_samples=self._audio_fed,
            bytes=self.path.stat().st_size,
            time_to_first_frame_s=None if self._timing.first_frame is None else self._timing.first_frame - t0,
            time_to_first_packet_s=None if self._timing.first_packet is None else self._timing.first_packet - t0,
            encode_s=done - t0, close_s=done - started,
            watermark=self._watermark.describe() if self._watermark is not None else None,
            scaled_from=(width, height) if self._scale is not None else None,
        )

    def abort(self) -> None:
        self._stop_preparers()
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                pass  # the file is deleted anyway
            self._container = None
        self._partial.unlink(missing_ok=True)
