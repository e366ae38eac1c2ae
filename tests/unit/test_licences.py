"""Licences of the weights: every row says what commercial use it allows, and the `commercial` setting refuses
weights whose licence forbids it, naming the file and what to supply instead."""

from __future__ import annotations

import importlib.util
import json

import pytest

from python_backends.catalog import ROLES, licence_refusals, weights_for
from python_backends.errors import WeightsUnavailable
from python_backends.face_landmarks import FaceLandmarksSettings
from python_backends.licences import COMMERCIAL_ENV, LicencePolicy, commercial_required, require_commercial_use
from python_backends.mouth_refiner import MouthRefinerSettings
from python_backends.settings import from_mapping
from python_backends.weights import COMMERCIAL_USES, FORBIDDEN, WeightsChoice


@pytest.fixture(autouse=True)
def _no_server_switch(monkeypatch):
    monkeypatch.delenv(COMMERCIAL_ENV, raising=False)


def test_every_role_reports_a_licence_and_its_commercial_use(tmp_path):
    for role in ROLES:
        row = weights_for(role, {}, tmp_path).as_dict(with_hash=False)
        assert row["commercial_use"] in COMMERCIAL_USES, role
        if row["commercial_use"] == FORBIDDEN:
            assert row["commercial_alternative"], f"{role}: a forbidden licence must name an alternative"


def test_every_served_settings_class_takes_the_commercial_parameter():
    from importlib import import_module

    for role, (package, settings_name, _chooser) in ROLES.items():
        cls = getattr(import_module(package), settings_name)
        assert from_mapping(cls, {"commercial": "true"}).licence.commercial, role
        assert not from_mapping(cls, {}).licence.commercial, role


def test_dlib_landmarks_refused_with_mediapipe_named(tmp_path):
    settings = FaceLandmarksSettings(engine="dlib", licence=LicencePolicy(commercial=True))
    (reason,) = licence_refusals("face_landmarks", settings, tmp_path)
    assert "shape_predictor_68_face_landmarks.dat" in reason and "MediaPipe" in reason
    assert licence_refusals("face_landmarks", FaceLandmarksSettings(engine="dlib"), tmp_path) == []


def test_wav2lip_refused_with_musetalk_named(tmp_path):
    (tmp_path / "mouth_refiner").mkdir()
    (tmp_path / "mouth_refiner" / "wav2lip_gan.pth").touch()
    (reason,) = licence_refusals("mouth_refiner", MouthRefinerSettings(licence=LicencePolicy(True)), tmp_path)
    assert "wav2lip_gan.pth" in reason and "MuseTalk" in reason
    # Without the file nothing would load, so nothing is refused (the model is unavailable for its own reason).
    assert licence_refusals("mouth_refiner", MouthRefinerSettings(licence=LicencePolicy(True)),
                            tmp_path / "none") == []


def test_insightface_embedder_refused_and_nudenet_agpl_recorded(tmp_path):
    from python_backends.content_safety import ContentSafetySettings
    from python_backends.face_embedding import FaceEmbedderSettings

    (tmp_path / "face_embedder").mkdir()
    (tmp_path / "face_embedder" / "w600k_r50.onnx").touch()
    on = LicencePolicy(commercial=True)
    (reason,) = licence_refusals("face_embedder", FaceEmbedderSettings(licence=on), tmp_path)
    assert "w600k_r50.onnx" in reason and "commercial" in reason and "dlib" in reason
    nudenet = weights_for("content_safety", {}, tmp_path)
    assert "AGPL-3.0" in nudenet.licence and nudenet.commercial_use == "conditions"
    assert licence_refusals("content_safety", ContentSafetySettings(licence=on), tmp_path) == []


def test_server_switch_turns_it_on_for_every_model(monkeypatch):
    assert not commercial_required(LicencePolicy())
    monkeypatch.setenv(COMMERCIAL_ENV, "1")
    assert commercial_required(LicencePolicy()) and commercial_required(None)


def test_refusal_without_a_path_names_the_engine():
    choice = WeightsChoice("face_embedder", "arcface-triton", "official", None, "non-commercial",
                           commercial_use=FORBIDDEN, alternative="dlib")
    with pytest.raises(WeightsUnavailable, match="arcface-triton.*supply instead: dlib"):
        require_commercial_use(choice)
    with pytest.raises(ValueError, match="commercial_use"):
        WeightsChoice("m", "e", "shipped", None, "x", commercial_use="maybe")


def test_served_model_stays_loaded_and_answers_unavailable(monkeypatch, fake_pb_utils, tmp_path):
    """A refused model does not load its weights; requests get UNAVAILABLE with the file and the alternative."""
    from google.protobuf import json_format

    from client.repository import config_path, load_config, model_dir

    (tmp_path / "mouth_refiner").mkdir()
    (tmp_path / "mouth_refiner" / "wav2lip.pth").write_bytes(b"not even a checkpoint")  # never read
    monkeypatch.setenv("TALKINGHEAD_WEIGHTS", str(tmp_path))
    monkeypatch.setenv(COMMERCIAL_ENV, "1")
    spec = importlib.util.spec_from_file_location("mouth_refiner_model", model_dir("mouth_refiner") / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToDict(load_config(config_path("mouth_refiner")), preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU"})
    (response,) = model.execute([object()])
    assert response.error.code() == response.error.UNAVAILABLE
    assert "wav2lip.pth" in response.error.message() and "MuseTalk" in response.error.message()
