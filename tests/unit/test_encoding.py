"""Streaming encoder: codecs, exact audio length, colour, interleaving, clean failure (checked by other decoders)."""

from __future__ import annotations

import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest
from audio_files import wav_bytes

from client.delivery import encoder_resize
from client.disclosure import LabelPlanes, _label_patch
from client.encoding import (
    EncodeError,
    EncodeOptions,
    StreamingEncoder,
    audio_samples_for,
    decode_audio,
    encoder_frame,
)
from client.probe import probe
from client.triton_client import RequestRejected


def _wav(seconds: float, rate: int = 16000, amplitude: float = 0.5) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return wav_bytes(amplitude * np.sin(2 * np.pi * 440 * t), rate)


def _ffmpeg_audio(path) -> np.ndarray:
    """Decode the audio with the ffmpeg binary (its own decoder, edit lists applied) to 48 kHz float."""
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a", "-f", "f32le",
                          "-ac", "1", "pipe:1"], capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(raw, "<f4")


def _decoded(path, count: int, width: int, height: int) -> np.ndarray:
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(count, height, width, 3)


def _encode(path, frames_per_chunk, chunks, fps, audio=None, codec="h264", size=(63, 81), seed=0):
    rng = np.random.default_rng(seed)
    encoder = StreamingEncoder(path, fps, audio=audio, options=EncodeOptions(codec=codec),
                               metadata={"comment": "AI-generated test clip"})
    for _ in range(chunks):
        encoder.write(rng.integers(0, 256, (frames_per_chunk, *size, 3), dtype=np.uint8))
    return encoder.close()


@pytest.mark.parametrize("codec, name, tag", [("h264", "h264", "avc1"), ("h265", "hevc", "hvc1")])
def test_both_codecs_stream_chunks_into_an_mp4_whose_audio_lasts_exactly_as_long_as_the_video(
        tmp_path, codec, name, tag):
    # 5 chunks of 7 frames at 25 fps = 1.4 s of video; 1.234 s of speech: the tail must be padded, not dropped.
    result = _encode(tmp_path / "clip.mp4", 7, 5, 25, audio=_wav(1.234), codec=codec)
    info = probe(result.path)
    assert (info.video_codec, info.video_tag, info.pix_fmt, info.audio_codec) == (name, tag, "yuv420p", "aac")
    assert (info.width, info.height) == (82, 64)  # odd sides padded to even for yuv420p
    assert info.fps == 25.0 and info.frames == result.frames == 35
    assert info.audio_samples == result.audio_samples == 35 * 48000 // 25
    assert info.audio_duration_s == pytest.approx(1.4, abs=1e-9) == info.video_duration_s
    assert info.metadata["comment"] == "AI-generated test clip"
    assert 0 < result.time_to_first_frame_s <= result.time_to_first_packet_s <= result.encode_s
    # ffmpeg's own decoder plays exactly that many samples; the speech is there and the padding is silent.
    played = _ffmpeg_audio(result.path)
    assert len(played) == 67200
    assert np.sqrt(np.mean(played[2400:48000] ** 2)) > 0.2
    assert np.abs(played[int(1.25 * 48000):]).max() < 0.02


def test_ntsc_rate_and_audio_longer_than_the_video_are_cut_to_the_sample(tmp_path):
    result = _encode(tmp_path / "ntsc.mp4", 10, 3, 29.97, audio=_wav(3.0))
    expected = audio_samples_for(30, 29.97)
    assert expected == round(30 * 1001 / 30000 * 48000) == 48048
    assert result.audio_samples == probe(result.path).audio_samples == len(_ffmpeg_audio(result.path)) == expected


def test_colour_survives_the_round_trip_because_the_stream_is_converted_and_tagged_bt709(tmp_path):
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    frames[...] = (200, 60, 30)
    encoder = StreamingEncoder(tmp_path / "flat.mp4", 25)
    encoder.write(frames)
    encoder.close()
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(tmp_path / "flat.mp4"), "-f",
                          "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    decoded = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(int)
    assert np.abs(decoded - (200, 60, 30)).max() <= 3  # read as BT.601 it would be off by ~13


def test_audio_is_interleaved_while_streaming_not_appended_at_the_end(tmp_path):
    result = _encode(tmp_path / "inter.mp4", 5, 8, 20, audio=_wav(2.0), size=(32, 32))
    with av.open(str(result.path)) as container:
        packets = [(p.stream.type, p.pos) for p in container.demux() if p.size]
    first_audio = min(pos for kind, pos in packets if kind == "audio")
    last_video = max(pos for kind, pos in packets if kind == "video")
    assert first_audio < last_video


def test_bad_settings_and_bad_streams_are_explained(tmp_path):
    with pytest.raises(EncodeError, match="choose one of h264, h265"):
        EncodeOptions(codec="vp9")
    with pytest.raises(EncodeError, match="crf 60"):
        EncodeOptions(crf=60)
    with pytest.raises(EncodeError, match="preset"):
        EncodeOptions(preset="warp")
    with pytest.raises(EncodeError, match="cannot read the audio"):
        decode_audio(b"definitely not audio")
    encoder = StreamingEncoder(tmp_path / "x.mp4", 25)
    with pytest.raises(EncodeError, match="no frames"):
        encoder.close()
    encoder.write(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="frame size changed"):
        encoder.write(np.zeros((2, 18, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        encoder.write(np.zeros((2, 16, 16, 3), np.float32))
    encoder.abort()
    assert list(tmp_path.iterdir()) == []  # no partial MP4 left behind


def _planes(frame) -> list[np.ndarray]:
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width].copy() for p in frame.planes]


def test_the_visible_label_is_drawn_after_the_conversion_as_the_rgb_label_would_convert():
    """The label is blended into the yuv420p planes; that equals burning it into the RGB frame and converting, up
    to rounding, and it touches only the bottom-right corner."""
    frames = np.empty((360, 640, 3), np.uint8)
    frames[...] = (200, 60, 30)  # a colour, so the chroma planes are checked too
    label = LabelPlanes(360, 640)
    drawn = encoder_frame(frames)
    before = _planes(drawn)
    label.blend(drawn)
    after = _planes(drawn)
    changed = np.argwhere(after[0] != before[0])
    assert len(changed) > 500
    assert changed[:, 0].min() >= label.y0 > 360 * 0.8 and changed[:, 1].min() >= label.x0 > 640 * 0.6
    # the reference: the label's RGB patch burned at the same place, then converted by the encoder
    rgb, alpha, _, _ = _label_patch(360, 640, "AI-generated")
    burned = frames.astype(np.float32)
    y, x = label.y0, label.x0
    window = burned[y:y + rgb.shape[0], x:x + rgb.shape[1]]
    window[...] = window * (1 - alpha) + rgb * alpha
    reference = _planes(encoder_frame(np.rint(burned).astype(np.uint8)))
    assert np.abs(after[0].astype(int) - reference[0]).max() <= 2
    for plane, expected in zip(after[1:], reference[1:], strict=True):
        error = np.abs(plane.astype(int) - expected)
        # chroma: the same but at the text's edges, where swscale filters over more than a 2x2 block (6 measured)
        assert np.percentile(error, 99) == 0 and error.max() <= 8


def test_the_encoder_scales_to_the_output_size_in_its_colour_conversion(tmp_path):
    frames = np.empty((3, 97, 161, 3), np.uint8)  # odd sides: scaled, not padded
    frames[...] = (200, 60, 30)
    encoder = StreamingEncoder(tmp_path / "hd.mp4", 25, options=EncodeOptions(size=(320, 180)), label="AI-generated")
    encoder.write(frames)
    assert encoder.frame_size == (97, 161)
    result = encoder.close()
    assert (result.width, result.height, result.scaled_from) == (320, 180, (161, 97))
    info = probe(result.path)
    assert (info.width, info.height, info.frames) == (320, 180, 3)
    decoded = _decoded(result.path, 3, 320, 180).astype(int)
    assert np.abs(decoded[:, :120, :160] - (200, 60, 30)).max() <= 3  # away from the label
    with pytest.raises(EncodeError, match="even"):
        EncodeOptions(size=(321, 180))


def test_frames_prepared_on_several_threads_encode_exactly_as_those_prepared_inline(tmp_path):
    # Scaled, labelled and watermarked on a pool while the encoder takes the frames before: order and pixels kept.
    rng = np.random.default_rng(3)
    chunks = [rng.integers(0, 256, (n, 90, 158, 3), dtype=np.uint8) for n in (5, 1, 7)]
    decoded = []
    for threads in (1, 3):
        encoder = StreamingEncoder(tmp_path / f"t{threads}.mp4", 25, label="AI-generated", watermark=b"8 bytes!",
                                   options=EncodeOptions(size=(320, 180), prepare_threads=threads))
        for chunk in chunks:
            encoder.write(chunk)
        assert (encoder._preparers is not None) == (threads > 1)
        result = encoder.close()
        assert encoder._preparers is None and result.frames == 13
        decoded.append(_decoded(result.path, 13, 320, 180))
    np.testing.assert_array_equal(decoded[0], decoded[1])
    assert len({frame.tobytes() for frame in decoded[1]}) == 13  # every frame its own, none repeated or dropped
    assert EncodeOptions(prepare_threads=0).effective_prepare_threads >= 1
    with pytest.raises(EncodeError, match="prepare_threads"):
        EncodeOptions(prepare_threads=-1)


def test_frame_threads_encode_every_frame_as_slice_threads_do(tmp_path):
    rng = np.random.default_rng(5)
    frames = np.repeat(rng.integers(0, 256, (1, 64, 96, 3), dtype=np.uint8), 20, axis=0)
    frames[:, 16:48, :] = np.arange(20, dtype=np.uint8)[:, None, None, None] * 10  # a band that changes every frame
    decoded = []
    for thread_type in ("slice", "frame"):
        encoder = StreamingEncoder(tmp_path / f"{thread_type}.mp4", 25,
                                   options=EncodeOptions(thread_type=thread_type, crf=0))
        encoder.write(frames)
        assert encoder.close().frames == 20
        decoded.append(_decoded(tmp_path / f"{thread_type}.mp4", 20, 96, 64).astype(int))
    for video in decoded:  # lossless up to the RGB <-> yuv420p conversion, frames in order
        assert np.abs(video[:, 20:44, 8:88] - frames[:, 20:44, 8:88]).max() <= 3
    with pytest.raises(EncodeError, match="thread_type"):
        EncodeOptions(thread_type="auto")


def test_a_jobs_output_size_moves_from_the_server_to_the_encoder():
    parameters = {"fps": 10, "output_width": 1920, "output_height": 1080}
    sent, encode = encoder_resize(parameters, EncodeOptions(preset="fast"))
    assert sent == {"fps": 10} and encode == EncodeOptions(preset="fast", size=(1920, 1080))
    assert parameters["output_width"] == 1920  # the job's own parameters keep the size
    assert encoder_resize({"fps": 10}, EncodeOptions()) == ({"fps": 10}, EncodeOptions())
    with pytest.raises(RequestRejected, match="give both output_width and output_height") as caught:
        encoder_resize({"output_width": 1920}, EncodeOptions())
    assert caught.value.code == "bad_parameter"


def test_the_first_writers_interface_still_works(tmp_path):
    from client.mp4_writer import StreamingMp4Writer

    writer = StreamingMp4Writer(tmp_path / "old.mp4", 10, metadata={"comment": "x"})
    writer.write(np.zeros((5, 16, 16, 3), np.uint8))
    assert writer.close() == tmp_path / "old.mp4" and probe(tmp_path / "old.mp4").frames == 5
