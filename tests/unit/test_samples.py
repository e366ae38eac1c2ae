"""The bundled sample media: present, documented, decodable, and what they claim to be."""

from __future__ import annotations

import hashlib
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from python_backends.validation import ValidationLimits, decode_image

SAMPLES = Path(__file__).resolve().parents[2] / "client" / "samples"
PHOTOS = {  # name -> (width, height, Pillow mode)
    "astronaut.png": (512, 512, "RGB"),
    "profile.png": (1024, 1024, "L"),
    "no_face.png": (600, 400, "RGB"),
}
LIMITS = ValidationLimits()


def _licences() -> str:
    return (SAMPLES / "LICENSES.md").read_text(encoding="utf-8")


def _speech() -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(SAMPLES / "speech.wav"), "rb") as reader:
        params = reader.getparams()
        samples = np.frombuffer(reader.readframes(params.nframes), dtype="<i2")
    return params, samples.astype(np.float64) / 32768.0


@pytest.mark.parametrize("name", [*PHOTOS, "speech.wav"])
def test_each_sample_is_small_and_recorded_with_its_hash(name):
    path = SAMPLES / name
    assert path.is_file(), f"missing sample {path}"
    assert path.stat().st_size < 1_000_000  # the repository stays light
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    rows = [line for line in _licences().splitlines() if line.startswith(f"| {name} |")]
    assert rows, f"{name} has no row in LICENSES.md"
    assert digest in rows[0], f"{name} changed: update its sha256 and its notes in LICENSES.md"


def test_licences_name_source_and_licence_of_each_file():
    text = _licences()
    for words in ("public domain", "CC0", "Eileen Collins", "Lav R. Varshney", "Rachel Michetti",
                  "eSpeak NG", "GPL"):
        assert words in text


@pytest.mark.parametrize("name", PHOTOS)
def test_photos_decode_to_their_size(name):
    width, height, mode = PHOTOS[name]
    with Image.open(SAMPLES / name) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (width, height), mode)
    array = decode_image((SAMPLES / name).read_bytes(), LIMITS)
    assert array.shape == (height, width, 3) and array.dtype == np.uint8
    assert array.std() > 20  # a real photo, not a flat placeholder
    if mode == "L":
        assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_speech_is_16khz_mono_16bit_and_five_seconds():
    params, samples = _speech()
    assert (params.framerate, params.nchannels, params.sampwidth) == (16000, 1, 2)
    duration = params.nframes / params.framerate
    assert 4.0 <= duration <= 6.5, duration


def test_speech_level_is_clean():
    _, samples = _speech()
    peak = np.abs(samples).max()
    rms_db = 20 * np.log10(np.sqrt(np.mean(samples**2)))
    assert 0.3 < peak < 0.99  # loud enough, never at full scale
    assert -30.0 < rms_db < -12.0, rms_db
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)  # 10 ms frames
    frame_db = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)
    active = np.mean(frame_db > -40.0)
    assert 0.5 < active < 0.98, active  # mostly speech, with the pauses between words


def test_what_a_frontal_face_detector_sees():
    dlib = pytest.importorskip("dlib")
    detector = dlib.get_frontal_face_detector()
    found = {}
    for name in PHOTOS:
        image = np.asarray(Image.open(SAMPLES / name).convert("RGB"))
        rects, scores, _ = detector.run(image, 1, 0.0)  # 1x upsampling, default threshold
        found[name] = sorted(zip(scores, rects), key=lambda item: -item[0])
    score, best = found["astronaut.png"][0]
    assert score > 0.5
    assert 170 < (best.left() + best.right()) / 2 < 270 and 70 < (best.top() + best.bottom()) / 2 < 170
    assert found["profile.png"] == []  # a side view is not a frontal face
    assert found["no_face.png"] == []


def test_profile_photo_is_a_side_view():
    cv2 = pytest.importorskip("cv2")
    gray = np.asarray(Image.open(SAMPLES / "profile.png"))
    frontal = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    profile = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_profileface.xml")
    assert len(frontal.detectMultiScale(gray, 1.1, 5, minSize=(80, 80))) == 0
    # OpenCV's profile cascade knows one side only; this man faces the other way, so mirror the photo.
    mirrored = np.ascontiguousarray(gray[:, ::-1])
    faces = profile.detectMultiScale(mirrored, 1.1, 5, minSize=(80, 80))
    assert len(faces) == 1
    x, y, w, h = faces[0]
    centre_x = gray.shape[1] - (x + w / 2)  # back in the original photo's coordinates
    assert 400 < centre_x < 520 and 240 < y + h / 2 < 360


def test_licences_table_lists_every_file_in_the_folder():
    listed = set(re.findall(r"^\| ([\w-]+\.\w+) \|", _licences(), flags=re.MULTILINE))
    present = {p.name for p in SAMPLES.iterdir() if p.is_file() and p.name != "LICENSES.md"}
    assert present == listed
