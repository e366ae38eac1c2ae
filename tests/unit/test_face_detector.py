"""face_detector: MTCNN with the shipped weights on real photos, RetinaFace with random weights in the
official checkpoint layout (loading, strictness, ONNX parity, batching), box maths and settings."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from python_backends import spec
from python_backends.errors import ConfigError, InputError, WeightsUnavailable
from python_backends.face_detection import FaceDetectorSettings, build_face_detector, choose_weights, export_onnx
from python_backends.face_detection import boxes as box_ops
from python_backends.face_detection.detector import FaceDetector
from python_backends.face_detection.retinaface import RetinaFace
from python_backends.face_detection.retinaface_runtime import RetinaFaceEngine, TorchRunner, postprocess
from python_backends.settings import from_model_config

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "client" / "samples"
OUTPUTS = (spec.FACE_BOXES, spec.FACE_SCORES, spec.FACE_KEYPOINTS, spec.FACE_COUNT)


def _rgb(name: str) -> np.ndarray:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"sample {path} not present")
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _rgb("astronaut.png")


@pytest.fixture(scope="module")
def mtcnn():
    return build_face_detector(FaceDetectorSettings(backbone="mtcnn"), "cpu")


def _random_retinaface(backbone: str, seed: int = 0) -> RetinaFace:
    """The real architecture with random weights, BatchNorm statistics included (as a trained net has)."""
    torch.manual_seed(seed)
    net = RetinaFace(backbone)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(1000)
    return net.eval()


@pytest.fixture(scope="module")
def random_nets() -> dict[str, RetinaFace]:
    return {backbone: _random_retinaface(backbone) for backbone in ("mobilenet0.25", "resnet50")}


CHECKPOINT = {"resnet50": "Resnet50_Final.pth", "mobilenet0.25": "mobilenet0.25_Final.pth"}


def _save_checkpoint(state: dict, root: Path, backbone: str, prefix: str = "") -> Path:
    path = root / "face_detector" / CHECKPOINT[backbone]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + key: value for key, value in state.items()}, path)
    return path


# --- MTCNN with the shipped weights, real photos -------------------------------------------------------


def test_mtcnn_finds_the_one_face_in_the_astronaut_photo(mtcnn, astronaut):
    assert mtcnn.weights.engine == "mtcnn" and mtcnn.weights.source == "shipped"
    (result,) = mtcnn.predict({spec.IMAGE: astronaut[None]})
    assert set(result) == set(OUTPUTS)
    assert result[spec.FACE_COUNT].dtype == np.int32 and result[spec.FACE_COUNT].tolist() == [1]
    assert result[spec.FACE_BOXES].dtype == np.float32 and result[spec.FACE_BOXES].shape == (1, 4)
    assert result[spec.FACE_KEYPOINTS].shape == (1, 5, 2)
    x1, y1, x2, y2 = result[spec.FACE_BOXES][0]
    # Eileen Collins' face sits around x 180-270, y 60-175 of the 512x512 photo.
    assert 160 < x1 < 200 and 40 < y1 < 85 and 250 < x2 < 290 and 150 < y2 < 195
    assert 0.99 < result[spec.FACE_SCORES][0] <= 1.0
    points = result[spec.FACE_KEYPOINTS][0]
    assert np.all((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1) & (points[:, 1] < y2))
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # order as seen in the image
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert 25 < right_eye[0] - left_eye[0] < 60  # a plausible inter-ocular distance for this face


@pytest.mark.parametrize("detector", ["mtcnn", "blazeface"])
@pytest.mark.parametrize("name", ["no_face.png", "noise", "flat"])
def test_no_face_is_found_where_there_is_none(request, detector, name):
    detector = request.getfixturevalue(detector)
    if name == "noise":
        image = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    elif name == "flat":
        image = np.full((64, 80, 3), 200, dtype=np.uint8)
    else:
        image = _rgb(name)
    (result,) = detector.predict({spec.IMAGE: image[None]})
    assert result[spec.FACE_COUNT].tolist() == [0]
    assert result[spec.FACE_BOXES].shape == (0, 4) and result[spec.FACE_SCORES].shape == (0,)
    assert result[spec.FACE_KEYPOINTS].shape == (0, 5, 2)


def test_mtcnn_batch_matches_single_runs(mtcnn, astronaut):
    (single,) = mtcnn.predict({spec.IMAGE: astronaut[None]})
    noise = np.random.default_rng(1).integers(0, 256, astronaut.shape, dtype=np.uint8)
    same = mtcnn.predict({spec.IMAGE: np.stack([astronaut, astronaut])})
    mixed = mtcnn.predict({spec.IMAGE: np.stack([noise, astronaut])})
    for result in (*same, mixed[1]):
        for name in OUTPUTS:
            np.testing.assert_allclose(result[name], single[name], atol=1e-3)
    assert mixed[0][spec.FACE_COUNT].tolist() == [0]


def test_large_images_are_downscaled_and_results_mapped_back(astronaut):
    detector = build_face_detector(FaceDetectorSettings(backbone="mtcnn", max_side=512), "cpu")
    (small,) = detector.predict({spec.IMAGE: astronaut[None]})
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    (large,) = detector.predict({spec.IMAGE: big[None]})
    assert large[spec.FACE_COUNT].tolist() == [1]
    np.testing.assert_allclose(large[spec.FACE_BOXES], small[spec.FACE_BOXES] * 3, atol=9)
    np.testing.assert_allclose(large[spec.FACE_KEYPOINTS], small[spec.FACE_KEYPOINTS] * 3, atol=9)


def test_bad_images_are_refused_with_a_message(mtcnn):
    with pytest.raises(InputError, match="RGB"):
        mtcnn.predict({spec.IMAGE: np.zeros((1, 32, 32, 4), np.uint8)})
    with pytest.raises(InputError, match="empty"):
        mtcnn.predict({spec.IMAGE: np.zeros((1, 0, 32, 3), np.uint8)})
    with pytest.raises(InputError, match="missing"):
        mtcnn.predict({})


# --- BlazeFace + Face Mesh keypoints (the default), real photos -------------------------------------------


@pytest.fixture(scope="module")
def blazeface():
    return build_face_detector(FaceDetectorSettings(), "cpu")


@pytest.mark.parametrize("name", ["astronaut.png", "hopper.jpg", "profile.png"])
def test_blazeface_finds_the_one_face_with_ordered_keypoints(blazeface, mtcnn, name):
    image = _rgb(name)
    (result,) = blazeface.predict({spec.IMAGE: image[None]})
    assert result[spec.FACE_COUNT].tolist() == [1] and result[spec.FACE_KEYPOINTS].shape == (1, 5, 2)
    (reference,) = mtcnn.predict({spec.IMAGE: image[None]})
    box, other = result[spec.FACE_BOXES][0], reference[spec.FACE_BOXES][0]
    inter = np.prod(np.clip(np.minimum(box[2:], other[2:]) - np.maximum(box[:2], other[:2]), 0, None))
    overlap = inter / (np.prod(box[2:] - box[:2]) + np.prod(other[2:] - other[:2]) - inter)
    assert overlap > 0.5, f"BlazeFace and MTCNN boxes overlap only {overlap:.2f}"
    left_eye, right_eye, nose, mouth_left, mouth_right = result[spec.FACE_KEYPOINTS][0]
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_blazeface_finds_a_tiny_face_by_tiles_and_flags_a_cut_one(blazeface, astronaut):
    """A 21-pixel face on a 1024-pixel canvas is a few pixels at BlazeFace's 192 px: the tiled search finds it. A face
    cut by the frame's edge reports the cut eye's outside corner, so the photo checks see it leave the photo."""
    canvas = np.full((1024, 1024, 3), 128, np.uint8)
    canvas[448:576, 448:576] = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    (tiny,) = blazeface.predict({spec.IMAGE: canvas[None]})
    assert tiny[spec.FACE_COUNT].tolist() == [1]
    x1, y1, x2, y2 = tiny[spec.FACE_BOXES][0]
    assert 448 + 128 * 175 / 512 - 6 < x1 < x2 < 448 + 128 * 275 / 512 + 6  # the astronaut's face, scaled
    cut = cv2.resize(astronaut[:, 200:], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    (result,) = blazeface.predict({spec.IMAGE: cut[None]})
    assert result[spec.FACE_COUNT].tolist() == [1] and result[spec.FACE_KEYPOINTS][0][0, 0] < 0


def test_blazeface_batch_matches_single_runs(blazeface, astronaut):
    (single,) = blazeface.predict({spec.IMAGE: astronaut[None]})
    noise = np.random.default_rng(1).integers(0, 256, astronaut.shape, dtype=np.uint8)
    mixed = blazeface.predict({spec.IMAGE: np.stack([noise, astronaut])})
    for name in OUTPUTS:
        np.testing.assert_allclose(mixed[1][name], single[name], atol=1e-3)
    assert mixed[0][spec.FACE_COUNT].tolist() == [0]


# --- the expected face size (QA tracking's hint) ---------------------------------------------------------


class _CountingNetwork:
    """Stands in for a TFLiteNetwork and counts its calls (BlazeFace's forward passes)."""

    def __init__(self, network) -> None:
        self.network, self.calls = network, 0

    def __call__(self, inputs):
        self.calls += 1
        return self.network(inputs)


@pytest.fixture()
def counted_blazeface(blazeface):
    nets = list(blazeface.engine.networks)
    originals = [net.network for net in nets]
    counters = [_CountingNetwork(original) for original in originals]
    for net, counter in zip(nets, counters):
        net.network = counter
    yield blazeface, lambda: sum(c.calls for c in counters)
    for net, original in zip(nets, originals):
        net.network = original


def _hint(count: int, side: float) -> np.ndarray:
    return np.full((count, 1), side, np.float32)


def _best_ms(work, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) * 1000.0


def test_a_faceless_frame_with_an_expected_face_skips_the_tiled_search(counted_blazeface):
    """A noise 832x480 frame (a generated frame that lost the face): told the face is 150 px, BlazeFace runs its two
    whole-image passes only instead of ~80 tiles, and finds the same nothing, much faster."""
    detector, calls = counted_blazeface
    noise = np.random.default_rng(0).integers(0, 256, (1, 480, 832, 3), dtype=np.uint8)
    hinted = {spec.IMAGE: noise, spec.EXPECTED_FACE_PX: _hint(1, 150.0)}
    before = calls()
    (plain,) = detector.predict({spec.IMAGE: noise})
    plain_calls = calls() - before
    before = calls()
    (fast,) = detector.predict(hinted)
    assert calls() - before == 2 and plain_calls > 40, (plain_calls, calls() - before)
    assert plain[spec.FACE_COUNT].tolist() == fast[spec.FACE_COUNT].tolist() == [0]
    slow_ms = _best_ms(lambda: detector.predict({spec.IMAGE: noise}), 2)
    fast_ms = _best_ms(lambda: detector.predict(hinted))
    assert fast_ms * 5 < slow_ms, f"{fast_ms:.0f} ms with the hint, {slow_ms:.0f} ms without"


def test_a_small_face_is_still_found_by_tiles_without_or_with_a_small_expected_face(counted_blazeface, astronaut):
    """The tiny face of the tile test: no hint (pre-processing) and a hint of its own size both search the tiles;
    only a caller that expects a face far above the whole-image floor gives the tiles up."""
    detector, calls = counted_blazeface
    canvas = np.full((1, 1024, 1024, 3), 128, np.uint8)
    canvas[0, 448:576, 448:576] = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    found = {}
    for name, hint in (("none", None), ("zero", 0.0), ("own size", 24.0), ("large", 200.0)):
        inputs = {spec.IMAGE: canvas} if hint is None else {spec.IMAGE: canvas, spec.EXPECTED_FACE_PX: _hint(1, hint)}
        before = calls()
        (result,) = detector.predict(inputs)
        found[name] = (int(result[spec.FACE_COUNT][0]), calls() - before > 2)
    assert found == {"none": (1, True), "zero": (1, True), "own size": (1, True), "large": (0, False)}


@pytest.mark.parametrize("background", ["grey", "noise"])
def test_a_face_at_the_skip_threshold_is_found_by_the_whole_image_pass(counted_blazeface, astronaut, background):
    """The guard on WHOLE_IMAGE_FLOOR: the sample face at the smallest expected size that skips the tiles (2x the
    floor) in an 832x480 frame is found with the hint, where the boxes equal those without it."""
    from python_backends.mediapipe_models.blazeface import TILE_SKIP_MARGIN, WHOLE_IMAGE_FLOOR

    detector, calls = counted_blazeface
    side = TILE_SKIP_MARGIN * WHOLE_IMAGE_FLOOR * 832
    (photo,) = detector.predict({spec.IMAGE: astronaut[None]})
    box = photo[spec.FACE_BOXES][0]
    scale = side / max(box[2] - box[0], box[3] - box[1])
    small = cv2.resize(astronaut, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(3)
    frame = (np.full((480, 832, 3), 128, np.uint8) if background == "grey"
             else rng.integers(0, 256, (480, 832, 3), dtype=np.uint8))
    # the photo's face at the frame's centre, the rest of the photo around it as far as the frame reaches
    x0, y0 = int(416 - (box[0] + box[2]) / 2 * scale), int(240 - (box[1] + box[3]) / 2 * scale)
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(480, y0 + small.shape[0]), min(832, x0 + small.shape[1])
    frame[top:bottom, left:right] = small[top - y0: bottom - y0, left - x0: right - x0]
    before = calls()
    (hinted,) = detector.predict({spec.IMAGE: frame[None], spec.EXPECTED_FACE_PX: _hint(1, side)})
    assert calls() - before <= 2 and hinted[spec.FACE_COUNT].tolist() == [1]
    (plain,) = detector.predict({spec.IMAGE: frame[None]})
    for name in OUTPUTS:
        np.testing.assert_array_equal(hinted[name], plain[name])


def test_mtcnn_with_an_expected_face_runs_fewer_pyramid_levels_and_finds_the_same_face(mtcnn, astronaut):
    from python_backends.face_detection.mtcnn import _pyramid

    full = _pyramid(512, 512, 20.0, 0.709)
    hinted = _pyramid(512, 512, 20.0, 0.709, 94.0)
    assert len(hinted) < len(full) and hinted == full[len(full) - len(hinted):]  # the old levels, small faces' gone
    smallest = min(12.0 / s for s in hinted)  # the smallest face window kept: the first at half the expected size
    assert smallest * 0.709 < 94.0 / 2 <= smallest
    assert _pyramid(512, 512, 20.0, 0.709, 5000.0) == full[-1:]  # an absurd size still runs the coarsest level
    (plain,) = mtcnn.predict({spec.IMAGE: astronaut[None]})
    (fast,) = mtcnn.predict({spec.IMAGE: astronaut[None], spec.EXPECTED_FACE_PX: _hint(1, 94.0)})
    assert plain[spec.FACE_COUNT].tolist() == fast[spec.FACE_COUNT].tolist() == [1]
    np.testing.assert_allclose(fast[spec.FACE_BOXES], plain[spec.FACE_BOXES], atol=1e-3)
    np.testing.assert_allclose(fast[spec.FACE_KEYPOINTS], plain[spec.FACE_KEYPOINTS], atol=1e-3)


@pytest.mark.parametrize("hint", [np.array([[-1.0]], np.float32), np.array([[np.nan]], np.float32),
                                  np.array([[1.0, 2.0]], np.float32), np.array([[100]], np.int32)])
def test_a_bad_expected_face_is_refused_with_a_message(mtcnn, astronaut, hint):
    with pytest.raises(InputError, match="expected_face_px"):
        mtcnn.predict({spec.IMAGE: astronaut[None], spec.EXPECTED_FACE_PX: hint})


# --- choosing weights -----------------------------------------------------------------------------------


def test_auto_prefers_resnet50_then_mobilenet_then_shipped_blazeface_then_mtcnn(tmp_path, monkeypatch):
    blazeface = choose_weights(FaceDetectorSettings(), tmp_path)
    assert (blazeface.engine, blazeface.commercial_use) == ("blazeface+facemesh", "allowed")
    with monkeypatch.context() as without_mediapipe:
        without_mediapipe.setenv("TALKINGHEAD_MEDIAPIPE_DIR", str(tmp_path / "none"))
        assert choose_weights(FaceDetectorSettings(), tmp_path).engine == "mtcnn"
        with pytest.raises(WeightsUnavailable, match="make install"):
            choose_weights(FaceDetectorSettings(backbone="blazeface"), tmp_path)
    (tmp_path / "face_detector").mkdir()
    (tmp_path / "face_detector" / "mobilenet0.25_Final.pth").write_bytes(b"x")
    choice = choose_weights(FaceDetectorSettings(), tmp_path)
    assert (choice.engine, choice.source, choice.path.name) == (
        "retinaface-mobilenet0.25",
        "official",
        CHECKPOINT["mobilenet0.25"],
    )
    assert "MIT" in choice.licence
    (tmp_path / "face_detector" / "Resnet50_Final.pth").write_bytes(b"x")
    assert choose_weights(FaceDetectorSettings(), tmp_path).engine == "retinaface-resnet50"
    assert choose_weights(FaceDetectorSettings(backbone="mtcnn"), tmp_path).engine == "mtcnn"


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet0.25"])
def test_explicit_backbone_without_its_file_names_the_file(tmp_path, backbone):
    with pytest.raises(WeightsUnavailable, match=str(tmp_path / "face_detector" / CHECKPOINT[backbone])):
        choose_weights(FaceDetectorSettings(backbone=backbone), tmp_path)


def test_onnxruntime_without_the_file_says_how_to_make_it(tmp_path):
    with pytest.raises(WeightsUnavailable, match="onnx_export"):
        choose_weights(FaceDetectorSettings(runtime="onnxruntime"), tmp_path)


# --- RetinaFace: official checkpoint layout -------------------------------------------------------------

# Keys and shapes of the official checkpoints (biubug6/Pytorch_Retinaface); their loader reports
# "Used keys:456" for Resnet50_Final.pth and "Used keys:300" for mobilenet0.25_Final.pth.
OFFICIAL_KEYS = {
    "resnet50": (
        456,
        {
            "body.conv1.weight": (64, 3, 7, 7),
            "body.bn1.running_var": (64,),
            "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
            "body.layer2.3.conv2.weight": (128, 128, 3, 3),
            "body.layer3.5.bn3.num_batches_tracked": (),
            "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
            "fpn.output1.0.weight": (256, 512, 1, 1),
            "fpn.output3.0.weight": (256, 2048, 1, 1),
            "fpn.merge2.1.running_mean": (256,),
            "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
            "ssh3.conv7x7_3.1.bias": (64,),
            "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
            "BboxHead.1.conv1x1.weight": (8, 256, 1, 1),
            "LandmarkHead.2.conv1x1.bias": (20,),
        },
    ),
    "mobilenet0.25": (
        300,
        {
            "body.stage1.0.0.weight": (8, 3, 3, 3),
            "body.stage1.1.3.weight": (16, 8, 1, 1),
            "body.stage2.0.0.weight": (64, 1, 3, 3),
            "body.stage3.1.4.running_var": (256,),
            "fpn.output1.0.weight": (64, 64, 1, 1),
            "fpn.output3.0.weight": (64, 256, 1, 1),
            "ssh2.conv5X5_1.0.weight": (16, 64, 3, 3),
            "ClassHead.2.conv1x1.weight": (4, 64, 1, 1),
            "LandmarkHead.0.conv1x1.weight": (20, 64, 1, 1),
        },
    ),
}


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet0.25"])
def test_network_has_the_official_state_dict_layout(random_nets, backbone):
    count, samples = OFFICIAL_KEYS[backbone]
    state = random_nets[backbone].state_dict()
    assert len(state) == count
    for key, shape in samples.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith(("body.fc", "body.avg")) for key in state)  # classifier dropped


@pytest.mark.parametrize("backbone,prefix", list(itertools.product(["resnet50", "mobilenet0.25"], ["", "module."])))
def test_official_checkpoint_loads_with_or_without_module_prefix(tmp_path, random_nets, astronaut, backbone, prefix):
    net = random_nets[backbone]
    _save_checkpoint(net.state_dict(), tmp_path, backbone, prefix)
    settings = FaceDetectorSettings(backbone=backbone, confidence_threshold=0.3)
    detector = build_face_detector(settings, "cpu", root=tmp_path)
    assert detector.weights.engine == f"retinaface-{backbone}" and detector.weights.source == "official"
    loaded = detector.engine.runner.net.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(loaded[key], value), key
    image = astronaut[:96, :128]
    (result,) = detector.predict({spec.IMAGE: image[None]})
    faces = result[spec.FACE_COUNT][0]
    assert result[spec.FACE_BOXES].shape == (faces, 4) and result[spec.FACE_KEYPOINTS].shape == (faces, 5, 2)
    assert np.all(np.diff(result[spec.FACE_SCORES]) <= 0) and faces <= settings.max_faces


def test_checkpoint_without_batchnorm_step_counters_still_loads(tmp_path, random_nets):
    state = {k: v for k, v in random_nets["mobilenet0.25"].state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "face_detector" / CHECKPOINT["mobilenet0.25"]
    path.parent.mkdir(parents=True)
    # also the {"state_dict": ...} wrapping that the official load_model unwraps
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    detector = build_face_detector(FaceDetectorSettings(backbone="mobilenet0.25"), "cpu", root=tmp_path)
    assert torch.equal(
        detector.engine.runner.net.state_dict()["fpn.merge1.1.running_var"], state["fpn.merge1.1.running_var"]
    )


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet0.25"])
def test_missing_key_is_rejected_by_name(tmp_path, random_nets, backbone):
    state = dict(random_nets[backbone].state_dict())
    removed = "LandmarkHead.1.conv1x1.weight"
    del state[removed]
    _save_checkpoint(state, tmp_path, backbone, "module.")
    with pytest.raises(WeightsUnavailable, match=f"missing key.*'{removed}'"):
        build_face_detector(FaceDetectorSettings(backbone=backbone), "cpu", root=tmp_path)


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet0.25"])
def test_misshaped_key_is_rejected_by_name(tmp_path, random_nets, backbone):
    state = dict(random_nets[backbone].state_dict())
    state["fpn.output2.0.weight"] = state["fpn.output2.0.weight"][:, :-1]
    _save_checkpoint(state, tmp_path, backbone)
    with pytest.raises(WeightsUnavailable, match=r"mis-shaped 'fpn.output2.0.weight' has shape"):
        build_face_detector(FaceDetectorSettings(backbone=backbone), "cpu", root=tmp_path)


def test_unexpected_key_and_wrong_backbone_are_rejected(tmp_path, random_nets):
    state = dict(random_nets["mobilenet0.25"].state_dict())
    state["body.fc.weight"] = torch.zeros(1000, 256)
    _save_checkpoint(state, tmp_path, "mobilenet0.25")
    with pytest.raises(WeightsUnavailable, match="unexpected key.*'body.fc.weight'"):
        build_face_detector(FaceDetectorSettings(backbone="mobilenet0.25"), "cpu", root=tmp_path)
    # a MobileNet checkpoint saved under the ResNet-50 name
    _save_checkpoint(random_nets["mobilenet0.25"].state_dict(), tmp_path, "resnet50")
    with pytest.raises(WeightsUnavailable, match="missing key.*'body.conv1.weight'"):
        build_face_detector(FaceDetectorSettings(backbone="resnet50"), "cpu", root=tmp_path)


# --- RetinaFace: runtimes and batching ------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet0.25"])
def test_onnx_export_matches_torch_with_dynamic_batch_and_size(tmp_path, random_nets, astronaut, backbone):
    # Tolerance: raw outputs within 1e-4 (abs and rel); decoded boxes and keypoints within 0.01 px.
    settings = FaceDetectorSettings(backbone=backbone, confidence_threshold=0.3)
    engine = RetinaFaceEngine(TorchRunner(random_nets[backbone], "cpu"), 0.3, settings.nms_threshold)
    torch_detector = FaceDetector(engine, settings, weights=None)
    export_onnx(random_nets[backbone], tmp_path / "face_detector" / "exported.onnx")  # traced at 256x256, batch 1
    onnx_settings = FaceDetectorSettings(runtime="onnxruntime", onnx_path="exported.onnx", confidence_threshold=0.3)
    onnx_detector = build_face_detector(onnx_settings, "cpu", root=tmp_path)
    assert onnx_detector.weights.engine == f"retinaface-{backbone}-onnxruntime"
    images = np.stack([astronaut[100:220, 150:310], astronaut[200:320, 50:210]])  # batch 2 of 120x160
    expected = torch_detector.engine.raw(images)
    actual = onnx_detector.engine.raw(images)
    assert expected[0].shape == (2, box_ops.prior_count(120, 160), 4)
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for want, got in zip(torch_detector.predict({spec.IMAGE: images}), onnx_detector.predict({spec.IMAGE: images})):
        assert got[spec.FACE_COUNT] == want[spec.FACE_COUNT]
        for name in (spec.FACE_BOXES, spec.FACE_KEYPOINTS, spec.FACE_SCORES):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-2)


def test_retinaface_batch_of_two_equal_images_matches_single_runs(tmp_path, random_nets, astronaut):
    _save_checkpoint(random_nets["mobilenet0.25"].state_dict(), tmp_path, "mobilenet0.25")
    detector = build_face_detector(FaceDetectorSettings(confidence_threshold=0.3), "cpu", root=tmp_path)
    image = astronaut[40:200, 140:300]
    calls = []
    runner = detector.engine.runner
    detector.engine.runner = lambda x: calls.append(x.shape) or runner(x)
    (single,) = detector.predict({spec.IMAGE: image[None]})
    pair = detector.predict({spec.IMAGE: np.stack([image, image])})
    assert calls == [(1, 3, 160, 160), (2, 3, 160, 160)]  # one forward per batch
    assert single[spec.FACE_COUNT][0] > 0
    for result in pair:
        for name in OUTPUTS:
            np.testing.assert_allclose(result[name], single[name], rtol=1e-5, atol=1e-4)


# --- priors, decoding, NMS ------------------------------------------------------------------------------


def _official_priors(height: int, width: int) -> np.ndarray:
    """A literal transcription of layers/functions/prior_box.py PriorBox.forward."""
    anchors = []
    for k, step in enumerate(box_ops.STEPS):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        for i, j in itertools.product(range(rows), range(cols)):
            for min_size in box_ops.MIN_SIZES[k]:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height, min_size / width, min_size / height]
    return np.asarray(anchors, dtype=np.float32).reshape(-1, 4)


@pytest.mark.parametrize("height,width", [(120, 160), (37, 53), (640, 480), (1, 1)])
def test_priors_match_the_official_layout_and_count(height, width):
    priors = box_ops.prior_boxes(height, width)
    expected_count = sum(math.ceil(height / s) * math.ceil(width / s) * 2 for s in (8, 16, 32))
    assert len(priors) == box_ops.prior_count(height, width) == expected_count
    np.testing.assert_allclose(priors, _official_priors(height, width), rtol=1e-6)


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_network_output_count_matches_priors(random_nets, backbone):
    with torch.no_grad():
        loc, conf, landms = random_nets[backbone](torch.zeros(1, 3, 75, 101))
    count = box_ops.prior_count(75, 101)
    assert loc.shape == (1, count, 4) and conf.shape == (1, count, 2) and landms.shape == (1, count, 10)
    torch.testing.assert_close(conf.sum(-1), torch.ones(1, count))


def test_postprocess_decodes_a_known_prediction_to_pixels():
    height, width = 64, 96
    priors = box_ops.prior_boxes(height, width)
    count = len(priors)
    loc, landms = np.zeros((count, 4), np.float32), np.zeros((count, 10), np.float32)
    conf = np.tile(np.array([[0.99, 0.01]], np.float32), (count, 1))
    index = 5  # a 16/32 px anchor on the stride-8 grid
    conf[index] = (0.05, 0.95)
    loc[index] = (1.0, -1.0, np.log(2.0) / 0.2, 0.0)  # shift by 0.1 prior sizes, double the width
    landms[index] = np.arange(10) / 10
    faces = postprocess(loc, conf, landms, height, width, confidence_threshold=0.5, nms_threshold=0.4)
    cx, cy, w, h = priors[index] * np.array([width, height, width, height])
    cx, cy, w = cx + 0.1 * w, cy - 0.1 * h, 2 * w
    np.testing.assert_allclose(faces.boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], rtol=1e-5)
    np.testing.assert_allclose(faces.scores, [0.95])
    pw, ph = priors[index, 2] * width, priors[index, 3] * height
    expected = priors[index, :2] * (width, height) + (np.arange(10).reshape(5, 2) / 10) * 0.1 * (pw, ph)
    np.testing.assert_allclose(faces.keypoints[0], expected, rtol=1e-5)


def test_nms_union_and_min_modes():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [2, 2, 5, 5]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # union (IoU, inclusive pixels): box 1 overlaps box 0 by 81/119 = 0.68; box 3 lies inside box 0 (0.16)
    assert box_ops.nms(boxes, scores, 0.4).tolist() == [3, 0, 2]
    # min: box 3 is fully covered by box 0 -> overlap 1 with the smaller area
    assert box_ops.nms(boxes, scores, 0.7, mode="min").tolist() == [3, 2]
    groups = np.array([0, 1, 0, 1])
    assert sorted(box_ops.batched_nms(boxes, scores, groups, 0.4).tolist()) == [0, 1, 2, 3]
    assert box_ops.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


# --- settings and config ---------------------------------------------------------------------------------


def test_config_parameters_parse_to_the_documented_defaults():
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = (ROOT / "model_repository" / "face_detector" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    assert from_model_config(FaceDetectorSettings, as_json) == FaceDetectorSettings()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backbone": "yolo"},
        {"runtime": "tensorrt"},
        {"runtime": "onnxruntime", "backbone": "mtcnn"},
        {"confidence_threshold": 1.5},
        {"max_faces": 0},
        {"min_face_size": 5},
        {"mtcnn_thresholds": (0.6, 0.7)},
    ],
)
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        FaceDetectorSettings(**kwargs)
