"""face_landmarks: shipped dlib landmarks on a real photo, head-pose conventions, the official HRNet
layout and loading, ONNX parity, and the official crop / heatmap decoding geometry."""

from __future__ import annotations

import math
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from python_backends import spec
from python_backends.errors import InputError, WeightsUnavailable
from python_backends.face_landmarks import (
    FaceLandmarksSettings,
    build_face_landmarks,
    choose_weights,
    head_pose_from_landmarks,
    yaw_from_keypoints,
)
from python_backends.face_landmarks import head_pose as hp
from python_backends.face_landmarks import transforms as tf
from python_backends.face_landmarks.checkpoint import load_hrnet, num_joints_of, read_state_dict
from python_backends.face_landmarks.hrnet import HighResolutionNet, HRNetConfig
from python_backends.settings import from_mapping
from python_backends.weights import OFFICIAL, SHIPPED

W18_KEYS = 1839  # state-dict entries of the official W18 network (BN counters included)
# A sample of official key names and shapes, read off lib/models/hrnet.py with the W18 experiment config:
# None entries in transition / fuse ModuleLists leave gaps in the indices; new branches nest one level deeper.
OFFICIAL_SHAPES = {
    "conv1.weight": (64, 3, 3, 3),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.3.conv3.weight": (256, 64, 1, 1),
    "transition1.0.0.weight": (18, 256, 3, 3),
    "transition1.1.0.0.weight": (36, 256, 3, 3),
    "transition2.2.0.0.weight": (72, 36, 3, 3),
    "transition3.3.0.0.weight": (144, 72, 3, 3),
    "stage2.0.branches.1.3.conv2.weight": (36, 36, 3, 3),
    "stage2.0.fuse_layers.0.1.0.weight": (18, 36, 1, 1),
    "stage2.0.fuse_layers.1.0.0.0.weight": (36, 18, 3, 3),
    "stage3.3.fuse_layers.2.0.1.0.weight": (72, 18, 3, 3),
    "stage4.2.fuse_layers.3.0.1.0.weight": (18, 18, 3, 3),
    "stage4.2.fuse_layers.3.0.2.1.running_var": (144,),
    "stage4.2.branches.3.3.bn2.bias": (144,),
    "head.0.weight": (270, 270, 1, 1),
    "head.0.bias": (270,),
    "head.1.running_mean": (270,),
    "head.3.weight": (98, 270, 1, 1),
    "head.3.bias": (98,),
}
ABSENT = ("transition2.0.0.weight", "transition2.1.0.weight", "stage2.0.fuse_layers.0.0.0.weight", "sf")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def astronaut(samples) -> np.ndarray:
    return np.asarray(Image.open(samples / "astronaut.png").convert("RGB"))


_BOXES: dict[bytes, np.ndarray] = {}


def _dlib_box(image: np.ndarray) -> np.ndarray:
    """The face box dlib's HOG detector finds (cached: the detector takes a while on 2 cores)."""
    import dlib

    key = image[::7, ::7].tobytes()
    if key not in _BOXES:
        rects, scores, _ = dlib.get_frontal_face_detector().run(image, 1, 0.0)
        assert len(rects) >= 1, "the sample photo holds a frontal face"
        r = rects[int(np.argmax(scores))]  # the HOG detector also fires weakly on the space suit's patch
        _BOXES[key] = np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float32)
    return _BOXES[key].copy()


@pytest.fixture(scope="module")
def no_weights(tmp_path_factory) -> object:
    return tmp_path_factory.mktemp("no-weights")


@pytest.fixture(scope="module")
def dlib_model(no_weights):
    return build_face_landmarks(FaceLandmarksSettings(engine="dlib"), "cpu", root=no_weights)


@pytest.fixture(scope="module")
def mesh_model(no_weights):
    return build_face_landmarks(FaceLandmarksSettings(), "cpu", root=no_weights)


def _predict(model, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = model.predict({spec.IMAGE: image[None], spec.FACE_BOX: box[None]})
    assert len(out) == 1
    return out[0][spec.LANDMARKS], out[0][spec.HEAD_POSE]


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return net.eval()


# ---------------------------------------------------------------- shipped dlib default, real photo


def test_default_is_mediapipe_face_mesh(mesh_model):
    weights = mesh_model.weights
    assert (weights.engine, weights.source, weights.commercial_use) == ("mediapipe-facemesh-468", SHIPPED, "allowed")
    assert weights.path.name == "face_landmark.tflite" and "Apache-2.0" in weights.licence


def test_face_mesh_agrees_with_dlib_and_mirrors(mesh_model, dlib_model, astronaut):
    """The mesh's iBUG-68 subset lands where dlib's points are (normalised by the eye distance), and the head pose
    from it mirrors with the photo."""
    box = _dlib_box(astronaut)
    mesh, pose = _predict(mesh_model, astronaut, box)
    assert mesh.shape == (468, 2) and mesh.dtype == np.float32 and pose.shape == (3,)
    dlib_marks, dlib_pose = _predict(dlib_model, astronaut, box)
    subset = hp.to_ibug68(mesh)
    eye_distance = np.linalg.norm(dlib_marks[36:42].mean(0) - dlib_marks[42:48].mean(0))
    inner = np.linalg.norm(subset[17:] - dlib_marks[17:], axis=1).mean() / eye_distance
    assert inner < 0.08, f"inner-face NME {inner:.3f} against dlib"
    assert np.all(np.abs(pose - dlib_pose) < 10), (pose, dlib_pose)
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    mesh_f, pose_f = _predict(mesh_model, flipped, _dlib_box(flipped))
    assert abs(pose[0] + pose_f[0]) < 5 and abs(pose[2] + pose_f[2]) < 5
    width = astronaut.shape[1]
    assert abs((width - 1 - mesh_f[1, 0]) - mesh[1, 0]) < 3  # the nose tip (mesh point 1) mirrors onto itself


def test_dlib_only_when_asked_with_licence_note(dlib_model):
    weights = dlib_model.weights
    assert (weights.engine, weights.source) == ("dlib-shape-predictor-68", SHIPPED)
    assert weights.path.name == "shape_predictor_68_face_landmarks.dat" and weights.path.exists()
    assert "300-W" in weights.licence and "commercial" in weights.licence
    assert "commercial" in weights.note


def test_dlib_landmarks_and_pose_on_frontal_photo(dlib_model, astronaut):
    box = _dlib_box(astronaut)
    landmarks, pose = _predict(dlib_model, astronaut, box)
    assert landmarks.shape == (68, 2) and landmarks.dtype == np.float32
    assert pose.shape == (3,) and pose.dtype == np.float32
    size = box[2] - box[0]
    margin = 0.2 * size  # the jaw line reaches a little past the detector's box
    assert np.all(landmarks >= box[:2] - margin) and np.all(landmarks <= box[2:] + margin)
    inside = np.all((landmarks >= box[:2]) & (landmarks <= box[2:]), axis=1)
    assert inside.mean() > 0.8
    # Anatomy in image order: brows above eyes above nose tip above mouth above chin; eyes left/right.
    parts = {"brows": slice(17, 27), "eyes": slice(36, 48), "nose": [30], "mouth": slice(48, 68), "chin": [8]}
    ys = {name: landmarks[idx, 1].mean() for name, idx in parts.items()}
    assert ys["brows"] < ys["eyes"] < ys["nose"] < ys["mouth"] < ys["chin"]
    assert landmarks[36:42, 0].mean() < landmarks[27, 0] < landmarks[42:48, 0].mean()
    yaw, pitch, roll = pose
    assert abs(yaw) < 20 and abs(pitch) < 25 and abs(roll) < 15


def test_mirrored_photo_mirrors_yaw_and_roll(dlib_model, astronaut):
    _, (yaw, pitch, roll) = _predict(dlib_model, astronaut, _dlib_box(astronaut))
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    marks_f, (yaw_f, pitch_f, roll_f) = _predict(dlib_model, flipped, _dlib_box(flipped))
    assert yaw * yaw_f <= 0 or max(abs(yaw), abs(yaw_f)) < 3
    assert roll * roll_f <= 0 or max(abs(roll), abs(roll_f)) < 3
    assert abs(yaw + yaw_f) < 5 and abs(roll + roll_f) < 5 and abs(pitch - pitch_f) < 6
    # The nose tip (a point on the symmetry axis) lands on the mirror of itself.
    marks, _ = _predict(dlib_model, astronaut, _dlib_box(astronaut))
    width = astronaut.shape[1]
    assert abs((width - 1 - marks_f[30, 0]) - marks[30, 0]) < 3 and abs(marks_f[30, 1] - marks[30, 1]) < 3


def test_keypoint_yaw_agrees_with_pnp_on_photo(dlib_model, astronaut):
    for image in (astronaut, np.ascontiguousarray(astronaut[:, ::-1])):
        marks, pose = _predict(dlib_model, image, _dlib_box(image))
        kps = np.array([marks[36:42].mean(0), marks[42:48].mean(0), marks[30], marks[48], marks[54]])
        assert abs(yaw_from_keypoints(kps) - float(pose[0])) < 8


def test_bad_boxes_and_images_are_input_errors(dlib_model, astronaut):
    h, w = astronaut.shape[:2]
    for box in ([100, 100, 90, 200], [0, 0, 4, 4], [w + 10, 0, w + 100, 90], [np.nan, 0, 50, 50]):
        with pytest.raises(InputError, match="face_box"):
            _predict(dlib_model, astronaut, np.array(box, dtype=np.float32))
    with pytest.raises(InputError, match="UINT8"):
        dlib_model.predict({spec.IMAGE: astronaut[None].astype(np.float32), spec.FACE_BOX: np.zeros((1, 4))})


# ---------------------------------------------------------------- head pose geometry


def _project(points3d: np.ndarray, rotation: np.ndarray, translation, width=640, height=480) -> np.ndarray:
    rvec, _ = cv2.Rodrigues(rotation)
    k = hp.camera_matrix(width, height)
    out, _ = cv2.projectPoints(points3d, rvec, np.asarray(translation, dtype=np.float64), k, np.zeros(4))
    return out.reshape(-1, 2)


def _synthetic_landmarks(rotation: np.ndarray, translation, layout: int = 68) -> np.ndarray:
    marks = np.full((68, 2), 320.0)  # points the solver does not use
    marks[hp.POSE_INDICES] = _project(hp.MODEL_POINTS, rotation, translation)
    if layout == 68:
        return marks
    wflw = np.full((98, 2), 320.0)
    wflw[hp.WFLW98_TO_IBUG68] = marks
    return wflw


ANGLES = [(0, 0, 0), (25, 0, 0), (-30, 10, 5), (15, -20, -10), (40, 15, 20), (-10, -5, 30), (5, 25, -25)]


@pytest.mark.parametrize("angles", ANGLES)
@pytest.mark.parametrize("layout", [68, 98])
def test_pnp_recovers_known_angles(angles, layout):
    marks = _synthetic_landmarks(hp.rotation_from_angles(*angles), (0.0, 0.0, 650.0), layout)
    for line_of_sight in (True, False):  # the same on the optical axis
        got = head_pose_from_landmarks(marks, 640, 480, line_of_sight=line_of_sight)
        assert np.allclose(got, angles, atol=2.0), (got, angles)


def test_line_of_sight_reference_for_off_centre_face():
    translation = np.array([180.0, -120.0, 700.0])  # up and to the right in the frame
    angles = (12.0, -8.0, 6.0)
    rotation = hp.line_of_sight_rotation(translation) @ hp.rotation_from_angles(*angles)
    marks = _synthetic_landmarks(rotation, translation)
    assert np.allclose(head_pose_from_landmarks(marks, 640, 480), angles, atol=2.0)
    axis = head_pose_from_landmarks(marks, 640, 480, line_of_sight=False)
    # From the optical axis, a face up and right in the frame that looks at the lens faces left and down.
    assert axis[0] < angles[0] - 8 and axis[1] < angles[1] - 5


def test_angle_signs_mean_what_the_docs_say():
    nose, left_eye, right_eye = (hp.POSE_INDICES.tolist().index(i) for i in (30, 36, 45))

    def view(yaw=0.0, pitch=0.0, roll=0.0):
        return _project(hp.MODEL_POINTS, hp.rotation_from_angles(yaw, pitch, roll), (0.0, 0.0, 650.0))

    front, turned, up, tilted = view(), view(yaw=20), view(pitch=20), view(roll=20)
    eyes_mid = lambda p: (p[left_eye] + p[right_eye]) / 2  # noqa: E731
    # yaw > 0: turning toward the image's right moves the nose tip right of the eyes' midpoint.
    assert (turned[nose] - eyes_mid(turned))[0] > (front[nose] - eyes_mid(front))[0] + 5
    # pitch > 0: looking up brings the nose tip closer to the eye line in the image.
    assert (up[nose] - eyes_mid(up))[1] < (front[nose] - eyes_mid(front))[1] - 5
    # roll > 0: clockwise tilt drops the eye on the image's right.
    assert tilted[right_eye][1] > tilted[left_eye][1] + 5
    for yaw, pitch, roll in ANGLES:
        r = hp.rotation_from_angles(yaw, pitch, roll)
        assert np.allclose(hp.angles_from_rotation(r), (yaw, pitch, roll), atol=1e-6)


@pytest.mark.parametrize("yaw", [-40, -20, -5, 0, 10, 30, 45])
def test_yaw_from_keypoints_on_synthetic_faces(yaw):
    half, depth = hp.EYE_CENTRE_HALF_DISTANCE, hp.NOSE_DEPTH_BEFORE_EYES
    eye_z = 4.0
    eyes = [[-half, 0, eye_z], [half, 0, eye_z]]
    kps3d = np.array(eyes + [[0, 30, eye_z - depth], [-25, 65, -3], [25, 65, -3]])
    kps = _project(kps3d, hp.rotation_from_angles(yaw, 5.0, 10.0), (0.0, 0.0, 900.0))
    assert abs(yaw_from_keypoints(kps) - yaw) < max(3.0, 0.1 * abs(yaw))  # weak perspective, some pitch
    swapped = kps[[1, 0, 2, 4, 3]]  # the eye order does not matter
    assert yaw_from_keypoints(swapped) == pytest.approx(yaw_from_keypoints(kps))
    with pytest.raises(InputError):
        yaw_from_keypoints(np.zeros((5, 2)))


def test_wflw_reduction_keeps_the_semantic_points():
    mapping = hp.WFLW98_TO_IBUG68
    assert mapping.shape == (68,) and len(set(mapping.tolist())) == 68 and mapping.max() < 96
    # chin, eye corners, nose tip, mouth corners in WFLW numbering
    assert [mapping[i] for i in (8, 36, 39, 42, 45, 30, 48, 54)] == [16, 60, 64, 68, 72, 54, 76, 82]


# ---------------------------------------------------------------- official crop / decoding geometry


def test_decode_synthetic_heatmap_peaks():
    yy, xx = np.mgrid[0:64, 0:64]
    gauss = lambda cx, cy: np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2))  # noqa: E731
    heatmaps = np.zeros((2, 3, 64, 64), dtype=np.float32)
    heatmaps[0, 0] = gauss(20, 37)  # on a pixel: symmetric neighbours, no quarter shift
    heatmaps[0, 1] = gauss(20.3, 37.8)  # between pixels: a quarter toward the higher neighbour
    heatmaps[0, 2, 5, 0] = 1.0  # on the border: left alone
    heatmaps[1, 0] = gauss(50.6, 10.1)
    coords = tf.decode_heatmaps(heatmaps)
    assert coords.shape == (2, 3, 2)
    assert np.allclose(coords[0, 0], (20.5, 37.5))
    assert np.allclose(coords[0, 1], (20.75, 38.25))
    assert np.allclose(coords[0, 2], (0.5, 5.5))
    assert np.allclose(coords[1, 0], (51.25, 10.75))
    # Continuous truth (pixel-centre coordinate + 0.5) is within a quarter pixel.
    assert np.all(np.abs(coords[0, 1] - (20.8, 38.3)) <= 0.25)
    # Back to the image: a 64-pixel heatmap spans 200 * scale pixels around the centre.
    center, scale = np.array([300.0, 200.0]), 1.28
    assert np.allclose(
        tf.heatmap_to_image(np.array([[32.0, 32.0], [0.0, 64.0]]), center, scale),
        [[300.0, 200.0], [300.0 - 128.0, 200.0 + 128.0]],
    )
    assert np.allclose(
        tf.image_to_heatmap(tf.heatmap_to_image(coords[0], center, scale), center, scale), coords[0]
    )


def test_crop_maps_back_through_the_inverse_transform(astronaut):
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    image[:] = 40
    dot = np.array([237.0, 121.0])
    image[int(dot[1]) - 1 : int(dot[1]) + 2, int(dot[0]) - 1 : int(dot[0]) + 2] = 255
    for box in ([180, 60, 300, 190], [150, 20, 390, 290]):
        center, scale = tf.box_to_center_scale(np.array(box, dtype=np.float64))
        crop = tf.crop_face(image, center, scale)
        assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
        assert crop.min() == 0 and crop.max() == 255  # the official min-max stretch (with zero padding)
        ky, kx = np.unravel_index(crop[..., 0].astype(np.int32).argmax(), crop.shape[:2])
        found = tf.heatmap_to_image(np.array([(kx + 0.5) / 4.0, (ky + 0.5) / 4.0]), center, scale)
        pixel = 200.0 * scale / 256.0
        assert np.all(np.abs(found - dot) < 1.0 + 1.5 * pixel), (found, dot)
    # Large faces take the official shrink-first path; the geometry must not change.
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.BILINEAR))
    center, scale = np.array([880.0, 480.0]), 4.0
    small_crop = tf.crop_face(astronaut, center / 4.0, scale / 4.0)
    big_crop = tf.crop_face(big, center, scale)
    assert np.abs(small_crop.astype(int) - big_crop.astype(int)).mean() < 12


# ---------------------------------------------------------------- official HRNet layout and loading


# Narrow widths keep every official key name (only the channel counts shrink): fast loader tests.
SMALL = HRNetConfig(num_joints=68, stem_width=8, widths=(4, 8, 16, 32))


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in _randomise_bn(HighResolutionNet(SMALL)).state_dict().items()}


def test_network_has_the_official_w18_layout():
    state = HighResolutionNet(HRNetConfig.w18(98)).state_dict()
    assert len(state) == W18_KEYS
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith(ABSENT) for key in state)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.numel() for k, v in state.items() if not k.endswith(buffers))
    assert 9.3e6 < params < 9.8e6  # HRNetV2-W18 plus the 270-channel head


def test_checkpoint_loads_bare_and_wrapped(tmp_path, small_state):
    bare = tmp_path / "HR18-300W.pth"
    torch.save(small_state, bare)
    assert num_joints_of(read_state_dict(bare), "bare") == 68
    net = load_hrnet(bare, SMALL)
    assert not net.training
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in small_state.items())
    wrapped = tmp_path / "checkpoint.pth"  # official training loop: {"state_dict": ...} with module. prefix
    torch.save({"state_dict": {"module." + k: v for k, v in small_state.items()}, "epoch": 60}, wrapped)
    assert torch.equal(load_hrnet(wrapped, SMALL).state_dict()["head.3.bias"], small_state["head.3.bias"])
    old = {k: v for k, v in small_state.items() if not k.endswith("num_batches_tracked")}  # torch < 0.4.1
    torch.save(old, tmp_path / "old.pth")
    loaded_old = load_hrnet(tmp_path / "old.pth", SMALL).state_dict()
    assert torch.equal(loaded_old["conv1.weight"], old["conv1.weight"])


def test_checkpoint_rejects_foreign_files(tmp_path, small_state):
    missing = dict(small_state)
    del missing["stage3.2.branches.1.3.bn2.running_var"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsUnavailable, match=r"missing key.*stage3\.2\.branches\.1\.3\.bn2\.running_var"):
        load_hrnet(tmp_path / "missing.pth", SMALL)

    key = "stage4.0.fuse_layers.3.0.2.0.weight"
    torch.save(dict(small_state, **{key: torch.zeros(32, 4, 1, 1)}), tmp_path / "misshaped.pth")
    wanted = re.escape(f"'{key}' has shape (32, 4, 1, 1), expected (32, 4, 3, 3)")
    with pytest.raises(WeightsUnavailable, match=wanted):
        load_hrnet(tmp_path / "misshaped.pth", SMALL)
    # A W18 file read as W18: the 300W head (68 maps) does not fit a WFLW network (98).
    with pytest.raises(WeightsUnavailable, match=r"'head\.3\.weight' has shape \(68, 60, 1, 1\)"):
        load_hrnet(tmp_path / "misshaped.pth", HRNetConfig(98, 8, (4, 8, 16, 32)))

    extra = dict(small_state, **{"final_layer.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsUnavailable, match="unexpected key.*final_layer.weight"):
        load_hrnet(tmp_path / "extra.pth", SMALL)

    (tmp_path / "page.pth").write_text("<html>not found</html>")
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        read_state_dict(tmp_path / "page.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsUnavailable, match="not a state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from python_backends.face_landmarks.onnx_export import INPUT_NAME, export_onnx

    torch.manual_seed(1)
    # Every kind of layer W18 has (transitions, all fuse paths, the head), fewer repeats: a quick export.
    config = HRNetConfig(98, stem_width=8, widths=(4, 8, 16, 32), num_blocks=1, stage_modules=(1, 1, 1))
    net = _randomise_bn(HighResolutionNet(config))
    path = export_onnx(net, tmp_path / "hrnet.onnx", batch=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 256, 256)  # another batch size than the export's: the axis is dynamic
    (got,) = session.run(None, {INPUT_NAME: x.numpy()})
    with torch.inference_mode():
        want = net(x).numpy()
    assert got.shape == want.shape == (3, 98, 64, 64)
    assert np.allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


# ---------------------------------------------------------------- weights choice and the HRNet predictor


def test_choose_weights_prefers_official_checkpoints(tmp_path, no_weights):
    folder = tmp_path / "face_landmarks"
    folder.mkdir()
    (folder / "HR18-300W.pth").write_bytes(b"x")
    assert choose_weights(FaceLandmarksSettings(), tmp_path).engine == "hrnet-w18-300w68"
    (folder / "HR18-WFLW.pth").write_bytes(b"x")
    chosen = choose_weights(FaceLandmarksSettings(), tmp_path)
    assert (chosen.engine, chosen.source, chosen.path.name) == ("hrnet-w18-wflw98", OFFICIAL, "HR18-WFLW.pth")
    assert choose_weights(FaceLandmarksSettings(hrnet_dataset="300w"), tmp_path).engine == "hrnet-w18-300w68"
    assert choose_weights(FaceLandmarksSettings(engine="dlib"), tmp_path).source == SHIPPED
    assert choose_weights(FaceLandmarksSettings(engine="mediapipe"), tmp_path).engine == "mediapipe-facemesh-468"
    with pytest.raises(WeightsUnavailable, match="HR18-WFLW.pth or HR18-300W.pth"):
        choose_weights(FaceLandmarksSettings(engine="hrnet"), no_weights)


def test_settings_parse_and_reject():
    settings = from_mapping(FaceLandmarksSettings, {"engine": "hrnet", "crop_scale": "1.3"})
    assert settings.engine == "hrnet" and settings.crop_scale == 1.3
    from python_backends.errors import ConfigError

    with pytest.raises(ConfigError, match="engine"):
        from_mapping(FaceLandmarksSettings, {"engine": "openface"})
    with pytest.raises(ConfigError, match="pose_reference"):
        from_mapping(FaceLandmarksSettings, {"pose_reference": "world"})


def test_hrnet_predictor_batches_one_forward_and_decodes(tmp_path, dlib_model, astronaut):
    folder = tmp_path / "face_landmarks"
    folder.mkdir()
    torch.save(HighResolutionNet(HRNetConfig.w18(68)).state_dict(), folder / "HR18-300W.pth")  # real W18
    model = build_face_landmarks(FaceLandmarksSettings(), "cpu", root=tmp_path)
    assert (model.weights.engine, model.weights.source) == ("hrnet-w18-300w68", OFFICIAL)

    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    images = np.stack([astronaut, flipped, astronaut])
    boxes = np.stack([_dlib_box(astronaut), _dlib_box(flipped), _dlib_box(astronaut) + [6, -4, 10, 2]])
    truth = [_predict(dlib_model, image, box) for image, box in zip(images, boxes)]

    # Replace the random network's output by heatmaps that peak at known landmarks (official training
    # targets: a Gaussian at the landmark's heatmap position), so the crop -> decode -> pose chain is
    # checked end to end while the real forward still runs once for the whole batch.
    calls = []

    def known_heatmaps(module, inputs, output):
        calls.append(tuple(inputs[0].shape))
        yy, xx = np.mgrid[0:64, 0:64]
        maps = np.zeros(tuple(output.shape), dtype=np.float32)
        for i, (box, (marks, _)) in enumerate(zip(boxes, truth)):
            center, scale = tf.box_to_center_scale(box)
            for j, (u, v) in enumerate(tf.image_to_heatmap(marks, center, scale) - 0.5):
                maps[i, j] = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 1.0**2))
        return torch.from_numpy(maps)

    model.engine.net.register_forward_hook(known_heatmaps)
    out = model.predict({spec.IMAGE: images, spec.FACE_BOX: boxes})
    assert calls == [(3, 3, 256, 256)]
    for (marks, pose), result, box in zip(truth, out, boxes):
        assert result[spec.LANDMARKS].shape == (68, 2) and result[spec.LANDMARKS].dtype == np.float32
        pixel = (box[2] - box[0]) * 1.25 / 64  # one heatmap pixel in the image
        error = np.linalg.norm(result[spec.LANDMARKS] - marks, axis=1)
        assert error.max() < 0.75 * pixel * math.sqrt(2)
        assert np.allclose(result[spec.HEAD_POSE], pose, atol=4.0)
