"""A corpus of bad and unusual uploads, each built in memory from the bundled samples when first asked for.

Every case names what the server must answer: "accepted", or the stable code of the RequestRejected that
explains the problem. Cases that are odd but usable (CMYK, 16-bit, alpha, animated, 8 kHz speech, ...) must be
accepted; everything else must be refused with a clear message, never a traceback or a hang.

The bytes are made here rather than stored so that the corpus documents how each file is broken.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import subprocess
import wave
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import imageio_ffmpeg
import numpy as np
from audio_files import wav_bytes
from PIL import Image

from client.cli import SAMPLES

ACCEPTED = "accepted"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "photo" or "audio": which upload is bad; the other one is the good sample
    build: Callable[[], bytes]
    expect: str  # ACCEPTED or the rejection code
    why: str  # what is wrong with the file, or why it is usable

    @functools.cached_property
    def data(self) -> bytes:
        return self.build()


# -- samples --------------------------------------------------------------------------------------------------
@functools.cache
def photo_png() -> bytes:
    return (SAMPLES / "astronaut.png").read_bytes()


@functools.cache
def photo_rgb() -> Image.Image:
    return Image.open(SAMPLES / "astronaut.png").convert("RGB")


@functools.cache
def speech_wav() -> bytes:
    return (SAMPLES / "speech.wav").read_bytes()


@functools.cache
def speech() -> np.ndarray:
    """The sample speech as float32 in [-1, 1], 16 kHz mono."""
    with wave.open(str(SAMPLES / "speech.wav")) as handle:
        return np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32) / 32768


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# -- hand-made PNG and WAV files (headers that lie need a writer that does not check) ----------------------------
def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, rows: bytes, bit_depth: int = 8, colour_type: int = 2,
            level: int = 6) -> bytes:
    """A PNG whose IHDR says width x height whatever `rows` (filter byte + pixels per row) really hold."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows, level))
            + png_chunk(b"IEND", b""))


def zero_png(width: int, height: int, colour_type: int = 0) -> bytes:
    """A real black image of any size: zlib squeezes the zero rows ~1000x, the classic decompression bomb."""
    channels = {0: 1, 2: 3}[colour_type]
    row = bytes(1 + width * channels)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))



def float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """IEEE-float WAV (format 3), which can carry values beyond full scale, NaN and infinity."""
    data = np.asarray(samples, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " +
            struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def wav_claiming(samples: np.ndarray, rate: int, data_size: int) -> bytes:
    """A WAV whose RIFF and data sizes claim `data_size` bytes whatever follows (a lying or truncated header)."""
    real = wav_bytes(samples, rate)
    data_at = real.index(b"data") + 4
    patched = bytearray(real)
    patched[4:8] = struct.pack("<I", min(data_size + 36, 0xFFFFFFFF))
    patched[data_at:data_at + 4] = struct.pack("<I", min(data_size, 0xFFFFFFFF))
    return bytes(patched)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    common = math.gcd(rate, 16000)
    return resample_poly(samples, rate // common, 16000 // common).astype(np.float32)


def ffmpeg(args: list[str], stdin: bytes | None = None) -> bytes:
    """Run the bundled ffmpeg, output to stdout (`pipe:1` in args)."""
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", *args],
                            input=stdin, capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {result.stderr.decode(errors='replace')[-400:]}")
    return result.stdout


def encode_speech(fmt: str, codec: str, *extra: str, source: bytes | None = None) -> bytes:
    return ffmpeg(["-f", "wav", "-i", "pipe:0", "-c:a", codec, *extra, "-f", fmt, "pipe:1"],
                  stdin=source if source is not None else speech_wav())


# -- photo builders -------------------------------------------------------------------------------------------
def _truncated(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _corrupt_png_idat() -> bytes:
    data = bytearray(photo_png())
    start = data.index(b"IDAT") + 4
    for offset in range(start + 64, start + 4096, 7):  # scribble over the compressed pixels (CRC now wrong too)
        data[offset] ^= 0x5A
    return bytes(data)


def _cmyk_jpeg() -> bytes:
    return _save(photo_rgb().convert("CMYK"), "JPEG", quality=92)


def _png16_grey() -> bytes:
    grey = np.asarray(photo_rgb().convert("L"), np.uint16) * 257  # the full 16-bit range
    return _save(Image.fromarray(grey.astype(np.uint16)), "PNG")


def _png16_rgb() -> bytes:
    """48-bit RGB: Pillow cannot write it, so the rows are packed by hand (big-endian, filter 0)."""
    rgb = np.asarray(photo_rgb(), np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    return raw_png(rgb.shape[1], rgb.shape[0], rows, bit_depth=16, colour_type=2)


def _rgba_cutout() -> bytes:
    """The face kept, the background around it made transparent (a cut-out portrait)."""
    rgba = np.dstack([np.asarray(photo_rgb()), np.zeros((512, 512), np.uint8)])
    rgba[40:330, 110:400, 3] = 255
    rgba[rgba[..., 3] == 0, :3] = 0  # the colour under transparency is black here: it must not show
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def _rgba_invisible() -> bytes:
    rgba = np.dstack([np.asarray(photo_rgb()), np.zeros((512, 512), np.uint8)])
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def _other_frame(seed: int = 0) -> Image.Image:
    """A later animation frame: flat colour bars, cheap to palette-encode."""
    bars = np.random.default_rng(seed).integers(0, 256, (1, 8, 3), np.uint8)
    return Image.fromarray(np.repeat(np.repeat(bars, 512, 0), 64, 1))


def _animated_gif() -> bytes:
    return _save(photo_rgb(), "GIF", save_all=True, append_images=[_other_frame(1), _other_frame(2)],
                 duration=100, loop=0)


def _apng() -> bytes:
    return _save(photo_rgb(), "PNG", save_all=True, append_images=[_other_frame(3)], duration=100, loop=0)


def _exif_rotated_jpeg() -> bytes:
    """Pixels stored sideways with EXIF orientation 6 (rotate 90 CW to view), as phones write portraits."""
    sideways = photo_rgb().transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; viewing turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(sideways, "JPEG", quality=92, exif=exif.tobytes())


def _broken_icc_jpeg() -> bytes:
    return _save(photo_rgb(), "JPEG", quality=92, icc_profile=b"not an ICC profile" * 10)


def _tiled(n: int) -> bytes:
    canvas = Image.new("RGB", (512 * n, 512 * n))
    for row in range(n):
        for col in range(n):
            canvas.paste(photo_rgb(), (512 * col, 512 * row))
    return _save(canvas, "JPEG", quality=90)


def _tiny_face() -> bytes:
    canvas = Image.new("RGB", (1024, 1024), (128, 128, 128))
    canvas.paste(photo_rgb().resize((128, 128), Image.Resampling.LANCZOS), (448, 448))
    return _save(canvas, "PNG")


def _cut_off_face(left: int) -> bytes:
    """The photo cropped at x = `left` and enlarged 2x: the astronaut's face (x 181-268) loses its left part.

    Found by this suite: the detector clips its boxes to the image, so such a face used to pass (left = 200: an
    eye outside the photo) or to fail deep inside face_embedder with a message meant for API callers (215).
    """
    crop = photo_rgb().crop((left, 0, 512, 512))
    return _save(crop.resize((crop.width * 2, crop.height * 2)), "PNG")


def _gif_screen_bomb() -> bytes:
    """A GIF whose logical screen claims 65535 x 65535 (4.3 gigapixels) around one tiny image."""
    gif = bytearray(_save(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(gif)


def _tiff_header_bomb() -> bytes:
    tiff = bytearray(_save(Image.new("RGB", (8, 8)), "TIFF"))
    # ImageWidth (256) and ImageLength (257) entries are SHORT or LONG values in the first IFD: rewrite both.
    ifd = struct.unpack("<I", tiff[4:8])[0]
    count = struct.unpack("<H", tiff[ifd:ifd + 2])[0]
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", tiff[at:at + 4])
        if tag in (256, 257):
            tiff[at + 2:at + 12] = struct.pack("<HII", 4, 1, 200_000)  # LONG 200000
    return bytes(tiff)


def _wide_strip() -> bytes:
    """20000 x 200 real pixels: under the pixel limit, but only 19 pixels tall once scaled for processing."""
    rows = (b"\x00" + bytes(range(256)) * 78 + bytes(32)) * 200  # 1 + 20000 bytes per grey row
    return raw_png(20000, 200, rows, colour_type=0)


# -- audio builders -------------------------------------------------------------------------------------------
def _clipped() -> bytes:
    return wav_bytes(np.clip(speech() * 30, -1, 1))


def _hours_of_silence_flac() -> bytes:
    """A real 1 h file: 8 kHz silence compresses to ~370 KB as FLAC."""
    return ffmpeg(["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "3600", "-c:a", "flac", "-f", "flac",
                   "pipe:1"])


def _six_minutes_of_speech() -> bytes:
    """The 6 s sample speech looped 60 times (6 minutes, above the 300 s limit), as 8 kHz 8 kbit/s MP3 (~360 KB)."""
    looped = wav_bytes(np.tile(resample(speech(), 8000), 60), 8000)
    return encode_speech("mp3", "libmp3lame", "-b:a", "8k", source=looped)


def _video_without_audio() -> bytes:
    return ffmpeg(["-f", "lavfi", "-i", "testsrc=size=128x128:rate=10", "-t", "2", "-c:v", "libx264",
                   "-pix_fmt", "yuv420p", "-movflags", "frag_keyframe+empty_moov", "-f", "mp4", "pipe:1"])


def _ultrasonic() -> bytes:
    """A loud 21 kHz tone at 48 kHz: real sound, but none of it survives resampling to 16 kHz for speech."""
    t = np.arange(48000 * 3) / 48000
    return wav_bytes(0.5 * np.sin(2 * np.pi * 21000 * t).astype(np.float32), 48000)


def _rng_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, np.uint8).tobytes()


PHOTO_CASES: tuple[Case, ...] = (
    # -- corrupt, truncated, mislabelled --
    Case("empty", "photo", lambda: b"", "photo_empty", "0 bytes"),
    Case("png_signature_then_zeros", "photo", lambda: b"\x89PNG\r\n\x1a\n" + bytes(64), "photo_unreadable",
         "a PNG signature and nothing valid after it"),
    Case("png_truncated_half", "photo", lambda: _truncated(photo_png(), 0.5), "photo_unreadable",
         "the upload cut off half way"),
    Case("png_truncated_header", "photo", lambda: photo_png()[:30], "photo_unreadable", "cut inside IHDR"),
    Case("png_corrupt_pixels", "photo", _corrupt_png_idat, "photo_unreadable", "compressed pixel data scribbled over"),
    Case("jpeg_truncated", "photo", lambda: _truncated((SAMPLES / "hopper.jpg").read_bytes(), 0.6),
         "photo_unreadable", "a JPEG cut off at 60 %"),
    Case("jpeg_soi_then_noise", "photo", lambda: b"\xff\xd8\xff\xe0" + _rng_bytes(4096, 1), "photo_unreadable",
         "a JPEG start marker followed by noise"),
    Case("wav_as_photo", "photo", speech_wav, "photo_unreadable", "speech sent as the photo"),
    Case("pdf_as_photo", "photo", lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
         "photo_unreadable", "a PDF"),
    Case("eps_as_photo", "photo", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 512 512\nshowpage\n",
         "photo_unreadable", "EPS would run Ghostscript: not an accepted format"),
    Case("svg_as_photo", "photo", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512"/>',
         "photo_unreadable", "vector image"),
    Case("random_bytes", "photo", lambda: _rng_bytes(10_000, 2), "photo_unreadable", "noise"),
    # -- decompression bombs and huge dimensions --
    Case("png_header_100k_x_100k", "photo", lambda: raw_png(100_000, 100_000, b"\x00" * 10), "photo_too_many_pixels",
         "IHDR claims 10 gigapixels over 10 bytes of pixels"),
    Case("png_zlib_bomb_8000x8000", "photo", lambda: zero_png(8000, 8000), "photo_too_many_pixels",
         "64 MP of real zeros compressed to ~64 KB"),
    Case("gif_screen_65535", "photo", _gif_screen_bomb, "photo_too_many_pixels", "GIF logical screen 65535 x 65535"),
    Case("tiff_header_200k", "photo", _tiff_header_bomb, "photo_too_many_pixels", "TIFF IFD claims 200000 x 200000"),
    Case("png_100000x64", "photo", lambda: raw_png(100_000, 64, b"\x00" * 10, colour_type=0), "photo_too_small",
         "a strip 64 pixels high (checked from the header)"),
    Case("png_wide_strip_20000x200", "photo", _wide_strip, "photo_too_small",
         "under the pixel limit but too elongated once scaled"),
    Case("png_zero_size", "photo", lambda: raw_png(0, 0, b""), "photo_unreadable", "IHDR claims 0 x 0"),
    Case("png_16x16", "photo", lambda: _save(photo_rgb().resize((16, 16)), "PNG"), "photo_too_small", "16 x 16"),
    Case("black_6000x6000", "photo", lambda: zero_png(6000, 6000, colour_type=2), "no_face",
         "36 MP (under the limit) decoded for real: black, so no face"),
    # -- unusual but usable --
    Case("cmyk_jpeg", "photo", _cmyk_jpeg, ACCEPTED, "CMYK JPEG is colour-converted"),
    Case("png_16bit_grey", "photo", _png16_grey, ACCEPTED, "16-bit greyscale is scaled, not clipped to white"),
    Case("png_16bit_rgb", "photo", _png16_rgb, ACCEPTED, "48-bit RGB"),
    Case("png_rgba_cutout", "photo", _rgba_cutout, ACCEPTED, "alpha composited over white"),
    Case("gif_animated", "photo", _animated_gif, ACCEPTED, "animated GIF: the first frame is the portrait"),
    Case("apng_animated", "photo", _apng, ACCEPTED, "animated PNG: the first frame is the portrait"),
    Case("png_palette", "photo", lambda: _save(photo_rgb().quantize(256), "PNG"), ACCEPTED, "8-bit palette"),
    Case("jpeg_exif_rotated", "photo", _exif_rotated_jpeg, ACCEPTED, "EXIF orientation 6 is applied"),
    Case("jpeg_broken_icc", "photo", _broken_icc_jpeg, ACCEPTED, "an unusable ICC profile is ignored"),
    Case("webp", "photo", lambda: _save(photo_rgb(), "WEBP", quality=90), ACCEPTED, "WebP"),
    Case("bmp", "photo", lambda: _save(photo_rgb(), "BMP"), ACCEPTED, "BMP"),
    Case("tiff", "photo", lambda: _save(photo_rgb(), "TIFF"), ACCEPTED, "TIFF"),
    Case("jpeg_with_png_bytes_label", "photo", lambda: _save(photo_rgb(), "JPEG", quality=90), ACCEPTED,
         "the format is sniffed from the bytes, never from a name"),
    # -- faces --
    Case("no_face", "photo", lambda: (SAMPLES / "no_face.png").read_bytes(), "no_face", "a landscape"),
    Case("rgba_fully_transparent", "photo", _rgba_invisible, "no_face", "alpha 0 everywhere: a white page"),
    Case("many_faces_3x3", "photo", lambda: _tiled(3), ACCEPTED, "nine faces: the largest is animated"),
    Case("tiny_face", "photo", _tiny_face, "face_too_small", "a 128 px portrait pasted on a 1024 px canvas"),
    Case("profile", "photo", lambda: (SAMPLES / "profile.png").read_bytes(), "face_in_profile", "a side view"),
    Case("face_cut_off", "photo", lambda: _cut_off_face(200), "face_cut_off", "one eye outside the frame"),
    Case("face_mostly_cut_off", "photo", lambda: _cut_off_face(215), "face_cut_off", "half the face outside"),
)

AUDIO_CASES: tuple[Case, ...] = (
    Case("empty", "audio", lambda: b"", "audio_empty", "0 bytes"),
    Case("wav_zero_samples", "audio", lambda: wav_bytes(np.zeros(0, np.float32)), "audio_undecodable",
         "a valid WAV header with no samples"),
    Case("wav_header_cut", "audio", lambda: speech_wav()[:20], "audio_undecodable", "cut inside the header"),
    Case("silent_3s", "audio", lambda: wav_bytes(np.zeros(48000, np.float32)), "audio_silent", "digital silence"),
    Case("hiss_-80dBFS", "audio",
         lambda: wav_bytes(np.random.default_rng(0).normal(0, 1e-4, 48000).astype(np.float32)), "audio_silent",
         "only noise far below speech"),
    Case("clipped", "audio", _clipped, "audio_clipped", "speech amplified 30x and clipped"),
    Case("float_overrange", "audio", lambda: float_wav(speech() * 8), "audio_clipped",
         "float WAV far beyond full scale"),
    Case("float_nan", "audio", lambda: float_wav(np.where(np.arange(48000) % 100 == 0, np.nan, 0.1)),
         "audio_undecodable", "NaN samples"),
    Case("too_short_50ms", "audio", lambda: wav_bytes(speech()[:800]), "audio_too_short", "50 ms"),
    Case("flac_1h_silence", "audio", _hours_of_silence_flac, "audio_too_long", "a real hour of audio in 370 KB"),
    Case("mp3_6min_speech", "audio", _six_minutes_of_speech, "audio_too_long", "6 minutes of speech"),
    Case("wav_header_claims_hours", "audio", lambda: wav_claiming(speech(), 16000, 0xFFFFFFF0), ACCEPTED,
         "the header claims 37 hours; the 6 s that are really there are used"),
    Case("png_as_audio", "audio", photo_png, "audio_undecodable", "a photo sent as the speech"),
    Case("random_bytes", "audio", lambda: _rng_bytes(20_000, 3), "audio_undecodable", "noise bytes"),
    Case("video_without_audio", "audio", _video_without_audio, "audio_undecodable", "an MP4 with no audio stream"),
    Case("ultrasonic_21kHz", "audio", _ultrasonic, "audio_silent", "loud, but nothing below 8 kHz"),
    # -- unusual but usable: resampled, mixed down, decoded --
    Case("wav_8kHz", "audio", lambda: wav_bytes(resample(speech(), 8000), 8000), ACCEPTED, "resampled to 16 kHz"),
    Case("wav_48kHz", "audio", lambda: wav_bytes(resample(speech(), 48000), 48000), ACCEPTED, "resampled to 16 kHz"),
    Case("wav_11025Hz", "audio", lambda: wav_bytes(resample(speech(), 11025), 11025), ACCEPTED,
         "an odd rate, resampled"),
    Case("wav_44k1_stereo", "audio", lambda: wav_bytes(np.repeat(resample(speech(), 44100)[:, None], 2, 1), 44100),
         ACCEPTED, "stereo mixed down"),
    Case("wav_8ch", "audio", lambda: wav_bytes(np.repeat(speech()[:, None], 8, 1) * 0.5, 16000), ACCEPTED,
         "8 channels mixed down"),
    Case("mp3", "audio", lambda: encode_speech("mp3", "libmp3lame", "-b:a", "64k"), ACCEPTED, "MP3"),
    Case("ogg_opus", "audio", lambda: encode_speech("ogg", "libopus", "-b:a", "32k"), ACCEPTED, "Opus"),
    Case("flac", "audio", lambda: encode_speech("flac", "flac"), ACCEPTED, "FLAC"),
    Case("m4a_aac", "audio", lambda: encode_speech("ipod", "aac", "-b:a", "64k", "-movflags",
                                                   "frag_keyframe+empty_moov"), ACCEPTED, "AAC in M4A"),
)

ALL_CASES: tuple[Case, ...] = PHOTO_CASES + AUDIO_CASES


def case_id(case: Case) -> str:
    return f"{case.kind}-{case.name}"
