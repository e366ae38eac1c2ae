"""Wav2Lip mouth pass: the official checkpoint layout and strict loader, inference.py's per-frame steps, the
feathered blend, plosive detection, and the mouth_refiner model's weights choice and config."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import numpy as np
import pytest
import torch

from python_backends import spec
from python_backends.errors import ConfigError, InputError, WeightsUnavailable
from python_backends.mouth_refiner import (
    MouthRefinerSettings,
    Wav2Lip,
    build_mouth_refiner,
    choose_weights,
    load_wav2lip,
    plosive_frames,
    refine_runs,
)
from python_backends.mouth_refiner.plosive import burst_times
from python_backends.mouth_refiner.refiner import (
    blend_mask,
    contour_mask,
    mel_windows,
    network_inputs,
    padded_boxes,
    smooth_boxes,
)
from python_backends.settings import from_mapping
from python_backends.weights import OFFICIAL, UNAVAILABLE

SR = 16000


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """A random real-size Wav2Lip state dict. Its BatchNorm statistics are measured on random inputs, as
    training would, so activations stay in range and the output depends on the mel (with the default
    statistics the deep random net saturates its sigmoid and ignores the audio)."""
    torch.manual_seed(0)
    model = Wav2Lip()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        model.train()(torch.rand(2, 1, 80, 16) * 8 - 4, torch.from_numpy(network_inputs(
            np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8))))
    return model.state_dict()


def _save_official(path, state, legacy: bool = False) -> None:
    """torch.save as wav2lip_train.py's save_checkpoint: DataParallel keys, Adam state, step and epoch.
    `legacy`: the pre-1.6 serialisation the published files were written with (the repo pins torch 1.1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [torch.nn.Parameter(torch.zeros(1))]
    torch.save({
        "state_dict": {"module." + k: v for k, v in state.items()},
        "optimizer": torch.optim.Adam(params, lr=1e-4).state_dict(),
        "global_step": 123,
        "global_epoch": 4,
    }, path, _use_new_zipfile_serialization=not legacy)


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory, official_state):
    root = tmp_path_factory.mktemp("weights")
    _save_official(root / "mouth_refiner" / "wav2lip_gan.pth", official_state)
    return root


@pytest.fixture(scope="module")
def predictor(weights_root):
    return build_mouth_refiner(MouthRefinerSettings(), "cpu", weights_root)


@pytest.fixture(scope="module")
def astronaut(samples):
    """The sample photo and its dlib face box (x1, y1, x2, y2)."""
    import dlib
    from PIL import Image

    image = np.asarray(Image.open(samples / "astronaut.png").convert("RGB"))
    rect = max(dlib.get_frontal_face_detector()(image, 1), key=lambda r: r.area())
    return image, np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)


def _run(astronaut, count=3, step=3):
    """`count` frames of the photo moving right by `step` px per frame, with their boxes."""
    image, box = astronaut
    frames = np.stack([np.roll(image, i * step, axis=1) for i in range(count)])
    boxes = np.stack([box + np.array([i * step, 0, i * step, 0], np.float32) for i in range(count)])
    return frames, boxes


def _mel(frames=200, seed=0):
    return np.random.default_rng(seed).uniform(-4, 4, (80, frames)).astype(np.float32)


# ---------------------------------------------------------------- network and checkpoints ----

def test_state_dict_layout_matches_the_official_code(official_state):
    shapes = {k: tuple(v.shape) for k, v in official_state.items()}
    assert len(shapes) == 352 and sum(v.numel() for k, v in official_state.items()
                                      if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                                      ) == 36_298_035
    assert shapes["face_encoder_blocks.0.0.conv_block.0.weight"] == (16, 6, 7, 7)
    assert shapes["face_encoder_blocks.6.1.conv_block.0.weight"] == (512, 512, 1, 1)
    assert shapes["audio_encoder.0.conv_block.0.weight"] == (32, 1, 3, 3)
    assert shapes["audio_encoder.12.conv_block.0.weight"] == (512, 512, 1, 1)
    assert shapes["face_decoder_blocks.1.0.conv_block.0.weight"] == (1024, 512, 3, 3)  # ConvTranspose2d
    assert shapes["face_decoder_blocks.6.0.conv_block.0.weight"] == (160, 64, 3, 3)
    assert shapes["face_decoder_blocks.6.2.conv_block.1.running_var"] == (64,)
    assert shapes["output_block.0.conv_block.0.weight"] == (32, 80, 3, 3)
    assert shapes["output_block.1.weight"] == (3, 32, 1, 1)


def test_official_checkpoint_loads_strictly(predictor, official_state, weights_root):
    assert predictor.weights.source == OFFICIAL and predictor.weights.engine == "wav2lip-gan"
    assert predictor.weights.path == weights_root / "mouth_refiner" / "wav2lip_gan.pth"
    assert "non-commercial" in predictor.weights.licence
    loaded = predictor.refiner.model.state_dict()
    assert loaded.keys() == official_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in official_state.items())
    assert not predictor.refiner.model.training


def test_missing_and_misshaped_keys_are_named(tmp_path, official_state):
    broken = dict(official_state)
    del broken["audio_encoder.3.conv_block.0.weight"]
    broken["output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
    _save_official(tmp_path / "wav2lip.pth", broken, legacy=True)  # read fine: the key check refuses it
    with pytest.raises(WeightsUnavailable) as error:
        load_wav2lip(tmp_path / "wav2lip.pth")
    message = str(error.value)
    assert "missing key(s) 'audio_encoder.3.conv_block.0.weight'" in message
    assert "'output_block.1.weight' has shape (3, 16, 1, 1), expected (3, 32, 1, 1)" in message
    torch.save({"generator": {}}, tmp_path / "other.pth")
    with pytest.raises(WeightsUnavailable, match="expected a dict with 'state_dict'"):
        load_wav2lip(tmp_path / "other.pth")


def test_weights_choice(tmp_path):
    folder = tmp_path / "mouth_refiner"
    folder.mkdir()
    assert not choose_weights(MouthRefinerSettings(), tmp_path).available
    (folder / "wav2lip.pth").touch()
    assert choose_weights(MouthRefinerSettings(), tmp_path).engine == "wav2lip"
    forced = choose_weights(MouthRefinerSettings(checkpoint="wav2lip_gan"), tmp_path)
    assert forced.source == UNAVAILABLE and "wav2lip_gan.pth" in forced.note
    (folder / "wav2lip_gan.pth").touch()
    assert choose_weights(MouthRefinerSettings(), tmp_path).engine == "wav2lip-gan"
    assert choose_weights(MouthRefinerSettings(checkpoint="wav2lip"), tmp_path).path == folder / "wav2lip.pth"


def test_no_weights_means_unavailable(tmp_path, monkeypatch, fake_pb_utils):
    from python_backends.catalog import weights_for

    with pytest.raises(WeightsUnavailable, match=r"no wav2lip_gan.pth or wav2lip.pth"):
        build_mouth_refiner(MouthRefinerSettings(), "cpu", tmp_path)
    assert weights_for("mouth_refiner", {}, tmp_path).source == UNAVAILABLE
    # The served model stays loaded and answers UNAVAILABLE with the reason.
    monkeypatch.setenv("TALKINGHEAD_WEIGHTS", str(tmp_path))
    model = _triton_model(fake_pb_utils)
    (response,) = model.execute([object()])
    assert response.error.code() == response.error.UNAVAILABLE
    assert "mouth_refiner" in response.error.message() and "wav2lip_gan.pth" in response.error.message()


def _triton_model(triton_io):
    """model_repository/mouth_refiner/1/model.py initialised with its config.pbtxt (`triton_io`: the fake seam)."""
    from google.protobuf import json_format

    from client.repository import config_path, load_config, model_dir

    module_spec = importlib.util.spec_from_file_location("mouth_refiner_model", model_dir("mouth_refiner") / "1" /
                                                         "model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToDict(load_config(config_path("mouth_refiner")), preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU"})
    return model


def test_served_model_refines_one_request(weights_root, monkeypatch, fake_pb_utils, astronaut):
    import triton_python_backend_utils as pb

    monkeypatch.setenv("TALKINGHEAD_WEIGHTS", str(weights_root))
    model = _triton_model(fake_pb_utils)
    frames, boxes = _run(astronaut, count=1)
    request = pb.InferenceRequest(inputs=[
        pb.Tensor(spec.FRAMES, frames[None]), pb.Tensor(spec.FACE_BOXES, boxes[None]),
        pb.Tensor(spec.MEL, _mel()[None]), pb.Tensor(spec.START_FRAME, np.array([[4]], np.int64)),
        pb.Tensor(spec.FPS, np.array([[25.0]], np.float32)),
    ])
    (response,) = model.execute([request])
    assert response.error is None
    out = next(t for t in response.output_tensors if t.name() == spec.FRAMES).as_numpy()
    assert out.shape == (1,) + frames.shape and out.dtype == np.uint8
    top = int(boxes[0, 1])
    assert np.array_equal(out[0, 0, :top], frames[0, :top]) and not np.array_equal(out[0, 0], frames[0])
    info = json.loads(next(t for t in response.output_tensors if t.name() == spec.MODEL_INFO).as_numpy()[0, 0])
    assert info["engine"] == "wav2lip-gan" and info["source"] == OFFICIAL and info["sha256"]


# ---------------------------------------------------------------- inference.py, step by step ----

def _official_mel_chunks(mel, fps):
    """inference.py's loop, verbatim in behaviour."""
    chunks, multiplier, i = [], 80.0 / fps, 0
    while True:
        start = int(i * multiplier)
        if start + 16 > len(mel[0]):
            chunks.append(mel[:, len(mel[0]) - 16:])
            break
        chunks.append(mel[:, start : start + 16])
        i += 1
    return chunks


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 24.0])
def test_mel_windows_follow_the_official_indexing(fps):
    mel = _mel(203)
    official = _official_mel_chunks(mel, fps)
    whole = mel_windows(mel, np.arange(len(official)), fps)
    assert all(np.array_equal(w, c) for w, c in zip(whole, official))
    for start in (1, 7, len(official) - 3):
        run = mel_windows(mel, np.arange(start, start + 3), fps)
        assert all(np.array_equal(run[k], official[start + k]) for k in range(3))
    # Frames past the official list (which stops there) get the same clamped last window.
    assert np.array_equal(mel_windows(mel, [len(official)], fps)[0], official[-1])


def test_network_inputs_match_the_official_datagen():
    crops = np.random.default_rng(1).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    masked = crops.copy()
    masked[:, 96 // 2:] = 0
    official = np.transpose(np.concatenate((masked, crops), axis=3) / 255.0, (0, 3, 1, 2))
    ours = network_inputs(crops)
    assert ours.shape == (3, 6, 96, 96) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, official, atol=1e-7)


def _official_boxes(rects, pads, shape):
    """face_detect's box arithmetic and get_smoothened_boxes(T=5), on the detector's int rects."""
    pady1, pady2, padx1, padx2 = pads
    results = []
    for rect in rects:
        x1, y1, x2, y2 = map(int, np.clip(rect, 0, None))
        results.append([max(0, x1 - padx1), max(0, y1 - pady1), min(shape[1], x2 + padx2), min(shape[0], y2 + pady2)])
    boxes = np.array(results)
    for i in range(len(boxes)):
        window = boxes[len(boxes) - 5:] if i + 5 > len(boxes) else boxes[i : i + 5]
        boxes[i] = np.mean(window, axis=0)
    return boxes


def test_boxes_are_padded_and_smoothed_like_the_official():
    rng = np.random.default_rng(2)
    rects = np.array([100, 120, 260, 300], np.float32) + rng.normal(0, 4, (9, 4)).astype(np.float32)
    rects[3] = [-3.5, 10.2, 150.7, 296.9]  # off the left edge, and the padded bottom past the frame
    pads = (4, 10, 2, 6)
    ours = smooth_boxes(padded_boxes(rects, pads, 300, 400), 5)
    assert np.array_equal(ours, _official_boxes(rects, pads, (300, 400)))


def test_blend_mask_keeps_the_upper_face_and_fades_at_the_edges():
    mask = blend_mask(100, 90, 0.15)
    assert mask.shape == (100, 90)
    assert np.all(mask[:50] == 0)  # the half Wav2Lip saw unmasked is never replaced
    assert mask[75, 45] == pytest.approx(1.0, abs=1e-6)
    assert mask[:, 0].max() < 0.01 and mask[:, -1].max() < 0.01 and mask[-1].max() < 0.01
    column = mask[:, 45]
    assert np.all(np.diff(column[:75]) >= 0) and np.all(np.diff(column[75:]) <= 0)
    assert np.abs(np.diff(column)).max() < 0.15  # no step anywhere: a smooth ramp, not a seam


def test_refine_regenerates_only_the_lower_face_at_the_runs_place_in_the_speech(predictor, astronaut):
    image, box = astronaut
    frames, boxes, mel = np.stack([image, image]), np.stack([box, box]), _mel()
    out = predictor.refiner.refine(frames, boxes, mel, start_frame=10, fps=25.0)
    assert out.shape == frames.shape and out.dtype == np.uint8
    coords = predictor.refiner.face_boxes(boxes, *image.shape[:2])
    assert np.array_equal(coords[0], coords[1])
    x1, y1, x2, y2 = coords[0]
    assert (x1, y1, x2, y2) == (int(box[0]), int(box[1]), int(box[2]), int(box[3]) + 10)  # pads 0, 10, 0, 0
    middle = y1 + (y2 - y1) // 2
    for new in out:
        outside = np.ones(image.shape[:2], bool)
        outside[y1:y2, x1:x2] = False
        assert np.array_equal(new[outside], image[outside])  # bit-identical outside the padded box
        assert np.array_equal(new[y1:middle], image[y1:middle])  # the upper face too
        diff = np.abs(new.astype(int) - image.astype(int))
        lower = diff[middle + (y2 - y1) // 6 : y2 - (y2 - y1) // 6, x1 + (x2 - x1) // 6 : x2 - (x2 - x1) // 6]
        assert lower.mean() > 10  # a random generator's face differs a lot from the photo
        assert diff[y2 - 1, x1:x2].max() <= 0.02 * 255 + 1  # faded out at the box's bottom edge
    # Same face, the next 0.04 s of speech: another mouth.
    assert not np.array_equal(out[0], out[1])
    # A run starting one frame later is that second frame (up to float rounding across batch sizes).
    single = predictor.refiner.refine(image[None], box[None], mel, start_frame=11, fps=25.0)
    assert np.abs(single[0].astype(int) - out[1].astype(int)).max() <= 1


def test_contour_mask_covers_the_lips_and_fades_around_them():
    lips = np.array([[30, 60], [45, 52], [60, 60], [45, 70]], np.float64)  # a diamond mouth, 30 px wide
    mask = contour_mask(100, 90, lips, 0.35)
    assert mask[60, 45] == 1.0 and mask[60, 60 + 9] == 1.0  # inside, and within the margin (10.5 px)
    assert mask[60, 60 + 25] == 0.0 and mask[20, 45] == 0.0  # beyond twice the margin: untouched
    assert 0.0 < mask[60, 60 + 15] < 1.0  # a ramp between


def test_refine_with_a_lip_contour_keeps_the_cheeks_and_chin(predictor, astronaut):
    """With Face Mesh's outer lip contour only the mouth region is replaced; the rest of the lower face keeps the
    frame's own pixels (where the plain half-box blend replaces them)."""
    image, box = astronaut
    mel = _mel()
    plain = predictor.refiner.refine(image[None], box[None], mel, start_frame=10, fps=25.0)[0]
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2, y1 + 0.78 * (y2 - y1), 0.15 * (x2 - x1)
    lips = np.array([[[cx - half, cy], [cx, cy - 0.3 * half], [cx + half, cy], [cx, cy + 0.4 * half]]])
    masked = predictor.refiner.refine(image[None], box[None], mel, start_frame=10, fps=25.0, contours=lips)[0]
    mouth, cheek = (int(cy), int(cx)), (int(cy), int(x1 + 0.1 * (x2 - x1)))
    assert np.array_equal(masked[mouth], plain[mouth])  # the mouth is regenerated as before
    assert np.array_equal(masked[cheek], image[cheek]) and not np.array_equal(plain[cheek], image[cheek])
    with pytest.raises(InputError, match="mouth_contour"):
        predictor.refiner.refine(image[None], box[None], mel, start_frame=10, fps=25.0, contours=lips[:, :2])


def test_runs_in_one_call_are_what_their_own_calls_give(predictor, astronaut):
    """frame_index puts several runs in one request (a segment's plosive runs): each run's boxes are smoothed on
    their own and its mel windows follow its frames' places in the clip, as one call per run would do."""
    frames, boxes = _run(astronaut, count=7, step=4)
    mel = _mel()
    index = np.array([5, 6, 7, 20, 21, 22, 23])
    together = predictor.refiner.refine(frames, boxes, mel, start_frame=5, fps=25.0, frame_index=index)
    alone = np.concatenate([predictor.refiner.refine(frames[:3], boxes[:3], mel, start_frame=5, fps=25.0),
                            predictor.refiner.refine(frames[3:], boxes[3:], mel, start_frame=20, fps=25.0)])
    assert np.abs(together.astype(int) - alone.astype(int)).max() <= 1  # float rounding across batch sizes
    # as one run the boxes would be smoothed across the gap and the mel read at frames 8..11
    as_one = predictor.refiner.refine(frames, boxes, mel, start_frame=5, fps=25.0)
    assert np.abs(as_one[3:].astype(int) - alone[3:].astype(int)).max() > 1


@pytest.mark.parametrize("index, message", [
    ([5, 6], "one integer clip index per frame"),
    ([5.0, 6.0, 7.0], "one integer clip index per frame"),
    ([4, 6, 7], "start at start_frame"),
    ([5, 5, 6], "must increase"),
    ([5, 6, 400], "covers only 2.50 s"),  # the last frame's place, not start_frame + n - 1, must have speech
])
def test_bad_frame_index_is_an_input_error(predictor, astronaut, index, message):
    frames, boxes = _run(astronaut, count=3)
    with pytest.raises(InputError, match=message):
        predictor.refiner.refine(frames, boxes, _mel(), start_frame=5, fps=25.0, frame_index=np.array(index))


def test_a_segments_runs_go_to_the_refiner_in_one_request():
    """The served plosive pass (segment_job.refine_mouth): one request holding every run's frames, boxes and lip
    contours with their clip indices; the answer lands on those frames only."""
    from types import SimpleNamespace

    from python_backends.quality.segment_job import refine_mouth

    sent = []

    async def call(model, inputs):
        sent.append((model, inputs))
        return {spec.FRAMES: inputs[spec.FRAMES] + 1, spec.MODEL_INFO: np.array([[b'{"engine": "wav2lip"}']], object)}

    frames = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 6, 3), np.uint8)
    boxes = np.arange(48, dtype=np.float64).reshape(12, 4)
    lips = np.arange(12 * 5 * 2, dtype=np.float64).reshape(12, 5, 2)
    ctx = SimpleNamespace(refiner=None, refiner_reason=None, mel=_mel(), fps=30.0)
    out, info = asyncio.run(refine_mouth(frames, boxes, [(1, 3), (7, 10)], 100, ctx, call, lips))
    (model, inputs), = sent
    picked = [1, 2, 7, 8, 9]
    assert model is spec.MOUTH_REFINER
    assert inputs[spec.FRAME_INDEX].tolist() == [[101, 102, 107, 108, 109]] and inputs[spec.START_FRAME][0, 0] == 101
    assert np.array_equal(inputs[spec.FRAMES][0], frames[picked])
    assert np.array_equal(inputs[spec.FACE_BOXES][0], boxes[picked].astype(np.float32))
    assert np.array_equal(inputs[spec.MOUTH_CONTOUR][0], lips[picked].astype(np.float32))
    assert np.array_equal(out[picked], frames[picked] + 1)
    others = [i for i in range(12) if i not in picked]
    assert np.array_equal(out[others], frames[others]) and ctx.refiner is True
    assert info == {"status": "applied", "frames": [[101, 103], [107, 110]], "model": {"engine": "wav2lip"}}
    assert np.array_equal(frames[picked], np.array(picked, np.uint8)[:, None, None, None] * np.ones((1, 4, 6, 3)))
    # in place: the caller's own frames get the new mouths, and no copy of the segment is made
    mine = frames.copy()
    out, _ = asyncio.run(refine_mouth(mine, boxes, [(1, 3), (7, 10)], 100, ctx, call, lips, in_place=True))
    assert out is mine and np.array_equal(mine[picked], frames[picked] + 1)


@pytest.mark.parametrize("change, message", [
    (lambda f, b, m: (f, b[:1], m, 0, 25.0), "one per frame"),
    (lambda f, b, m: (f, b, m[:, :10], 0, 25.0), "at least 16"),
    (lambda f, b, m: (f, b, np.where(m > 3, np.nan, m), 0, 25.0), "NaN"),
    (lambda f, b, m: (f, b, m[:, :40], 12, 25.0), "covers only 0.50 s"),
    (lambda f, b, m: (f, b + 1000, m, 0, 25.0), "outside the 512x512 frame"),
    (lambda f, b, m: (f, b, m, 0, 0.0), "fps must be"),
    (lambda f, b, m: (f.astype(np.float32), b, m, 0, 25.0), "UINT8"),
])
def test_bad_runs_are_input_errors(predictor, astronaut, change, message):
    frames, boxes = _run(astronaut, count=2)
    with pytest.raises(InputError, match=message):
        predictor.refiner.refine(*change(frames, boxes, _mel()))


def test_settings_parse_from_the_config_and_are_checked():
    from client.repository import config_path, load_config, parameters

    assert from_mapping(MouthRefinerSettings, parameters(load_config(config_path("mouth_refiner")))) == (
        MouthRefinerSettings()
    )
    for bad in ({"checkpoint": "wav2lip_hd"}, {"pads": "0,10"}, {"feather": "0"}, {"batch_size": "0"}):
        with pytest.raises(ConfigError):
            from_mapping(MouthRefinerSettings, bad)


# ---------------------------------------------------------------- plosives ----

def _vowel(seconds):
    """A voiced vowel: 120 Hz harmonics up to ~1 kHz, so nearly all energy is low."""
    t = np.arange(int(seconds * SR)) / SR
    return 0.3 * sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 9))


def _quiet(seconds, rng):
    return 1e-4 * rng.standard_normal(int(seconds * SR))


def _burst(seconds, rng):
    return 0.3 * rng.standard_normal(int(seconds * SR))


def test_plosive_burst_after_a_closure_is_found():
    rng = np.random.default_rng(0)
    speech = np.concatenate([_vowel(0.2), _quiet(0.06, rng), _burst(0.015, rng), _vowel(0.3),
                             _quiet(0.04, rng), _burst(0.01, rng), _vowel(0.2)])
    times = burst_times(speech)
    assert times == pytest.approx([0.26, 0.615], abs=0.01)
    assert plosive_frames(speech, 25.0).tolist() == [6, 15]
    assert plosive_frames(speech, 30.0).tolist() == [7, 18]


def test_vowel_onset_short_gap_and_noise_are_not_plosives():
    rng = np.random.default_rng(1)
    vowel_onset = np.concatenate([_vowel(0.2), _quiet(0.08, rng), _vowel(0.3)])
    short_gap = np.concatenate([_vowel(0.2), _quiet(0.02, rng), _burst(0.015, rng), _vowel(0.2)])
    no_closure = np.concatenate([_burst(0.3, rng), 3 * _burst(0.015, rng), _burst(0.3, rng)])
    for signal in (vowel_onset, short_gap, no_closure, np.zeros(SR), np.zeros(10)):
        assert burst_times(signal).size == 0


def test_refine_runs_widen_merge_and_clip():
    assert refine_runs(np.array([6, 9, 30]), 32) == [(3, 12), (27, 32)]
    assert refine_runs(np.array([1]), 10, before=3, after=0) == [(0, 2)]
    assert refine_runs(np.array([4, 10]), 20, before=1, after=1) == [(3, 6), (9, 12)]
    assert refine_runs(np.array([], np.int64), 20) == []
