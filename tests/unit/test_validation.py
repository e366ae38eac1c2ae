"""Input validation: a corpus of good, odd and hostile uploads generated here, and the policy checks."""

from __future__ import annotations

import io
import math
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from python_backends.errors import ConfigError, InputError
from python_backends.settings import from_mapping, from_model_config
from python_backends.validation import (
    NO_FACE_MESSAGE,
    ValidationLimits,
    VideoInfo,
    check_audio,
    check_audio_upload,
    check_pose,
    decode_image,
    encode_png,
    probe_video,
    read_frames,
    select_face,
)
from python_backends.validation.video_checks import ffmpeg_exe

LIMITS = ValidationLimits()
SAMPLES = Path(__file__).resolve().parents[2] / "client" / "samples"


# ---------------------------------------------------------------------------------------------- helpers
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand, so the header can claim anything (Pillow refuses to write such files)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = zlib.compress(rows) if rows is not None else zlib.compress(b"\0" * 64)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 320, height: int = 240) -> np.ndarray:
    """A smooth RGB test picture: JPEG keeps it close, so colour checks can be tight."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, 255 - x], axis=-1).round().astype(np.uint8)


def refused(code: str, data: bytes, limits: ValidationLimits = LIMITS) -> str:
    with pytest.raises(InputError) as info:
        decode_image(data, limits)
    assert info.value.code == code, str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ limits
def test_limits_defaults_are_documented_values():
    assert LIMITS.max_upload_bytes == 20_000_000
    assert LIMITS.max_pixels == 40_000_000 and LIMITS.min_side == 128 and LIMITS.working_max_side == 1920
    assert LIMITS.multi_face_policy == "largest" and LIMITS.min_face_px == 64
    assert LIMITS.max_yaw_deg == 35.0 and LIMITS.min_audio_s == 1.0 and LIMITS.max_audio_s == 300.0
    assert LIMITS.max_clipped_fraction == 0.01 and LIMITS.min_loudness_lufs == -60.0


def test_limits_load_from_triton_parameters():
    limits = from_mapping(
        ValidationLimits,
        {"multi_face_policy": "reject", "min_face_px": "80", "max_yaw_deg": "30.5",
         "min_loudness_lufs": "-50"},
    )
    assert (limits.multi_face_policy, limits.min_face_px, limits.max_yaw_deg) == ("reject", 80, 30.5)
    assert limits.min_loudness_lufs == -50.0 and limits.max_pixels == LIMITS.max_pixels
    config = {
        "parameters": {"max_audio_s": {"string_value": "60"}, "working_max_side": {"string_value": "1024"}}
    }
    limits = from_model_config(ValidationLimits, config)
    assert limits.max_audio_s == 60.0 and limits.working_max_side == 1024


@pytest.mark.parametrize(
    "values, words",
    [
        ({"multi_face_policy": "first"}, "multi_face_policy"),
        ({"min_face_px": "sixty"}, "min_face_px"),
        ({"max_clipped_fraction": "5"}, "max_clipped_fraction"),
        ({"min_audio_s": "10", "max_audio_s": "5"}, "min_audio_s"),
        ({"max_pixels": "-1"}, "max_pixels"),
        ({"max_yaw": "30"}, "max_yaw"),
    ],
)
def test_limits_reject_bad_parameters(values, words):
    with pytest.raises(ConfigError, match=words):
        from_mapping(ValidationLimits, values)


# ---------------------------------------------------------------------------------------- decode: good
def test_rgb_png_round_trips_exactly():
    picture = gradient()
    out = decode_image(encode_png(picture), LIMITS)
    assert out.dtype == np.uint8 and out.shape == (240, 320, 3) and out.flags.writeable
    np.testing.assert_array_equal(out, picture)


def test_grayscale_becomes_three_equal_channels():
    gray = gradient()[:, :, 0]
    out = decode_image(encoded(Image.fromarray(gray), "PNG"), LIMITS)
    assert out.shape == (240, 320, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_cmyk_jpeg_becomes_rgb():
    picture = gradient()
    data = encoded(Image.fromarray(picture).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, LIMITS)
    assert out.shape == picture.shape
    assert np.abs(out.astype(int) - picture).mean() < 4.0


def test_sixteen_bit_grayscale_png_uses_the_full_range():
    ramp = np.linspace(0, 65535, 256 * 200).reshape(200, 256).round().astype(np.uint16)
    data = encoded(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, LIMITS)
    expected = np.round(ramp / 257.0)
    assert np.abs(out[:, :, 1].astype(int) - expected).max() <= 1
    assert out.max() == 255 and out.min() == 0  # not clipped to white, not crushed


def test_sixteen_bit_rgb_png_keeps_colour():
    height, width = 140, 150
    picture = np.zeros((height, width, 3), dtype=np.uint16)
    picture[..., 0], picture[..., 1], picture[..., 2] = 65535, 32896, 0  # 255, 128, 0 in 8 bits
    rows = b"".join(b"\0" + picture[r].astype(">u2").tobytes() for r in range(height))
    out = decode_image(raw_png(width, height, 16, 2, rows), LIMITS)
    assert out.shape == (height, width, 3)
    np.testing.assert_array_equal(out[70, 70], [255, 128, 0])


def test_rgba_png_is_composited_over_white():
    rgba = np.zeros((200, 200, 4), dtype=np.uint8)
    rgba[:, :100] = (200, 20, 20, 255)  # opaque red
    rgba[:, 100:150] = (0, 0, 0, 0)  # fully transparent black
    rgba[:, 150:] = (0, 0, 200, 128)  # half-transparent blue
    out = decode_image(encode_png(rgba), LIMITS)
    np.testing.assert_array_equal(out[50, 50], [200, 20, 20])
    np.testing.assert_array_equal(out[50, 120], [255, 255, 255])
    assert np.abs(out[50, 180].astype(int) - [127, 127, 227]).max() <= 1


def test_gray_alpha_and_transparent_palette_are_composited_over_white():
    la = Image.fromarray(np.dstack([np.full((150, 150), 10, np.uint8), np.zeros((150, 150), np.uint8)]), "LA")
    np.testing.assert_array_equal(decode_image(encoded(la, "PNG"), LIMITS)[5, 5], [255, 255, 255])
    palette = Image.new("P", (150, 150), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 75, 150))
    out = decode_image(encoded(palette, "PNG", transparency=0), LIMITS)
    np.testing.assert_array_equal(out[10, 10], [10, 200, 30])
    np.testing.assert_array_equal(out[10, 140], [255, 255, 255])


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_gives_its_first_frame(fmt):
    colours = ((220, 30, 30), (30, 30, 220), (30, 220, 30))
    frames = [Image.new("RGB", (160, 140), colour) for colour in colours]
    data = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = decode_image(data, LIMITS)
    assert out.shape == (140, 160, 3)
    assert np.abs(out[70, 80].astype(int) - [220, 30, 30]).max() <= 8


def test_exif_orientation_is_applied():
    stored = np.full((200, 300, 3), 255, dtype=np.uint8)
    stored[:40, :40] = (255, 0, 0)  # a red mark at the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as phones write for portrait shots
    data = encoded(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data, LIMITS)
    assert out.shape == (300, 200, 3)  # width and height swapped
    assert out[10, 190, 0] > 200 and out[10, 190, 1] < 60  # the mark is now top-right
    assert out[10, 10].min() > 200


def test_large_photo_is_downscaled_to_the_working_size():
    big = Image.fromarray(gradient(400, 300)).resize((2400, 1800))
    out = decode_image(encoded(big, "JPEG", quality=85), LIMITS)
    assert out.shape == (1440, 1920, 3)
    # Under half the size, JPEG decodes at a reduced scale first (draft); the result is the same picture.
    small = decode_image(encoded(big, "JPEG", quality=85), ValidationLimits(working_max_side=800))
    assert small.shape == (600, 800, 3)
    reference = np.asarray(big.resize((800, 600), Image.Resampling.LANCZOS))
    assert np.abs(small.astype(int) - reference).mean() < 3.0
    png = decode_image(encoded(big, "PNG", compress_level=1), ValidationLimits(working_max_side=1000))
    assert png.shape == (750, 1000, 3)


def test_broken_icc_profile_does_not_block_a_good_photo():
    picture = gradient()
    out = decode_image(encoded(Image.fromarray(picture), "PNG", icc_profile=b"not a profile"), LIMITS)
    np.testing.assert_array_equal(out, picture)


def test_numpy_object_array_input_is_accepted():
    # Triton hands BYTES tensors over as numpy object arrays.
    data = np.array([encode_png(gradient())], dtype=np.object_)
    assert decode_image(data, LIMITS).shape == (240, 320, 3)


# ----------------------------------------------------------------------------------------- decode: bad
def test_empty_and_oversized_uploads():
    refused("photo_empty", b"")
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    message = refused("photo_too_large", encode_png(noise), ValidationLimits(max_upload_bytes=100_000))
    assert "MB" in message and "limit" in message


@pytest.mark.parametrize(
    "data",
    [
        bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        b"Dear team,\nthis is a text file that someone renamed to photo.jpg.\n" * 20,
        b"\xff\xd8\xff\xe0" + b"\0" * 400,  # a JPEG signature followed by nothing sensible
        b"P6\n200 200\n255\n" + b"\x80" * 120000,  # PPM: Pillow reads it, our whitelist does not
    ],
    ids=["random", "text-as-jpg", "fake-jpeg-magic", "ppm"],
)
def test_unreadable_uploads(data):
    message = refused("photo_unreadable", data)
    assert message.startswith("the photo could not be read (")
    assert message.endswith("): upload a JPEG, PNG or WebP image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("fraction", [0.5, 0.05])
def test_truncated_files(fmt, fraction):
    data = encoded(Image.fromarray(gradient(640, 480)), fmt)
    message = refused("photo_unreadable", data[: int(len(data) * fraction)])
    assert "truncated" in message or "broken" in message


def test_decompression_bomb_from_a_tiny_file():
    bomb = raw_png(50_000, 50_000, 8, 2, None)  # claims 2.5 gigapixels in about 100 bytes
    assert len(bomb) < 200
    message = refused("photo_too_many_pixels", bomb)
    assert "2500.0 MP" in message and "40.0 MP" in message


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # 8000x6000 is below Pillow's own bomb limit, so only our check can stop it; the pixel data is
    # garbage, so any attempt to decode would report "could not be read" instead.
    message = refused("photo_too_many_pixels", raw_png(8000, 6000, 8, 2, None))
    assert "8000x6000" in message and "48.0 MP" in message
    # 10000x10000 is above Pillow's warning threshold: its warning must become our error too.
    refused("photo_too_many_pixels", raw_png(10_000, 10_000, 8, 2, None))


def test_tiny_and_elongated_photos():
    message = refused("photo_too_small", encode_png(gradient(100, 90)))
    assert "100x90" in message and "128" in message
    message = refused("photo_too_small", encode_png(gradient(4000, 200)))
    assert "4000x200" in message and "crop" in message


def test_encode_png_rejects_what_png_cannot_hold():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((4, 4, 2), dtype=np.uint8))
    assert Image.open(io.BytesIO(encode_png(np.zeros((4, 5, 1), dtype=np.uint8)))).size == (5, 4)


# ----------------------------------------------------------------------------------------- face policy
def faces(*boxes, scores=None):
    array = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.array(scores if scores is not None else [0.99] * len(array), dtype=np.float32)
    keypoints = np.zeros((len(array), 5, 2), dtype=np.float32)
    return array, scores, keypoints


SHAPE = (480, 640, 3)


def test_no_face():
    with pytest.raises(InputError) as info:
        select_face(*faces(), SHAPE, LIMITS)
    assert info.value.code == "no_face" and str(info.value) == NO_FACE_MESSAGE
    # Zero-padded or NaN rows (as a batched detector pads) are not faces either.
    with pytest.raises(InputError, match="no face found"):
        select_face(*faces((0, 0, 0, 0), (np.nan, 1, 2, 3)), SHAPE, LIMITS)


def test_largest_face_is_chosen_and_score_breaks_ties():
    boxes = faces((10, 10, 90, 90), (200, 100, 400, 330), (450, 50, 530, 130), scores=[0.99, 0.8, 0.95])
    assert select_face(*boxes, SHAPE, LIMITS) == 1
    tie = faces((10, 10, 110, 110), (300, 10, 400, 110), scores=[0.7, 0.9])
    assert select_face(*tie, SHAPE, LIMITS) == 1


def test_reject_policy_counts_only_faces_big_enough_to_animate():
    strict = ValidationLimits(multi_face_policy="reject")
    with pytest.raises(InputError) as info:
        select_face(*faces((10, 10, 110, 110), (300, 10, 400, 110)), SHAPE, strict)
    assert info.value.code == "multiple_faces" and "2 faces" in str(info.value)
    # A 30-pixel face on a poster in the background does not count.
    assert select_face(*faces((30, 30, 60, 60), (300, 10, 450, 190)), SHAPE, strict) == 1


def test_small_face_message_names_size_and_minimum():
    with pytest.raises(InputError) as info:
        select_face(*faces((100, 100, 140, 152)), SHAPE, LIMITS)
    message = str(info.value)
    assert info.value.code == "face_too_small"
    assert "40x52" in message and "64" in message
    assert "move closer or use a higher-resolution photo" in message
    relative = ValidationLimits(min_face_fraction=0.25)
    with pytest.raises(InputError, match="20%") as info:
        select_face(*faces((100, 100, 196, 196)), SHAPE, relative)
    assert info.value.code == "face_too_small"


def test_face_cut_off_by_the_frame():
    with pytest.raises(InputError) as info:
        select_face(*faces((540, 100, 740, 300)), SHAPE, LIMITS)
    assert info.value.code == "face_cut_off" and "50%" in str(info.value)
    assert select_face(*faces((570, 100, 650, 180)), SHAPE, LIMITS) == 0  # 12% outside is fine


def test_select_face_rejects_mismatched_arrays():
    boxes, _, keypoints = faces((10, 10, 100, 100))
    with pytest.raises(ValueError, match="scores"):
        select_face(boxes, np.zeros(2), keypoints, SHAPE, LIMITS)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        select_face(np.zeros((1, 3)), np.zeros(1), None, SHAPE, LIMITS)


@pytest.mark.parametrize(
    "yaw, pitch, code, words",
    [
        (52.4, 0.0, "face_in_profile",
         "the face is turned 52° to the side (limit 35°): use a front-facing photo"),
        (-70.0, 5.0, "face_in_profile", "turned 70°"),
        (35.4, 0.0, "face_in_profile", "turned 35.4° to the side (limit 35°)"),
        (10.0, -41.0, "face_tilted", "tilted 41° up or down (limit 30°)"),
        (math.nan, 0.0, "face_pose_unknown", "could not be measured"),
    ],
)
def test_pose_refusals(yaw, pitch, code, words):
    with pytest.raises(InputError) as info:
        check_pose(yaw, pitch, LIMITS)
    assert info.value.code == code and words in str(info.value)


def test_pose_judges_the_larger_of_two_yaw_estimates():
    # The profile sample's numbers: 68-point PnP yaw 32°, 5-keypoint yaw 39°.
    with pytest.raises(InputError, match="turned 39°") as info:
        check_pose(32.1, -12.8, LIMITS, keypoint_yaw=39.0)
    assert info.value.code == "face_in_profile"
    assert check_pose(10.0, 0.0, LIMITS, keypoint_yaw=math.nan) is None
    assert check_pose(-20.0, 0.0, LIMITS, keypoint_yaw=5.0) is None


def test_pose_within_limits_passes():
    assert check_pose(-34.9, 29.0, LIMITS) is None
    assert check_pose(50.0, 0.0, ValidationLimits(max_yaw_deg=60)) is None


# ---------------------------------------------------------------------------------------------- audio
GOOD_REPORT = {
    "duration_s": 5.98, "clipped_fraction": 0.0, "active_fraction": 0.79, "loudness_lufs_in": -20.8
}


@pytest.mark.parametrize(
    "change, code, words",
    [
        ({"duration_s": 0.4}, "audio_too_short", ["0.4 s", "minimum 1 s", "record at least"]),
        ({"duration_s": 412.0}, "audio_too_long", ["412.0 s", "maximum 300 s", "trim"]),
        ({"loudness_lufs_in": -72.3}, "audio_silent", ["-72.3 LUFS", "-60 LUFS", "microphone"]),
        ({"loudness_lufs_in": None}, "audio_silent", ["digital silence"]),
        ({"active_fraction": 0.02}, "audio_silent", ["only 2%", "minimum 5%"]),
        ({"clipped_fraction": 0.032}, "audio_clipped", ["3.2%", "limit 1.0%", "lower"]),
    ],
)
def test_audio_refusals(change, code, words):
    with pytest.raises(InputError) as info:
        check_audio({**GOOD_REPORT, **change}, LIMITS)
    assert info.value.code == code
    for word in words:
        assert word in str(info.value)


def test_good_audio_passes_and_limits_are_configurable():
    assert check_audio(GOOD_REPORT, LIMITS) is None
    assert check_audio({**GOOD_REPORT, "duration_s": 400.0}, ValidationLimits(max_audio_s=600)) is None
    with pytest.raises(KeyError, match="loudness_lufs_in"):
        check_audio({k: v for k, v in GOOD_REPORT.items() if k != "loudness_lufs_in"}, LIMITS)


def test_audio_upload_size():
    with pytest.raises(InputError) as info:
        check_audio_upload(b"", LIMITS)
    assert info.value.code == "audio_empty"
    with pytest.raises(InputError) as info:
        check_audio_upload(b"\0" * 2000, ValidationLimits(max_audio_bytes=1000))
    assert info.value.code == "audio_too_large"
    assert check_audio_upload(b"RIFF" + b"\0" * 100, LIMITS) is None


# ---------------------------------------------------------------------------------------------- video
COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230), (230, 30, 230)]


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], input=stdin, check=True)


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory) -> bytes:
    """A 64x48, 10 fps MP4 of 12 solid-colour frames: frame i shows COLOURS[i % 6]."""
    frames = np.stack([np.full((48, 64, 3), COLOURS[i % 6], np.uint8) for i in range(12)])
    path = tmp_path_factory.mktemp("video") / "colours.mp4"
    ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-r", "10", "-i", "pipe:0",
           "-c:v", "libx264", "-preset", "ultrafast", "-crf", "5", "-pix_fmt", "yuv420p", str(path),
           stdin=frames.tobytes())
    return path.read_bytes()


def test_probe_tiny_mp4(colour_video):
    info = probe_video(colour_video, LIMITS)
    assert info == VideoInfo(width=64, height=48, fps=10.0, frame_count=12, duration_s=1.2, codec="h264")


def test_read_frames_gives_the_encoded_frames(colour_video):
    frames = read_frames(colour_video, every_n=1, max_frames=None, limits=LIMITS)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
    means = frames.reshape(12, -1, 3).mean(axis=1)
    for i, mean in enumerate(means):
        assert np.abs(mean - COLOURS[i % 6]).max() < 12, (i, mean)
    picked = read_frames(colour_video, every_n=4, max_frames=2, limits=LIMITS)
    assert picked.shape == (2, 48, 64, 3)
    assert np.abs(picked[1].reshape(-1, 3).mean(0) - COLOURS[4]).max() < 12  # frame 4
    assert read_frames(colour_video, max_side=32, limits=LIMITS).shape == (12, 24, 32, 3)


def test_rotated_video_is_reported_and_read_upright(colour_video, tmp_path):
    source, rotated = tmp_path / "in.mp4", tmp_path / "rotated.mp4"
    source.write_bytes(colour_video)
    ffmpeg("-display_rotation", "90", "-i", str(source), "-c", "copy", str(rotated))
    info = probe_video(rotated.read_bytes(), LIMITS)
    assert (info.width, info.height, info.rotation_deg) == (48, 64, 90)
    assert read_frames(rotated.read_bytes(), max_frames=3, limits=LIMITS).shape == (3, 64, 48, 3)


def test_video_without_a_picture(tmp_path):
    path = tmp_path / "speech.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(path))
    with pytest.raises(InputError, match="no video stream") as info:
        probe_video(path.read_bytes(), LIMITS)
    assert info.value.code == "video_unreadable"


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01garbage" * 300,
        b"#EXTM3U\n#EXTINF:1,\nfile:///etc/hostname\n",
        b"ffconcat version 1.0\nfile /etc/hostname\n",
    ],
    ids=["garbage", "hls-playlist", "concat-script"],
)
def test_unreadable_video(data):
    for call in (lambda: probe_video(data, LIMITS), lambda: read_frames(data, limits=LIMITS)):
        with pytest.raises(InputError) as info:
            call()
        assert info.value.code == "video_unreadable"
        assert str(info.value).startswith("the driving video could not be read")
        assert "upload an MP4, MOV or WebM" in str(info.value)


def test_video_limits(colour_video):
    cases = [
        (ValidationLimits(max_video_s=1.0), "video_too_long", "1.2 s"),
        (ValidationLimits(max_video_pixels=1000), "video_too_many_pixels", "64x48"),
        (ValidationLimits(max_video_bytes=100), "video_too_large", "MB"),
        (ValidationLimits(max_decoded_video_bytes=20_000), "video_too_large", "12 frames of 64x48"),
    ]
    for limits, code, words in cases:
        with pytest.raises(InputError) as info:
            read_frames(colour_video, limits=limits)
        assert info.value.code == code and words in str(info.value), str(info.value)
    with pytest.raises(InputError) as info:
        probe_video(b"", LIMITS)
    assert info.value.code == "video_empty"


def test_ffmpeg_timeout_is_an_input_error(colour_video):
    with pytest.raises(InputError) as info:
        probe_video(colour_video, ValidationLimits(ffmpeg_timeout_s=0.001))
    assert info.value.code == "video_timeout"
