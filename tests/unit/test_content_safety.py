"""content_safety: NudeNet parity and NSFW decisions, the genderage loader on a tiny ONNX in its layout, the
public-figure gallery (match, no match, mismatch, reload), and `unavailable` whenever a model or data is absent."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from python_backends import spec
from python_backends.content_safety import (
    EXPLICIT_CLASSES,
    LABELS,
    ContentSafetySettings,
    Detection,
    GenderAgeRunner,
    NudeNetRunner,
    build_content_safety,
    choose_weights,
    input_normalisation,
    load_gallery,
)
from python_backends.content_safety import predictor as predictor_module
from python_backends.content_safety.nsfw import postprocess
from python_backends.content_safety.predictor import judge_nsfw
from python_backends.content_safety.public_figures import GalleryError
from python_backends.errors import ConfigError, InputError
from python_backends.face_embedding import DLIB_SAME_PERSON_COSINE
from python_backends.settings import from_mapping
from python_backends.weights import SHIPPED, UNAVAILABLE, package_path

ROOT = Path(__file__).resolve().parents[2]
NUDENET = package_path("nudenet", "320n.onnx")


def _rgb(samples: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(samples / name).convert("RGB"))


def _reports(predictor, **inputs) -> list[dict]:
    return [json.loads(item[spec.SAFETY_REPORT][0]) for item in predictor.predict(inputs)]


@pytest.fixture(scope="module")
def runner() -> NudeNetRunner:
    return NudeNetRunner(NUDENET)


@pytest.fixture(scope="module")
def empty_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-weights")


@pytest.fixture(scope="module")
def safety(empty_root):
    return build_content_safety(ContentSafetySettings(), "cpu", empty_root)


# ---- NSFW -------------------------------------------------------------------------------------------------


def test_sample_photo_is_below_the_nsfw_threshold(safety, samples):
    (report,) = _reports(safety, image=_rgb(samples, "astronaut.png")[None])
    nsfw = report["nsfw"]
    assert nsfw["status"] == "pass" and nsfw["threshold"] == 0.5
    assert nsfw["score"] == 0.0  # nothing explicit at all
    # The detector does run: it finds the face, which does not count.
    assert [d["class"] for d in nsfw["detections"]] == ["FACE_FEMALE"]
    assert nsfw["detections"][0]["score"] > 0.5 and not nsfw["detections"][0]["explicit"]
    assert report["minor"]["status"] == report["public_figure"]["status"] == "not_applicable"
    assert report["status"] == "pass"


def test_runner_matches_nudenet_detect(runner, samples):
    from nudenet import NudeDetector

    reference = NudeDetector()
    photo = _rgb(samples, "astronaut.png")
    # The coffee cup gives an explicit-class false alarm; the crops exercise padding on either side.
    crops = [np.ascontiguousarray(photo[:, :300]), np.ascontiguousarray(photo[:200])]
    images = [photo, *crops, _rgb(samples, "no_face.png")]
    ours = runner.detect(images)
    for image, found in zip(images, ours):
        # Handed an RGB array, nudenet 3.4.2 swaps twice and feeds RGB, as we do (see nsfw.py).
        theirs = reference.detect(image.copy())
        assert len(found) == len(theirs) >= 1
        for mine, their in zip(found, theirs):
            assert mine.label == their["class"]
            assert mine.score == pytest.approx(their["score"], abs=1e-5)
            assert [int(v) for v in mine.box] == their["box"]


def test_postprocess_matches_nudenet_on_random_outputs():
    from nudenet.nudenet import _postprocess

    rng = np.random.default_rng(0)
    for width, height in ((640, 480), (300, 900), (320, 320)):
        raw = np.zeros((4 + len(LABELS), 2100), np.float32)
        raw[0:2] = rng.uniform(0, 320, (2, 2100))
        raw[2:4] = rng.uniform(5, 120, (2, 2100))
        raw[4:] = rng.uniform(0, 0.3, (len(LABELS), 2100)) ** 2 * 10  # a few hundred above 0.2, overlapping
        side = max(width, height)
        ours = postprocess(raw, width, height, side)
        theirs = _postprocess([raw[None]], side - width, side - height, 1, 1, width, height, 320, 320)
        assert len(ours) == len(theirs) > 5
        assert [(d.label, d.score, [int(v) for v in d.box]) for d in ours] == [
            (t["class"], t["score"], t["box"]) for t in theirs
        ]


def test_explicit_classes_are_exposed_body_parts_in_the_model_labels():
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(NUDENET), load_external_data=False).metadata_props}
    assert metadata["names"] == str(dict(enumerate(LABELS)))
    assert EXPLICIT_CLASSES < set(LABELS)
    assert all(c.endswith("_EXPOSED") and not c.startswith(("FACE", "MALE_BREAST")) for c in EXPLICIT_CLASSES)
    assert {c for c in LABELS if "GENITALIA_EXPOSED" in c or c == "ANUS_EXPOSED"} <= EXPLICIT_CLASSES


def test_synthetic_detections_give_the_score_and_decision():
    def found(*pairs):
        return [Detection(label, score, (10.0, 10.0, 50.0, 50.0)) for label, score in pairs]

    harmless = found(("FACE_FEMALE", 0.95), ("FEMALE_BREAST_COVERED", 0.9), ("MALE_BREAST_EXPOSED", 0.8),
                     ("BELLY_EXPOSED", 0.7), ("BUTTOCKS_EXPOSED", 0.4))
    check = judge_nsfw(harmless, 0.5)
    assert check["status"] == "pass" and check["score"] == 0.4
    explicit = harmless + found(("FEMALE_GENITALIA_EXPOSED", 0.6))
    check = judge_nsfw(explicit, 0.5)
    assert check["status"] == "fail" and check["score"] == 0.6
    assert "FEMALE_GENITALIA_EXPOSED" in check["reason"] and "BUTTOCKS" not in check["reason"]
    assert check["detections"][-1] == {"class": "FEMALE_GENITALIA_EXPOSED", "score": 0.6,
                                       "box": [10.0, 10.0, 60.0, 60.0], "explicit": True}
    assert judge_nsfw([], 0.5)["score"] == 0.0
    assert judge_nsfw(found(("ANUS_EXPOSED", 0.5)), 0.5)["status"] == "fail"  # the threshold itself fails


def test_the_threshold_decides_on_a_real_false_alarm(samples, empty_root):
    # The coffee-cup sample gets a weak BUTTOCKS_EXPOSED box (0.296): below the default, above a strict 0.25.
    image = _rgb(samples, "no_face.png")[None]
    strict = build_content_safety(ContentSafetySettings(nsfw_threshold=0.25), "cpu", empty_root)
    (report,) = _reports(strict, image=image)
    assert report["nsfw"]["status"] == "fail" and report["status"] == "fail"
    assert report["nsfw"]["score"] == pytest.approx(0.296, abs=0.002)
    assert "BUTTOCKS_EXPOSED" in report["nsfw"]["reason"]


# ---- minor face: insightface genderage.onnx layout ------------------------------------------------------


def _genderage_onnx(path: Path, weight: np.ndarray, bias, bn_data: bool = True, size: int = 96) -> Path:
    """A tiny model with genderage.onnx's interface: input 'data' [N, 3, 96, 96], output 'fc1' [N, 3]
    (the mxnet symbol names insightface's gender-age model was exported with), `bn_data` first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(weight, np.float32), "fc1_weight"),
             numpy_helper.from_array(np.asarray(bias, np.float32), "fc1_bias")]
    nodes = []
    source = "data"
    if bn_data:
        for name, value in (("gamma", 1.0), ("beta", 0.0), ("mean", 0.0), ("var", 1.0)):
            inits.append(numpy_helper.from_array(np.full(3, value, np.float32), f"bn_data_{name}"))
        nodes.append(helper.make_node("BatchNormalization", ["data"] + [f"bn_data_{n}" for n in
                                      ("gamma", "beta", "mean", "var")], ["bn_data"], name="bn_data", epsilon=0.0))
        source = "bn_data"
    nodes += [helper.make_node("Flatten", [source], ["flat"], name="flatten0"),
              helper.make_node("Gemm", ["flat", "fc1_weight", "fc1_bias"], ["fc1"], name="fc1", transB=1)]
    graph = helper.make_graph(
        nodes, "genderage",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _constant_genderage(path: Path, female: float, male: float, age_over_100: float) -> Path:
    return _genderage_onnx(path, np.zeros((3, 3 * 96 * 96)), [female, male, age_over_100])


def test_genderage_normalisation_rule(tmp_path):
    weight = np.zeros((3, 3 * 96 * 96))
    assert input_normalisation(_genderage_onnx(tmp_path / "a.onnx", weight, [0, 0, 0])) == (0.0, 1.0)
    plain = _genderage_onnx(tmp_path / "b.onnx", weight, [0, 0, 0], bn_data=False)
    assert input_normalisation(plain) == (127.5, 128.0)


# Cropping, normalisation and decoding against insightface itself: tests/parity/test_insightface.py.


def test_genderage_decoding_and_minor_decision(tmp_path, samples):
    photo = _rgb(samples, "astronaut.png")[None]
    box = np.array([[175, 80, 275, 185]], np.float32)

    def minor(age_over_100, female=0.9, male=0.1, **settings):
        root = tmp_path / f"root-{age_over_100}-{len(settings)}"
        (root / "content_safety").mkdir(parents=True)
        path = _constant_genderage(root / "content_safety" / "genderage.onnx", female, male, age_over_100)
        assert GenderAgeRunner(path).estimate(photo, box)[0].gender == ("F" if female > male else "M")
        model = build_content_safety(ContentSafetySettings(**settings), "cpu", root)
        assert "genderage" in model.weights.engine and "non-commercial" in model.weights.licence
        return _reports(model, image=photo, face_box=box)[0]["minor"]

    child = minor(0.15, female=0.1, male=0.9)
    assert child["status"] == "fail" and child["score"] == pytest.approx(15.0)
    assert child["threshold"] == 23.0 and "15.0 years" in child["reason"]
    assert minor(0.30)["status"] == "pass"
    # 20 looks adult but sits inside the default 5-year margin; without a margin it passes.
    assert minor(0.20)["status"] == "fail"
    assert minor(0.20, age_margin=0.0)["status"] == "pass"


def test_a_file_that_is_not_genderage_is_unavailable_not_a_crash(tmp_path, samples):
    from onnx import TensorProto, helper, save

    (tmp_path / "content_safety").mkdir()
    graph = helper.make_graph([helper.make_node("Identity", ["data"], ["out"])], "g",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 96, 96])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 96, 96])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
         str(tmp_path / "content_safety" / "genderage.onnx"))
    model = build_content_safety(ContentSafetySettings(), "cpu", tmp_path)
    (report,) = _reports(model, image=_rgb(samples, "astronaut.png")[None],
                         face_box=np.array([[175, 80, 275, 185]], np.float32))
    assert report["minor"]["status"] == "unavailable" and "unusable" in report["minor"]["reason"]
    assert report["status"] == "unavailable"


# ---- public-figure gallery -----------------------------------------------------------------------------


def _unit(rng, count, dim):
    vectors = rng.normal(size=(count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _write_gallery(path: Path, names, embeddings, embedder="dlib", bump_ns: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # np.savez would add .npz to a str name only
        np.savez(handle, names=np.array(names, dtype=str), embeddings=embeddings, embedder=np.array(embedder))
    if bump_ns:  # filesystems with coarse timestamps: make the rewrite visible
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump_ns))


def test_gallery_match_no_match_mismatch_and_reload(tmp_path):
    rng = np.random.default_rng(7)
    gallery = tmp_path / "content_safety" / "public_figures.npz"
    people = _unit(rng, 3, 128)
    _write_gallery(gallery, ["Ada", "Grace", "Linus"], people)
    model = build_content_safety(ContentSafetySettings(), "cpu", tmp_path)
    image = np.zeros((1, 64, 64, 3), np.uint8)

    near_grace = people[1] + 0.05 * _unit(rng, 1, 128)[0]  # cosine ~0.999
    (report,) = _reports(model, image=image, embedding=near_grace[None])
    check = report["public_figure"]
    assert check["status"] == "fail" and check["match"] == "Grace" and "Grace" in check["reason"]
    assert check["threshold"] == pytest.approx(DLIB_SAME_PERSON_COSINE) and check["score"] > 0.99
    assert report["status"] == "fail"

    stranger = _unit(rng, 1, 128)
    check = _reports(model, image=image, embedding=stranger)[0]["public_figure"]
    assert check["status"] == "pass" and "match" not in check and check["score"] < DLIB_SAME_PERSON_COSINE

    check = _reports(model, image=image, embedding=_unit(rng, 1, 512))[0]["public_figure"]
    assert check["status"] == "unavailable" and "dimension mismatch" in check["reason"]
    assert "512" in check["reason"] and "128" in check["reason"]

    # The operator adds the stranger: the running model sees it without a restart.
    _write_gallery(gallery, ["Ada", "Grace", "Linus", "Someone"], np.concatenate([people, stranger]),
                   bump_ns=10_000_000)
    check = _reports(model, image=image, embedding=stranger)[0]["public_figure"]
    assert check["status"] == "fail" and check["match"] == "Someone" and check["gallery_size"] == 4

    gallery.unlink()
    check = _reports(model, image=image, embedding=stranger)[0]["public_figure"]
    assert check["status"] == "unavailable" and check["reason"].startswith("no gallery configured")


def test_arcface_gallery_uses_its_own_threshold(tmp_path):
    rng = np.random.default_rng(8)
    person = _unit(rng, 1, 512)
    _write_gallery(tmp_path / "content_safety" / "public_figures.npz", ["Ada"], person, embedder="arcface-onnx")
    # A vector at cosine 0.6 from the gallery face: over ArcFace's 0.5, far under dlib's 0.904.
    other = _unit(rng, 1, 512)[0]
    other -= (other @ person[0]) * person[0]
    query = 0.6 * person[0] + 0.8 * other / np.linalg.norm(other)
    for threshold, status in ((None, "fail"), (0.7, "pass")):
        model = build_content_safety(ContentSafetySettings(arcface_match_threshold=threshold), "cpu", tmp_path)
        check = _reports(model, image=np.zeros((1, 32, 32, 3), np.uint8), embedding=query[None])[0]["public_figure"]
        assert check["status"] == status and check["score"] == pytest.approx(0.6, abs=1e-4)
        assert check["threshold"] == (threshold or 0.5)


@pytest.mark.parametrize(
    "names, embeddings, embedder, message",
    [
        (["a"], np.ones((1, 128), np.float32), "dlib", "L2-normalised"),
        (["a"], np.eye(1, 512, dtype=np.float32), "dlib", "512-d but 'dlib' makes 128-d"),
        (["a", "b"], np.eye(1, 128, dtype=np.float32), "dlib", "'names' must be str [1]"),
        (["a"], np.eye(1, 128, dtype=np.float32), "facenet", "not a face_embedder engine"),
    ],
)
def test_bad_galleries_are_rejected_with_the_reason(tmp_path, names, embeddings, embedder, message):
    path = tmp_path / "g.npz"
    _write_gallery(path, names, embeddings, embedder)
    with pytest.raises(GalleryError, match=re.escape(message)):
        load_gallery(path)


def test_pickled_names_are_refused(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, names=np.array(["a"], dtype=object), embeddings=np.eye(1, 128, dtype=np.float32),
             embedder=np.array("dlib"))
    with pytest.raises(GalleryError, match="without pickle"):
        load_gallery(path)


# ---- no weights, inputs, settings, Triton adapter -----------------------------------------------------


def test_no_weights_is_unavailable_never_a_pass(safety, samples):
    (report,) = _reports(safety, image=_rgb(samples, "astronaut.png")[None],
                         face_box=np.array([[175, 80, 275, 185]], np.float32),
                         face_keypoints=np.zeros((1, 5, 2), np.float32),
                         embedding=_unit(np.random.default_rng(1), 1, 128))
    minor = report["minor"]
    assert minor["status"] == "unavailable" and minor["score"] is None
    assert "genderage.onnx" in minor["reason"] and "<weights root>/content_safety" in minor["reason"]
    assert report["public_figure"]["status"] == "unavailable"
    assert report["public_figure"]["reason"].startswith("no gallery configured: put public_figures.npz")
    assert report["nsfw"]["status"] == "pass" and report["status"] == "unavailable"


def test_without_nudenet_the_nsfw_check_is_unavailable(monkeypatch, empty_root):
    monkeypatch.setattr(predictor_module, "package_path", lambda *_: None)
    choice = choose_weights(ContentSafetySettings(), empty_root)
    assert choice.source == UNAVAILABLE and "install nudenet==3.4.2" in choice.note
    model = build_content_safety(ContentSafetySettings(), "cpu", empty_root)
    (report,) = _reports(model, image=np.zeros((1, 32, 32, 3), np.uint8))
    assert report["nsfw"]["status"] == "unavailable" and "install nudenet" in report["nsfw"]["reason"]
    assert report["status"] == "unavailable"


def test_without_nudenet_the_segment_gate_is_unavailable_not_an_error(monkeypatch, empty_root):
    """QA's content_safety gate over a model loaded without NudeNet (scores None): unavailable, never a pass."""
    from python_backends.quality.gate import UNAVAILABLE as GATE_UNAVAILABLE
    from python_backends.quality.segment_qa import JobContext, SourceFace, safety_gate
    from python_backends.quality.settings import QualitySettings

    monkeypatch.setattr(predictor_module, "package_path", lambda *_: None)
    model = build_content_safety(ContentSafetySettings(), "cpu", empty_root)

    async def call(model_spec, inputs):
        assert model_spec.name == spec.CONTENT_SAFETY.name
        return {spec.SAFETY_REPORT: np.concatenate([out[spec.SAFETY_REPORT] for out in model.predict(inputs)])}

    source = SourceFace(np.zeros((64, 64, 3), np.uint8), np.array([8, 8, 56, 56], np.float64),
                        np.zeros((5, 2), np.float32), np.zeros((68, 2)), np.ones(128) / np.sqrt(128), "test")
    ctx = JobContext(source, None, 25.0, QualitySettings())
    gate = asyncio.run(safety_gate(np.zeros((50, 32, 32, 3), np.uint8), 100, ctx, call))
    assert gate.name == "content_safety" and gate.status == GATE_UNAVAILABLE
    assert "install nudenet" in gate.reason and gate.details["max_nsfw_score"] is None
    assert gate.details["checked_frames"][0] == 100 and gate.details["frames"] == []


def test_weights_choice_is_the_shipped_detector(empty_root):
    choice = choose_weights(ContentSafetySettings(), empty_root)
    assert choice.source == SHIPPED and choice.path == NUDENET and choice.engine == "nudenet-320n"
    assert "MIT" in choice.licence and "AGPL" in choice.licence
    assert "genderage.onnx" in choice.note and "public_figures.npz" in choice.note


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"face_box": np.array([[50, 50, 40, 80]], np.float32)}, "empty or outside"),
        ({"face_box": np.array([[500, 500, 600, 600]], np.float32)}, "outside the 64x64 image"),
        ({"embedding": np.zeros((1, 128), np.float32)}, "non-zero"),
        ({"face_keypoints": np.full((1, 5, 2), np.nan, np.float32)}, "finite"),
    ],
)
def test_bad_face_inputs_are_input_errors(safety, inputs, message):
    with pytest.raises(InputError, match=message):
        safety.predict({"image": np.zeros((1, 64, 64, 3), np.uint8), **inputs})


def test_tiny_faces_are_not_judged(tmp_path):
    (tmp_path / "content_safety").mkdir()
    _constant_genderage(tmp_path / "content_safety" / "genderage.onnx", 0.5, 0.5, 0.1)
    model = build_content_safety(ContentSafetySettings(), "cpu", tmp_path)
    boxes = np.array([[10, 10, 20, 20], [0, 0, 60, 60]], np.float32)
    reports = _reports(model, image=np.zeros((2, 64, 64, 3), np.uint8), face_box=boxes)
    assert reports[0]["minor"]["status"] == "unavailable" and "too small" in reports[0]["minor"]["reason"]
    assert reports[1]["minor"]["status"] == "fail"  # the constant model says 10 years


def test_config_parameters_parse_and_bad_values_are_config_errors(empty_root):
    from client.repository import config_path, load_config, parameters
    from python_backends.catalog import weights_for

    values = parameters(load_config(config_path("content_safety")))
    settings = from_mapping(ContentSafetySettings, values)
    assert settings == ContentSafetySettings()
    assert weights_for("content_safety", values, empty_root).path == NUDENET
    with pytest.raises(ConfigError, match="nsfw_threshold"):
        from_mapping(ContentSafetySettings, {"nsfw_threshold": "0"})
    with pytest.raises(ConfigError, match="age_margin"):
        from_mapping(ContentSafetySettings, {"age_margin": "-1"})


def test_triton_model_serves_a_report(fake_pb_utils, monkeypatch, samples, empty_root):
    import triton_python_backend_utils as pb

    monkeypatch.setenv("TALKINGHEAD_WEIGHTS", str(empty_root))
    from client.repository import config_path, load_config, parameters

    spec_file = importlib.util.spec_from_file_location("content_safety_model",
                                                       ROOT / "model_repository/content_safety/1/model.py")
    module = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"parameters": {k: {"string_value": v}
                             for k, v in parameters(load_config(config_path("content_safety"))).items()}}
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU"})
    request = pb.InferenceRequest(inputs=[pb.Tensor("image", _rgb(samples, "astronaut.png")[None])])
    (response,) = model.execute([request])
    assert response.error is None
    outputs = {t.name(): t.as_numpy() for t in response.output_tensors}
    report = json.loads(outputs["safety_report"][0][0])
    assert report["status"] == "pass" and report["nsfw"]["score"] == 0.0
    assert json.loads(outputs["model_info"][0][0])["engine"] == "nudenet-320n"
