"""Quality building blocks without a server: envelope lip-sync, colour match, identity windows, segment plan,
output resize, the report schema."""

from __future__ import annotations

import numpy as np
import pytest

from python_backends.errors import InputError
from python_backends.quality.colour import JND_DELTA_E, match_colour
from python_backends.quality.envelope_sync import envelope_sync, mouth_opening, speech_envelope
from python_backends.quality.segment_job import segment_length
from python_backends.quality.segment_qa import identity_windows
from python_backends.quality.upscale import parse_output_size, resize_frames

FPS = 25.0


def _syllables(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz 'speech' (150 Hz buzz gated by random syllables) and the per-frame gate (how open a mouth is)."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * FPS)
    gate = np.repeat(rng.random(frames // 5) > 0.5, 5).astype(float)
    gate = np.convolve(gate, np.ones(3) / 3, mode="same")[:frames]
    t = np.arange(int(seconds * 16000)) / 16000
    carrier = np.sign(np.sin(2 * np.pi * 150 * t)) * 0.3 + 0.02 * rng.standard_normal(len(t))
    amplitude = np.repeat(gate, 640)[: len(t)]
    return (carrier * amplitude).astype(np.float32), gate


@pytest.mark.parametrize("shift", [0, 4, -7, 10])
def test_envelope_sync_finds_the_offset(shift):
    audio, gate = _syllables(8.0)
    # The mouth opens `shift` frames after its sound: the audio leads, a positive offset.
    opening = np.roll(gate, shift) + 0.01 * np.random.default_rng(1).standard_normal(len(gate))
    score = envelope_sync(opening, speech_envelope(audio, FPS, len(gate)))
    assert score.offset_frames == shift and score.correlation > 0.8 and score.confidence > 0.3
    assert len(score.per_offset_r) == 31


def test_envelope_sync_needs_enough_frames_and_68_points():
    with pytest.raises(InputError, match="31 frames"):
        envelope_sync(np.zeros(20), np.zeros(20))
    with pytest.raises(InputError, match="68"):
        mouth_opening(np.zeros((4, 5, 2)))


def test_mouth_opening_reads_the_whole_inner_lip_of_a_face_mesh():
    """Face Mesh points: the gap is the mean over the nine facing inner-lip pairs, over the outer eye corners."""
    from python_backends.mediapipe_models.mesh_layout import INNER_LIP_PAIRS

    mesh = np.zeros((3, 468, 2))
    mesh[:, 263, 0] = 50.0  # eye corners 33 (at 0) and 263: 50 px apart
    gaps = np.array([0.0, 5.0, 10.0])
    mesh[:, INNER_LIP_PAIRS[:, 1], 1] = gaps[:, None]
    mesh[2, INNER_LIP_PAIRS[0, 1], 1] = 1.0  # a mouth open only in the middle still reads, corners barely
    expected = gaps / 50.0
    expected[2] = (1.0 + 8 * 10.0) / 9 / 50.0
    np.testing.assert_allclose(mouth_opening(mesh), expected)


def test_colour_match_removes_a_cast_and_leaves_a_matching_segment_alone(sample_face):
    photo, points, _ = sample_face
    box = np.concatenate([points.min(0), points.max(0)])
    clean = np.repeat(photo[None], 4, axis=0)
    untouched, report = match_colour(clean, np.repeat(box[None], 4, axis=0), photo, box)
    assert not report.applied and untouched is clean and report.delta_e_before < JND_DELTA_E
    cast = np.clip(clean.astype(int) + [25, 0, -20], 0, 255).astype(np.uint8)  # warmer, a visible tint
    corrected, report = match_colour(cast, np.repeat(box[None], 4, axis=0), photo, box)
    assert report.applied and report.delta_e_before > 10 and report.delta_e_after < 1.5
    x1, y1, x2, y2 = box.astype(int)
    before = np.abs(cast[0, y1:y2, x1:x2].astype(int) - photo[y1:y2, x1:x2]).mean()
    after = np.abs(corrected[0, y1:y2, x1:x2].astype(int) - photo[y1:y2, x1:x2]).mean()
    assert after < before / 3


def test_identity_windows_are_judged_separately():
    samples = [(0.5, 0.95), (2.0, 0.97), (5.1, 0.80), (6.0, 0.85), (10.2, 0.93)]
    windows = identity_windows(samples, 5.0, 0.9)
    assert [(w["window"], w["status"], w["samples"]) for w in windows] == [(0, "pass", 2), (1, "fail", 2),
                                                                           (2, "pass", 1)]
    assert windows[1]["mean_cosine"] == pytest.approx(0.825) and windows[1]["min_cosine"] == 0.8


def test_a_short_tail_joins_the_last_segment():
    assert segment_length(0, 150, 125, 31) == 150  # 25 frames would be left: too short to judge lip-sync
    assert segment_length(0, 200, 125, 31) == 125
    assert segment_length(125, 200, 125, 31) == 125  # the last segment may be short when it is all that is left
    assert segment_length(0, None, 125, 31) == 125


def test_output_size_is_parsed_and_applied():
    rest, size = parse_output_size({"fps": 25, "output_width": "640", "output_height": 480})
    assert rest == {"fps": 25} and size == (640, 480)
    assert parse_output_size({"fps": 25}) == ({"fps": 25}, None)
    for bad in ({"output_width": 641, "output_height": 480}, {"output_width": 640},
                {"output_width": 9000, "output_height": 480}):
        with pytest.raises(InputError):
            parse_output_size(bad)
    frames = np.zeros((2, 100, 80, 3), np.uint8)
    assert resize_frames(frames, (160, 200)).shape == (2, 200, 160, 3)


def test_identity_gate_fails_a_face_too_small_to_embed_without_asking_the_embedder():
    """A generated frame whose only face is 15x20 px once ended the job with the embedder's bad-input error."""
    import asyncio

    from python_backends.quality.segment_qa import identity_gate
    from python_backends.quality.tracking import FaceTrack

    track = FaceTrack(boxes=np.zeros((2, 4), np.float32), landmarks=np.zeros((2, 68, 2), np.float32),
                      detected=np.array([0, 1]), detected_boxes=np.array([[10, 10, 25, 30], [0, 0, 0, 0]], np.float32),
                      detected_keypoints=np.zeros((2, 5, 2), np.float32), found=np.array([True, False]),
                      landmarker="dlib")

    async def no_call(model, inputs):
        raise AssertionError(f"{model.name} was called with a face it refuses")

    gate, samples = asyncio.run(identity_gate(np.zeros((2, 64, 64, 3), np.uint8), track, 0, None, no_call))
    assert gate.status == "fail" and "under 16 px across" in gate.reason and samples == []
    assert "malformed" not in gate.reason  # the frame where no face was found has no box to judge


def test_identity_gate_fails_faces_with_mirrored_keypoints_without_asking_the_embedder():
    """On a noise video (random weights, 704x384) the detector's keypoints of a garbled face looked mirrored; the
    embedder refused them as bad input and the whole job ended. A face the embedder would refuse is skipped, and
    a segment with no other face fails the gate."""
    import asyncio

    from python_backends.quality.segment_qa import identity_gate
    from python_backends.quality.tracking import FaceTrack

    box = [8, 8, 56, 56]
    upright = [[20, 24], [44, 24], [32, 34], [24, 46], [40, 46]]
    mirrored = [[44, 24], [20, 24], [32, 34], [40, 46], [24, 46]]
    track = FaceTrack(boxes=np.zeros((2, 4), np.float32), landmarks=np.zeros((2, 68, 2), np.float32),
                      detected=np.array([0, 1]), detected_boxes=np.array([box, box], np.float32),
                      detected_keypoints=np.array([mirrored, upright], np.float32), found=np.array([True, False]),
                      landmarker="dlib")

    async def no_call(model, inputs):
        raise AssertionError(f"{model.name} was called with a face it refuses")

    gate, samples = asyncio.run(identity_gate(np.zeros((2, 64, 64, 3), np.uint8), track, 0, None, no_call))
    assert gate.status == "fail" and "malformed box or keypoints" in gate.reason and samples == []


def test_the_faces_the_embedder_would_take_are_those_it_accepts():
    from python_backends.errors import InputError
    from python_backends.face_embedding.predictor import embeddable, validate_batch

    image = np.zeros((1, 64, 64, 3), np.uint8)
    boxes = np.array([[8, 8, 56, 56], [8, 8, 56, 56], [10, 10, 20, 20]], np.float32)
    upright = [[20, 24], [44, 24], [32, 34], [24, 46], [40, 46]]
    keypoints = np.array([upright, [upright[1], upright[0], upright[2], upright[4], upright[3]],
                          [[12, 12], [18, 12], [15, 15], [13, 18], [17, 18]]], np.float32)
    usable, refused = embeddable(image.shape[1:], boxes, keypoints)
    assert usable.tolist() == [True, False, False] and refused == {"bad_face_geometry", "face_too_small"}
    for box, points, ok in zip(boxes, keypoints, usable):
        batch = {"image": image, "face_box": box[None], "face_keypoints": points[None]}
        if ok:
            validate_batch(batch)
        else:
            with pytest.raises(InputError):
                validate_batch(batch)


def test_lip_sync_crops_of_picked_frames_are_read_in_place():
    """face_crops(frames, boxes, picks) is face_crops of the picked frames, without copying whole frames first."""
    from python_backends.quality.segment_qa import SYNCNET_FPS, _resample_indices, face_crops

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (30, 72, 96, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[20, 10, 60, 58]], np.float32), (30, 1)) + rng.uniform(-3, 3, (30, 4)).astype(np.float32)
    picks = _resample_indices(len(frames), 30.0, SYNCNET_FPS)
    assert len(picks) == 25
    np.testing.assert_array_equal(face_crops(frames, boxes, picks), face_crops(frames[picks], boxes[picks]))
    assert face_crops(frames, boxes).shape == (30, 224, 224, 3)


def test_joined_frames_read_the_frame_before_and_the_segment_in_place():
    from python_backends.quality.flicker import flicker_report
    from python_backends.quality.joined_frames import JoinedFrames

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)
    before = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    joined = JoinedFrames(before, frames)
    copy = np.concatenate([before[None], frames])
    assert joined.shape == copy.shape and len(joined) == 7 and joined.ndim == 4
    assert joined[0] is before and np.shares_memory(joined[3], frames)  # views, not copies
    np.testing.assert_array_equal(joined[-1], copy[-1])
    np.testing.assert_array_equal(joined[np.array([0, 2, 6])], copy[[0, 2, 6]])
    np.testing.assert_array_equal(joined[1:4], copy[1:4])
    np.testing.assert_array_equal(np.stack(list(joined)), copy)
    np.testing.assert_array_equal(np.asarray(joined), copy)
    assert joined.__array__(np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="without a copy"):  # numpy 2 asks so for np.asarray(joined, copy=False)
        joined.__array__(copy=False)
    with pytest.raises(IndexError):
        joined[7]
    with pytest.raises(ValueError, match="must match"):
        JoinedFrames(before[:, :10], frames)
    # the flicker gate's figures are those of the concatenated copy
    box = np.array([8, 6, 40, 34])
    ours, reference = flicker_report(joined, box), flicker_report(copy, box)
    np.testing.assert_array_equal(ours.luminance, reference.luminance)
    np.testing.assert_array_equal(ours.warping_error, reference.warping_error)
