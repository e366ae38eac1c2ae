"""The corpus of bad and unusual uploads (corpus.py) through the real server: `preprocess` for every case, the
streaming `talking_head` job for a sample of them. Each bad input gets its code and a message that says what to
do, the unusual-but-usable ones are accepted, nothing hangs, and the server stays healthy after every case."""

from __future__ import annotations

import pytest

from client.triton_client import Endpoint, TalkingHeadClient

from .conftest import ANSWER_BOUND_S, assert_clear, assert_healthy, outcome_of
from .corpus import ACCEPTED, ALL_CASES, AUDIO_CASES, PHOTO_CASES, Case, case_id, photo_png, speech_wav

pytestmark = pytest.mark.integration

# Checks on the report of accepted cases: what makes them usable was really done.
_REPORT_CHECKS = {
    "audio-wav_8kHz": lambda r: r["audio"]["input_sample_rate_hz"] == 8000,
    "audio-wav_48kHz": lambda r: r["audio"]["input_sample_rate_hz"] == 48000,
    "audio-wav_11025Hz": lambda r: r["audio"]["input_sample_rate_hz"] == 11025,
    "audio-wav_44k1_stereo": lambda r: r["audio"]["input_sample_rate_hz"] == 44100,
    "audio-wav_header_claims_hours": lambda r: abs(r["audio"]["duration_s"] - 5.98) < 0.05,
    "photo-many_faces_3x3": lambda r: len(r["faces"]) >= 2,
    "photo-jpeg_exif_rotated": lambda r: (r["photo"]["width"], r["photo"]["height"]) == (512, 512),
}


def _inputs(case: Case) -> tuple[bytes, bytes]:
    return (case.data if case.kind == "photo" else photo_png()), (case.data if case.kind == "audio" else speech_wav())


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_corpus_through_preprocess(case: Case, session_client, triton_server, ledger):
    photo, audio = _inputs(case)
    reports = []
    outcome, message, seconds = outcome_of(lambda: reports.append(session_client.preprocess(photo, audio)))
    ledger.record("bad_input", case_id(case), case.expect, outcome, seconds, hung=seconds > ANSWER_BOUND_S,
                  model="preprocess", why=case.why, bytes=len(case.data))
    assert outcome == case.expect, f"{case.why}: got {outcome} ({message})"
    assert seconds < ANSWER_BOUND_S
    if outcome == ACCEPTED:
        check = _REPORT_CHECKS.get(case_id(case))
        assert check is None or check(reports[0]), reports[0]
    else:
        assert_clear(message)
    assert_healthy(triton_server)


# A sample that covers each kind of refusal, sent as the streaming job a client really runs.
_THROUGH_GENERATE = ("photo-empty", "photo-png_header_100k_x_100k", "photo-wav_as_photo", "photo-png_truncated_half",
                     "photo-profile", "photo-face_cut_off", "audio-silent_3s", "audio-flac_1h_silence",
                     "audio-png_as_audio", "audio-clipped")
_SMALL = {"fps": 5, "width": 128, "height": 128, "chunk_frames": 8, "max_duration_s": 2.0}


@pytest.mark.parametrize("case", [c for c in ALL_CASES if case_id(c) in _THROUGH_GENERATE], ids=case_id)
def test_refusals_through_talking_head(case: Case, grpc_client, triton_server, ledger):
    photo, audio = _inputs(case)
    outcome, message, seconds = outcome_of(
        lambda: list(grpc_client.generate(photo, audio, parameters=_SMALL, deadline_s=ANSWER_BOUND_S * 2)))
    ledger.record("bad_input", case_id(case), case.expect, outcome, seconds, hung=seconds > ANSWER_BOUND_S,
                  model="talking_head", why=case.why, bytes=len(case.data))
    assert outcome == case.expect, message
    assert_clear(message)
    assert seconds < ANSWER_BOUND_S
    assert_healthy(triton_server)


def test_unusual_inputs_generate_a_video(grpc_client, ledger):
    """A CMYK JPEG with 8 kHz speech: accepted, resampled, and animated end to end."""
    photo = next(c for c in PHOTO_CASES if c.name == "cmyk_jpeg").data
    audio = next(c for c in AUDIO_CASES if c.name == "wav_8kHz").data
    chunks = []
    outcome, message, seconds = outcome_of(lambda: chunks.extend(grpc_client.generate(
        photo, audio, parameters=_SMALL, deadline_s=300)))
    ledger.record("bad_input", "generate-cmyk_jpeg+wav_8kHz", ACCEPTED, outcome, seconds, model="talking_head",
                  why="unusual but usable inputs, generated end to end")
    assert outcome == ACCEPTED, message
    *frames, last = chunks
    assert last.qa_report is not None
    assert frames[0].info["job_report"]["audio"]["input_sample_rate_hz"] == 8000
    assert sum(len(c.frames) for c in frames) == 10  # max_duration_s 2 at 5 fps
    assert frames[0].frames.shape[1:] == (128, 128, 3)


@pytest.mark.parametrize("name", ["photo-png_header_100k_x_100k", "photo-jpeg_truncated", "audio-wav_8kHz"])
def test_http_protocol_answers_the_same(name, triton_server, ledger):
    case = next(c for c in ALL_CASES if case_id(c) == name)
    photo, audio = _inputs(case)
    with TalkingHeadClient(Endpoint(triton_server.http_url, "http"), timeout_s=ANSWER_BOUND_S * 2) as client:
        outcome, message, seconds = outcome_of(lambda: client.preprocess(photo, audio))
    ledger.record("bad_input", f"http-{name}", case.expect, outcome, seconds, model="preprocess", why=case.why)
    assert outcome == case.expect, message
