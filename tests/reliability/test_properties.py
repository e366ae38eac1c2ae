"""Property-based tests (hypothesis): whatever the bytes, sizes, modes or parameter values, the answer is a result
or a clear refusal, in time, and never an internal error.

In-process properties (decoders, parameter checks) run hundreds of examples; the ones through the server run a
few dozen, derandomized so CI sees the same examples every run.
"""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from python_backends.audio.decode import decode_audio
from python_backends.errors import InputError
from python_backends.generation import job as generation_job
from python_backends.quality.upscale import parse_output_size
from python_backends.validation import ValidationLimits, decode_image

from .conftest import ANSWER_BOUND_S, assert_clear, assert_healthy, outcome_of
from .corpus import photo_png, speech_wav, wav_bytes

PHOTO_CODES = {"photo_empty", "photo_unreadable", "photo_too_large", "photo_too_many_pixels", "photo_too_small",
               "no_face", "face_too_small", "face_cut_off", "face_in_profile", "face_tilted", "multiple_faces"}
AUDIO_CODES = {"audio_empty", "audio_undecodable", "audio_too_short", "audio_too_long", "audio_silent",
               "audio_clipped", "audio_too_large", "audio_decode_timeout"}

OFFLINE = settings(max_examples=200, deadline=None, derandomize=True, database=None)
SERVER = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """A valid file with some bytes flipped, cut short, or with a chunk of it repeated."""
    def flip(args: tuple[list[int], int]) -> bytes:
        positions, value = args
        out = bytearray(data)
        for position in positions:
            out[position % len(out)] ^= value or 1
        return bytes(out)

    flips = st.tuples(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=16), st.integers(1, 255)).map(flip)
    cuts = st.integers(0, len(data) - 1).map(lambda n: data[:n])
    repeats = st.tuples(st.integers(0, len(data) - 1), st.integers(1, 4096)).map(
        lambda a: data[: a[0]] + data[a[0]: a[0] + a[1]] * 3 + data[a[0]:])
    return st.one_of(flips, cuts, repeats)


# -- in-process ------------------------------------------------------------------------------------------------
_SMALL_JPEG = None


def _small_jpeg() -> bytes:
    global _SMALL_JPEG
    if _SMALL_JPEG is None:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(photo_png())).convert("RGB").resize((160, 160)).save(buffer, "JPEG", quality=80)
        _SMALL_JPEG = buffer.getvalue()
    return _SMALL_JPEG


def test_photo_decoder_gives_pixels_or_a_clear_refusal(ledger):
    counts = {"accepted": 0, "refused": 0}

    @OFFLINE
    @given(st.one_of(_mutations(_small_jpeg()), st.binary(max_size=2048)))
    def check(data):
        started = time.monotonic()
        try:
            array = decode_image(data, ValidationLimits())
            assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
            counts["accepted"] += 1
        except InputError as exc:
            assert exc.code.startswith("photo_"), str(exc)
            assert_clear(str(exc))
            counts["refused"] += 1
        assert time.monotonic() - started < 5.0

    started = time.monotonic()
    check()
    ledger.record("property_in_process", "decode_image(mutated JPEG | random bytes)", "pixels_or_refusal",
                  "pixels_or_refusal", time.monotonic() - started, examples=sum(counts.values()), **counts)


_SHORT_WAV = None


def _short_wav() -> bytes:
    global _SHORT_WAV
    if _SHORT_WAV is None:
        _SHORT_WAV = wav_bytes(np.sin(np.linspace(0, 2000, 8000)).astype(np.float32) * 0.3)
    return _SHORT_WAV


def test_audio_decoder_gives_samples_or_a_clear_refusal(ledger):
    counts = {"accepted": 0, "refused": 0}

    @settings(OFFLINE, max_examples=40)
    @given(st.one_of(_mutations(_short_wav()), st.binary(max_size=1024)))
    def check(data):
        try:
            decoded = decode_audio(data, max_duration_s=10.0, timeout_s=10.0)
            assert decoded.samples.dtype == np.float32 and np.isfinite(decoded.samples).all()
            counts["accepted"] += 1
        except InputError as exc:
            assert exc.code.startswith("audio_"), str(exc)
            assert_clear(str(exc))
            counts["refused"] += 1

    started = time.monotonic()
    check()
    ledger.record("property_in_process", "decode_audio(mutated WAV | random bytes)", "samples_or_refusal",
                  "samples_or_refusal", time.monotonic() - started, examples=sum(counts.values()), **counts)


_KEYS = ("seed", "steps", "guidance", "width", "height", "fps", "max_duration_s", "chunk_frames", "prompt",
         "engine", "output_width", "output_height", "start_frame", "frame_count", "colour")
_VALUES = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.booleans(), st.sampled_from([0, 1, 16, 64, 128, 2048, 4096, 2**31]))
_PARAMETERS = st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=5)


def _parameters_refused(parameters: dict) -> bool:
    """What talking_head does with request parameters before any work (pipeline.run_talking_head)."""
    try:
        rest, _ = parse_output_size(parameters)
        params = generation_job.params_from_request(rest)
    except InputError:
        return True
    return bool(params.start_frame or params.frame_count)


def test_accepted_generation_parameters_are_within_bounds(ledger):
    counts = {"accepted": 0, "refused": 0}

    @settings(OFFLINE, max_examples=400)
    @given(_PARAMETERS)
    def check(parameters):
        try:
            params = generation_job.params_from_request(parameters)
        except InputError as exc:
            assert exc.code == "bad_parameter" and str(exc)
            counts["refused"] += 1
            return
        counts["accepted"] += 1
        np.random.default_rng(params.seed + 2 * 7_919)  # the engines' generators take the seed and its re-rolls
        assert 0 <= params.seed <= generation_job.MAX_SEED and 1 <= params.fps <= 60
        assert params.width * params.height <= generation_job.MAX_SIDE ** 2
        assert params.chunk_frames * params.width * params.height * 3 <= generation_job.MAX_CHUNK_BYTES
        assert 0 < params.max_duration_s <= generation_job.MAX_DURATION_S
        assert params.guidance is None or math.isfinite(params.guidance)
        assert len(params.prompt) <= generation_job.MAX_PROMPT_CHARS

    started = time.monotonic()
    check()
    ledger.record("property_in_process", "params_from_request(random parameters)", "bounded_or_refused",
                  "bounded_or_refused", time.monotonic() - started, examples=sum(counts.values()), **counts)


# -- through the server ----------------------------------------------------------------------------------------
def _record(ledger, name: str, expected: set[str], outcome: str, seconds: float) -> None:
    ledger.record("property", name, outcome if outcome in expected else "/".join(sorted(expected)), outcome,
                  seconds, hung=seconds > ANSWER_BOUND_S)


@pytest.mark.integration
def test_random_bytes_as_photo_or_audio(session_client, triton_server, ledger):
    @settings(SERVER, max_examples=12)
    @given(st.binary(max_size=4096), st.booleans())
    def check(data, as_photo):
        photo, audio = (data, speech_wav()) if as_photo else (photo_png(), data)
        outcome, message, seconds = outcome_of(lambda: session_client.preprocess(photo, audio))
        expected = PHOTO_CODES if as_photo else AUDIO_CODES
        _record(ledger, f"random-bytes-as-{'photo' if as_photo else 'audio'}", expected, outcome, seconds)
        assert outcome in expected, message
        assert_clear(message)
        assert seconds < ANSWER_BOUND_S

    check()
    assert_healthy(triton_server)


@pytest.mark.integration
def test_mutated_photos(session_client, triton_server, ledger):
    @settings(SERVER, max_examples=10)
    @given(_mutations(_small_jpeg()))
    def check(data):
        outcome, message, seconds = outcome_of(lambda: session_client.preprocess(data, speech_wav()))
        _record(ledger, "mutated-jpeg", PHOTO_CODES | {"accepted"}, outcome, seconds)
        assert outcome in PHOTO_CODES | {"accepted"}, message
        assert seconds < ANSWER_BOUND_S

    check()
    assert_healthy(triton_server)


_MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "LA")
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def _render(size: tuple[int, int], mode: str, fmt: str) -> bytes | None:
    """The sample face stretched to `size`, in `mode`, saved as `fmt`; None where the format cannot hold the mode."""
    image = Image.open(io.BytesIO(photo_png())).convert("RGB").resize(size)
    image = image.convert("L").point(lambda v: v * 257).convert("I;16") if mode == "I;16" else image.convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt)
    except (OSError, ValueError, KeyError):
        return None
    return buffer.getvalue()


@pytest.mark.integration
def test_random_photo_sizes_and_modes(session_client, triton_server, ledger):
    @settings(SERVER, max_examples=12)
    @given(st.integers(1, 2400), st.integers(1, 2400), st.sampled_from(_MODES), st.sampled_from(_FORMATS))
    def check(width, height, mode, fmt):
        data = _render((width, height), mode, fmt)
        if data is None:
            return
        outcome, message, seconds = outcome_of(lambda: session_client.preprocess(data, speech_wav()))
        _record(ledger, f"photo-{width}x{height}-{mode}-{fmt}", PHOTO_CODES | {"accepted"}, outcome, seconds)
        assert outcome in PHOTO_CODES | {"accepted"}, message
        if min(width, height) < 128:
            assert outcome == "photo_too_small", message
        assert seconds < ANSWER_BOUND_S

    check()
    assert_healthy(triton_server)


@pytest.mark.integration
def test_random_talking_head_parameters(grpc_client, triton_server, ledger):
    """Parameters are checked before any work: an empty photo tells whether they passed (photo_empty) or not."""
    @settings(SERVER, max_examples=25)
    @given(_PARAMETERS)
    def check(parameters):
        outcome, message, seconds = outcome_of(
            lambda: list(grpc_client.generate(b"", speech_wav(), parameters=parameters, deadline_s=60)))
        expected = "bad_parameter" if _parameters_refused(parameters) else "photo_empty"
        ledger.record("property", "talking_head-parameters", expected, outcome, seconds, parameters=repr(parameters))
        assert outcome == expected, f"{parameters}: {message}"
        assert_clear(message)
        assert seconds < ANSWER_BOUND_S

    check()
    assert_healthy(triton_server)
