"""insightface (the `insightface` package on PyPI) as the oracle of our face alignment and of the ONNX pre- and
post-processing around ArcFace and genderage.

Both sides run the same tiny ONNX files, written here with the interfaces of buffalo_l's models (ArcFace
w600k_r50: `input.1` [N, 3, 112, 112] -> [N, 512], no normalisation in the graph; genderage: `data`
[N, 3, 96, 96] -> `fc1` [N, 3], a `bn_data` node first) and with the variants insightface's rules tell apart (an
mxnet-style ArcFace with Sub/Mul first, a genderage without `bn_data`, a fixed batch of one). The networks are a
strided convolution and a dense layer: every pixel and channel moves the output, so a wrong colour order, crop or
normalisation shows. insightface works on cv2's BGR images, ours on RGB: each side gets the same pixels in its
own order.

Compared: `face_align.estimate_norm` / `norm_crop` against alignment.py (matrices and crops, 112/128/224/256),
`ArcFaceONNX` (`get_feat` and `get`) against arcface.py's ONNX runner and embedder, `Attribute.get` (crop matrix,
network input, prediction, decoding) against content_safety/age.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from python_backends.content_safety.age import GenderAgeRunner, crop_matrix
from python_backends.face_embedding.alignment import ARCFACE_TEMPLATE, align_face, estimate_norm
from python_backends.face_embedding.arcface import ArcFaceEmbedder, ArcFaceOnnxRunner

# albumentations (imported by insightface's package __init__) asks PyPI for a newer version at import otherwise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# insightface's face_align calls SimilarityTransform.estimate, which scikit-image 0.26 deprecates: upstream's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
IMAGE_HW = (240, 320)
CROP_SIZES = (112, 128, 224, 256)
ONNX_WHY = "float32 on CPU; the same network on inputs equal to 1 ulp"


@pytest.fixture(scope="module")
def insightface():
    import insightface  # noqa: F401 - fails here, with the package's own message, if the parity extra is missing
    from insightface.app.common import Face
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.attribute import Attribute
    from insightface.utils import face_align

    return {"Face": Face, "ArcFaceONNX": ArcFaceONNX, "Attribute": Attribute, "face_align": face_align}


def _images(count: int, seed: int) -> np.ndarray:
    """RGB uint8 images with structure at every scale (gradients + noise), so that a misplaced crop shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : IMAGE_HW[0], 0 : IMAGE_HW[1]]
    base = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + 2 * y) * 2) % 256], axis=-1)
    return np.clip(base[None] + rng.integers(-40, 40, (count, *IMAGE_HW, 3)), 0, 255).astype(np.uint8)


def _keypoints(count: int, seed: int) -> np.ndarray:
    """Plausible 5-point faces: the template rotated, scaled, moved, each point jittered."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        angle, scale = np.deg2rad(rng.uniform(-40, 40)), rng.uniform(0.6, 2.2)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        centre = rng.uniform([60, 50], [IMAGE_HW[1] - 60, IMAGE_HW[0] - 50])
        points = (ARCFACE_TEMPLATE - 56.0) @ rotation.T + centre + rng.normal(0, 2.0, (5, 2))
        out.append(points.astype(np.float32))  # detectors hand insightface float32 keypoints
    return np.stack(out)


def _boxes(keypoints: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 face boxes around the keypoints (one runs off the image, as real boxes do)."""
    low, high = keypoints.min(axis=1), keypoints.max(axis=1)
    pad = (high - low) * 0.6
    boxes = np.concatenate([low - pad, high + pad], axis=1).astype(np.float32)
    boxes[0, :2] -= 90
    return boxes


def _conv_dense_onnx(path: Path, *, input_name: str, output_name: str, size: int, outputs: int, seed: int,
                     first_nodes: tuple[str, ...] = (), batch: int | str = "None") -> Path:
    """input [N, 3, size, size] -> Conv 8x8 stride 8 -> Flatten -> Gemm -> output [N, outputs].

    first_nodes: ops put in front, named as insightface looks for them: "bn_data" (BatchNormalization), "Sub",
    "Mul" (an mxnet-style in-graph normalisation (x - 127.5) * (1 / 127.5)); their names are what decides.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    channels, grid = 4, size // 8
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (channels, 3, 8, 8)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 0.05, (outputs, channels * grid * grid)).astype(np.float32),
                                     "fc_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, outputs).astype(np.float32), "fc_b")]
    nodes, source = [], input_name
    for name in first_nodes:
        if name == "bn_data":
            for part, values in (("gamma", rng.uniform(0.5, 1.5, 3)), ("beta", rng.normal(0, 0.1, 3)),
                                 ("mean", np.full(3, 127.5)), ("var", np.full(3, 127.5**2))):
                inits.append(numpy_helper.from_array(values.astype(np.float32), f"bn_{part}"))
            nodes.append(helper.make_node("BatchNormalization", [source, "bn_gamma", "bn_beta", "bn_mean", "bn_var"],
                                          ["bn_out"], name="bn_data", epsilon=0.0))
            source = "bn_out"
        else:
            constant = {"Sub": 127.5, "Mul": 1 / 127.5}[name]
            inits.append(numpy_helper.from_array(np.array(constant, np.float32), f"{name}_c"))
            nodes.append(helper.make_node(name, [source, f"{name}_c"], [f"{name}_out"], name=f"{name}_{len(nodes)}"))
            source = f"{name}_out"
    nodes += [helper.make_node("Conv", [source, "conv_w"], ["conv_out"], name="Conv_0", strides=[8, 8],
                               kernel_shape=[8, 8]),
              helper.make_node("Flatten", ["conv_out"], ["flat"], name="Flatten_0"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [output_name], name="Gemm_0", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


ARCFACE_VARIANTS = {
    "w600k_r50 layout": {"input_name": "input.1", "output_name": "683", "first_nodes": ()},
    "mxnet layout (Sub, Mul first)": {"input_name": "data", "output_name": "fc1", "first_nodes": ("Sub", "Mul")},
    "fixed batch of 1": {"input_name": "input.1", "output_name": "683", "first_nodes": (), "batch": 1},
}
GENDERAGE_VARIANTS = {
    "genderage layout (bn_data)": ("bn_data",),
    "no in-graph normalisation": (),
}


def test_alignment(insightface, parity) -> None:
    """estimate_norm's similarity and norm_crop's pixels, for every crop size insightface takes."""
    face_align = insightface["face_align"]
    images, keypoints = _images(4, seed=1), _keypoints(12, seed=2)
    for size in CROP_SIZES:
        ours = np.stack([estimate_norm(points, size) for points in keypoints])
        theirs = np.stack([face_align.estimate_norm(points, size) for points in keypoints])
        parity.check("ArcFace alignment: similarity matrix (estimate_norm)", ours, theirs, tolerance=1e-12,
                     why="float64 least squares; the same solution", case=f"{size} px, 12 faces")
        our_crops = np.stack([align_face(images[i % 4], points, size) for i, points in enumerate(keypoints)])
        their_crops = np.stack([face_align.norm_crop(np.ascontiguousarray(images[i % 4][..., ::-1]), points, size)
                                for i, points in enumerate(keypoints)])[..., ::-1]
        parity.check("ArcFace alignment: aligned crops (norm_crop)", our_crops, their_crops, tolerance=0.0,
                     why="uint8 pixels from the same cv2.warpAffine call", case=f"{size} px, 12 faces")


@pytest.mark.parametrize("variant", ARCFACE_VARIANTS)
def test_arcface_onnx(insightface, parity, tmp_path, variant) -> None:
    """ArcFaceONNX's normalisation rule, get_feat on aligned crops and get on whole images against ours."""
    spec = ARCFACE_VARIANTS[variant]
    path = _conv_dense_onnx(tmp_path / "arcface.onnx", size=112, outputs=512, seed=3, **spec)
    theirs = insightface["ArcFaceONNX"](model_file=str(path))
    ours = ArcFaceOnnxRunner(path)
    parity.check("ArcFace ONNX: input normalisation (mean, std)", [ours.input_mean, ours.input_std],
                 [theirs.input_mean, theirs.input_std], tolerance=0.0, why="constants", case=variant)
    crops = np.random.default_rng(4).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)  # RGB
    bgr = [np.ascontiguousarray(crop[..., ::-1]) for crop in crops]
    # A fixed batch of one takes one crop per call, insightface's only way; ours pads and splits a batch itself.
    their_feats = np.concatenate([theirs.get_feat(image) for image in bgr]) if "batch" in spec else theirs.get_feat(bgr)
    parity.check("ArcFace ONNX: embeddings of aligned crops (get_feat)", ours.embed(crops), their_feats,
                 why=ONNX_WHY, case=variant)

    images, keypoints = _images(3, seed=5), _keypoints(3, seed=6)
    Face = insightface["Face"]
    their_embeddings = np.stack([theirs.get(np.ascontiguousarray(image[..., ::-1]), Face(kps=points))
                                 for image, points in zip(images, keypoints)])
    our_embeddings = ArcFaceEmbedder(ours).embed_faces(images, _boxes(keypoints), keypoints)
    parity.check("ArcFace ONNX: embeddings of whole images (get: norm_crop + get_feat)", our_embeddings,
                 their_embeddings, why=ONNX_WHY, case=variant)


@pytest.mark.parametrize("variant", GENDERAGE_VARIANTS)
def test_genderage(insightface, parity, tmp_path, variant) -> None:
    """Attribute.get: crop matrix, network input and output, gender and age, against content_safety/age.py."""
    path = _conv_dense_onnx(tmp_path / "genderage.onnx", input_name="data", output_name="fc1", size=96, outputs=3,
                            seed=7, first_nodes=GENDERAGE_VARIANTS[variant])
    theirs = insightface["Attribute"](model_file=str(path))
    assert theirs.taskname == "genderage"
    ours = GenderAgeRunner(path)
    parity.check("genderage: input normalisation (mean, std)", [ours.mean, ours.std],
                 [theirs.input_mean, theirs.input_std], tolerance=0.0, why="constants", case=variant)

    seen: list[tuple[np.ndarray, np.ndarray]] = []  # (network input, output) of every official run
    session_run = theirs.session.run

    def recording_run(names, feeds):
        outputs = session_run(names, feeds)
        seen.append((next(iter(feeds.values())), outputs[0]))
        return outputs

    theirs.session = type("RecordingSession", (), {"run": staticmethod(recording_run)})()
    keypoints = _keypoints(6, seed=8)
    images, boxes = _images(6, seed=9), _boxes(keypoints)
    Face = insightface["Face"]
    results = [theirs.get(np.ascontiguousarray(image[..., ::-1]), Face(bbox=box)) for image, box in zip(images, boxes)]
    face_align = insightface["face_align"]
    their_matrices = []
    for box in boxes:
        w, h = box[2] - box[0], box[3] - box[1]  # Attribute.get's own arithmetic, to ask face_align for its matrix
        centre = (box[2] + box[0]) / 2, (box[3] + box[1]) / 2
        their_matrices.append(face_align.transform(np.zeros((1, 1, 3), np.uint8), centre, 96,
                                                   96 / (max(w, h) * 1.5), 0)[1])
    parity.check("genderage: face crop matrix (face_align.transform)",
                 np.stack([crop_matrix(box, 96) for box in boxes]), np.stack(their_matrices), tolerance=0.0,
                 why="the same arithmetic on the same float32 box", case=variant)
    parity.check("genderage: network input (crop + blobFromImage)", ours.blobs(images, boxes),
                 np.concatenate([blob for blob, _ in seen]), why=ONNX_WHY, case=variant)
    estimates = ours.estimate(images, boxes)
    predictions = np.concatenate([prediction for _, prediction in seen])
    parity.check("genderage: age in years before insightface's display rounding", [e.age for e in estimates],
                 predictions[:, 2] * 100, why=ONNX_WHY, case=variant)
    assert [round(e.age) for e in estimates] == [age for _, age in results]
    assert [e.gender for e in estimates] == ["M" if gender == 1 else "F" for gender, _ in results]
    assert len({gender for gender, _ in results}) == 2, "both genders should occur among the random faces"
