"""The preview engine animates the sample photo: the mouth follows the speech, eyes blink, chunks stream."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from python_backends.errors import InputError
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.preview import PreviewEngine, mouth_track


@pytest.fixture(scope="module")
def face(sample_face):
    return sample_face


@pytest.fixture(scope="module")
def speech(samples) -> np.ndarray:
    with wave.open(str(samples / "speech.wav")) as handle:
        return np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32) / 32768


@pytest.fixture(scope="module")
def clip(face, speech):
    image, points, _ = face
    job = GenerationJob(image, GenerationParams(fps=15, chunk_frames=16, seed=3), landmarks=points, waveform=speech)
    chunks = list(PreviewEngine().generate(job))
    return chunks, np.concatenate([c.frames for c in chunks])


def test_chunks_stream_in_order_and_cover_the_audio(clip, speech):
    chunks, frames = clip
    assert len(chunks) > 1
    assert [c.start_frame for c in chunks] == list(range(0, len(frames), 16))
    assert len(frames) == int(np.ceil(len(speech) / 16000 * 15))
    assert frames.dtype == np.uint8 and frames.shape[1:] == (512, 512, 3)


def test_mouth_opening_follows_audio_energy(face, clip, speech):
    _, _, landmarks = face
    _, frames = clip
    # Measured independently: dlib's landmarks on the rendered frames, inner-lip gap (points 62-66).
    opening = np.array([np.linalg.norm(p[66] - p[62]) for p in map(landmarks, frames)])
    energy = mouth_track(speech, 15, len(frames)).energy_db
    correlation = np.corrcoef(opening, energy)[0, 1]
    assert correlation > 0.6, f"mouth opening vs energy correlation {correlation:.2f}"
    assert opening.max() - opening.min() > 8.0  # pixels: visibly moving, not jitter


def test_eyes_blink(face, clip):
    _, _, landmarks = face

    def eye_aspect(p: np.ndarray) -> float:
        lids = np.linalg.norm(p[37] - p[41]) + np.linalg.norm(p[38] - p[40])
        return float(lids / (2 * np.linalg.norm(p[36] - p[39])))

    ratios = np.array([eye_aspect(p) for p in map(landmarks, clip[1])])
    assert ratios.min() < 0.6 * np.median(ratios), f"no frame with the eyes closing: {np.round(ratios, 2)}"


def test_background_stays_still_and_seed_is_deterministic(face, speech, clip):
    image, points, _ = face
    frames = clip[1]
    assert np.array_equal(frames[:, :40, :40], np.broadcast_to(image[:40, :40], frames[:, :40, :40].shape))
    params = GenerationParams(fps=15, chunk_frames=16, seed=3)
    again = next(PreviewEngine().generate(GenerationJob(image, params, landmarks=points, waveform=speech)))
    assert np.array_equal(again.frames, frames[:16])


def test_output_size_crops_around_the_face(face, speech):
    image, points, _ = face
    params = GenerationParams(fps=10, width=320, height=180)
    chunk = next(PreviewEngine().generate(GenerationJob(image, params, landmarks=points, waveform=speech)))
    assert chunk.frames.shape[1:] == (180, 320, 3)


def test_rejects_unusable_inputs(face):
    image, points, _ = face
    with pytest.raises(InputError, match="68 landmarks"):
        next(PreviewEngine().generate(GenerationJob(image, landmarks=points[:5], waveform=np.zeros(16000, np.float32))))
    with pytest.raises(InputError, match="shorter than 0.1 s"):
        next(PreviewEngine().generate(GenerationJob(image, landmarks=points, waveform=np.zeros(100, np.float32))))
