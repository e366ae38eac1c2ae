"""Frame interpolation: the streaming resampler's timing, the flow interpolator on a known motion, RIFE 4.26's
released checkpoint layout (loaded, compared with an independent implementation, refused when wrong), and the
choice of method and weights."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from python_backends.catalog import weights_for
from python_backends.errors import ConfigError, WeightsUnavailable
from python_backends.frame_interpolation.config import (
    FLOW,
    NONE,
    RIFE,
    Interpolation,
    InterpolationSettings,
    choose_weights,
    resolve,
)
from python_backends.frame_interpolation.flow_interpolator import FlowInterpolator
from python_backends.frame_interpolation.resampler import InterpolatingResampler, source_position
from python_backends.frame_interpolation.rife import IFNet, pad_multiple
from python_backends.frame_interpolation.rife_checkpoint import PREFIX, load_rife, write_random_checkpoint
from python_backends.weights import OFFICIAL, SHIPPED, UNAVAILABLE


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- resampler timing


class RecordingInterpolator:
    """Returns frames that say which pair and time they were made from: [k0, k1, round(1000 t)] (uint16)."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, list[float]]] = []

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times) -> list[np.ndarray]:
        k0, k1 = int(frame0[0]), int(frame1[0])
        self.calls.append((k0, k1, list(times)))
        return [np.array([k0, k1, round(1000 * t)], np.uint16) for t in times]


def source(count: int) -> list[np.ndarray]:
    return [np.array([i, i, 0], np.uint16) for i in range(count)]  # frame i: "source frame i, exact"


def expected_frame(j: int, source_fps: float, fps: float, count: int) -> list[int]:
    """What output frame j must be, from the definition: time j / fps, between floor and floor + 1."""
    position = j * source_fps / fps
    k = math.floor(position + 1e-9)
    t = position - k
    if k >= count - 1:
        return [count - 1, count - 1, 0]
    if t < 1e-6:
        return [k, k, 0]
    return [k, k + 1, round(1000 * t)]


def stream(resampler: InterpolatingResampler, frames: list[np.ndarray], pieces: tuple[int, ...]) -> list[list[int]]:
    out, start = [], 0
    for size in pieces:
        out += resampler.push(frames[start:start + size])
        start += size
    out += resampler.push(frames[start:])
    return [list(map(int, f)) for f in out]


@pytest.mark.parametrize("source_fps, fps", [(16, 30), (16, 25), (16, 29.97), (16, 16), (16, 12.5), (30, 15)])
def test_resampler_interpolates_between_the_two_neighbours(source_fps: float, fps: float) -> None:
    count = 37
    total = math.ceil(count / source_fps * fps - 1e-9)
    interpolator = RecordingInterpolator()
    resampler = InterpolatingResampler(source_fps, fps, count, total, interpolator=interpolator)
    out = stream(resampler, source(count), (5, 1, 14))  # pieces of any size, as the VAE yields them
    assert out == [expected_frame(j, source_fps, fps, count) for j in range(total)]
    # one call per source pair, with all of that pair's times, in time order
    pairs = [(k0, k1) for k0, k1, _ in interpolator.calls]
    assert len(pairs) == len(set(pairs)) and all(k1 == k0 + 1 for k0, k1 in pairs)
    assert all(times == sorted(times) and 0 < min(times) and max(times) < 1 for _, _, times in interpolator.calls)


class BatchingInterpolator(RecordingInterpolator):
    """RecordingInterpolator that also takes several pairs in one call, as FlowInterpolator.pairs does on a GPU."""

    batch_pairs = True

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def pairs(self, pairs) -> list[list[np.ndarray]]:
        self.batches.append(len(pairs))
        return [self(frame0, frame1, times) for frame0, frame1, times in pairs]


def test_resampler_sends_the_pairs_a_push_completes_in_one_batch() -> None:
    count, interpolator = 37, BatchingInterpolator()
    total = math.ceil(count / 16 * 30 - 1e-9)
    out = stream(InterpolatingResampler(16, 30, count, total, interpolator=interpolator), source(count), (12, 12))
    assert out == [expected_frame(j, 16, 30, count) for j in range(total)]
    assert len(interpolator.batches) == 3 and sum(interpolator.batches) == len(interpolator.calls) > 30


def test_16_to_30_fps_schedule() -> None:
    """At 16 -> 30 fps, output frame j is at 8 j / 15 source frames: exact every 15th frame, else between."""
    assert source_position(0, 16, 30, 100, True) == (0, 0.0)
    assert source_position(15, 16, 30, 100, True) == (8, 0.0)  # 0.5 s: both grids meet
    k, t = source_position(1, 16, 30, 100, True)
    assert k == 0 and t == pytest.approx(8 / 15)
    k, t = source_position(2, 16, 30, 100, True)
    assert k == 1 and t == pytest.approx(1 / 15)
    phases = {round(source_position(j, 16, 30, 100, True)[1] * 15) for j in range(15)}
    assert phases == set(range(15))  # every 15th of the interval occurs once per half second
    assert source_position(1, 16, 30, 100, False) == (1, 0.0)  # nearest: 0.533 -> frame 1


@pytest.mark.parametrize("first", [0, 1, 7, 15, 16, 29, 40])
def test_segments_starting_mid_clip_match_the_whole_clip(first: int) -> None:
    """A request for output frames first .. first + n - 1 pushes source frames base .. source_stop - 1 and
    gets exactly those frames of the whole-clip stream."""
    count, fps = 33, 30.0
    total = math.ceil(count / 16 * fps - 1e-9)
    whole = stream(InterpolatingResampler(16, fps, count, total, interpolator=RecordingInterpolator()),
                   source(count), ())
    n = min(12, total - first)
    segment = InterpolatingResampler(16, fps, count, n, first=first, interpolator=RecordingInterpolator())
    assert segment.base == math.floor(first * 16 / fps + 1e-9)
    needed = source(count)[segment.base:segment.source_stop]
    assert stream(segment, needed, (3,)) == whole[first:first + n]
    assert not segment.push([])  # nothing more to give
    last = expected_frame(first + n - 1, 16, fps, count)
    assert segment.source_stop == last[1] + 1  # no source frame beyond the last one the segment uses


def test_nearest_mode_is_interpolation_none() -> None:
    resampler = InterpolatingResampler(16, 30, 20, 37)
    out = stream(resampler, source(20), (4,))
    assert out == [[min(19, math.floor(j * 16 / 30 + 0.5))] * 2 + [0] for j in range(37)]
    assert resampler.base == 0 and resampler.source_stop == 20


def test_resampler_keeps_only_the_frames_it_still_needs() -> None:
    resampler = InterpolatingResampler(16, 30, 200, 370, interpolator=RecordingInterpolator())
    for frame in source(200):
        resampler.push([frame])
        assert len(resampler.pending) <= 2


# ---------------------------------------------------------------- flow interpolator


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (blurred noise), uint8."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / max(mse, 1e-12))


@pytest.mark.parametrize("size", [(96, 128), (288, 320)])  # the second takes the half-resolution flow path
def test_flow_interpolator_recovers_a_translation(size: tuple[int, int]) -> None:
    """A texture moving 8 px right and 4 px up per frame: the frame at t = 1/2 (and 1/4) is the texture moved
    half (a quarter) of the way within about one grey level (PSNR > 45 dB; measured 50-67 dB); repeating a frame
    or blending the two is 25+ dB worse (measured 16-21 dB)."""
    height, width = size
    big = texture(height + 40, width + 40)
    y, x, dy, dx = 20, 20, -4, 8

    def crop(shift: float) -> np.ndarray:
        return big[round(y + dy * shift): round(y + dy * shift) + height, round(x + dx * shift):
                   round(x + dx * shift) + width]

    frame0, frame1 = crop(0), crop(1)
    middle, quarter = FlowInterpolator("cpu")(frame0, frame1, [0.5, 0.25])
    inner = (slice(12, -12), slice(12, -12))  # the borders hold what entered or left the view
    blend = ((frame0.astype(np.float64) + frame1) / 2)[inner]
    truth = crop(0.5)[inner]
    scores = psnr(middle[inner], truth), psnr(frame1[inner], truth), psnr(blend, truth)
    assert scores[0] > 45 and scores[0] > max(scores[1:]) + 25, scores
    assert psnr(quarter[inner], crop(0.25)[inner]) > 45 > psnr(frame0[inner], crop(0.25)[inner]) + 20


def test_flow_interpolator_takes_several_pairs_at_once() -> None:
    """pairs() (one batch per resampler push) gives what one call per pair gives."""
    big = texture(150, 200)
    frames = [big[10 + 2 * i:138 + 2 * i, 10 + 3 * i:170 + 3 * i] for i in range(4)]
    interpolator = FlowInterpolator("cpu")  # the resampler batches on a GPU only (batch_pairs); pairs() does here too
    requests = [(frames[0], frames[1], [0.5]), (frames[1], frames[2], [0.25, 0.75]), (frames[2], frames[3], [0.4])]
    for (frame0, frame1, times), batched in zip(requests, interpolator.pairs(requests), strict=True):
        alone = interpolator(frame0, frame1, times)
        assert len(batched) == len(times)
        assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(batched, alone, strict=True))


def test_flow_interpolator_on_still_frames_returns_them() -> None:
    frame = texture(64, 80)
    out = FlowInterpolator("cpu")(frame, frame, [0.3, 0.7])
    assert all(np.abs(o.astype(int) - frame).max() <= 1 for o in out)


@pytest.mark.gpu
def test_flow_interpolator_on_the_gpu_matches_the_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    big = texture(140, 180)
    frame0, frame1 = big[10:138, 10:170], big[6:134, 16:176]
    cpu = FlowInterpolator("cpu")(frame0, frame1, [0.5])[0]
    gpu = FlowInterpolator("cuda")(frame0, frame1, [0.5])[0]
    assert np.abs(cpu.astype(int) - gpu).mean() < 0.5


# ---------------------------------------------------------------- RIFE 4.26


@pytest.fixture(scope="module")
def rife_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("rife") / "flownet.pkl", seed=1)


def test_rife_checkpoint_layout_loads_and_interpolates(rife_file: Path) -> None:
    raw = torch.load(rife_file, weights_only=True)
    assert all(k.startswith(PREFIX) for k in raw)  # trained under DistributedDataParallel, as released
    assert any(k.startswith(PREFIX + "teacher.") for k in raw) and any(k.startswith(PREFIX + "caltime.") for k in raw)
    names = set(IFNet().state_dict())
    assert {"block0.conv0.0.0.weight", "block4.lastconv.0.weight", "block2.convblock.7.beta",
            "encode.cnn3.weight"} <= names and len(names) == 158
    assert tuple(raw[PREFIX + "block0.conv0.0.0.weight"].shape) == (96, 15, 3, 3)  # 3 + 3 + 4 + 4 + 1 inputs
    assert tuple(raw[PREFIX + "block1.conv0.0.0.weight"].shape) == (64, 28, 3, 3)  # + mask, 8 features, flow
    assert tuple(raw[PREFIX + "block4.lastconv.0.weight"].shape) == (32, 52, 4, 4)  # 4 x (4 + 1 + 8)
    rife = load_rife(rife_file)
    rng = np.random.default_rng(0)
    frame0 = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    frame1 = np.roll(frame0, 3, axis=1)
    out = rife(frame0, frame1, [0.25, 0.5])
    assert len(out) == 2 and all(o.shape == (70, 90, 3) and o.dtype == np.uint8 for o in out)
    assert not np.array_equal(out[0], out[1])  # the time is an input
    assert pad_multiple(1.0) == 128 and pad_multiple(0.5) == 256


def test_rife_matches_an_independent_implementation(rife_file: Path) -> None:
    """framelift (PyPI, MIT) carries its own RIFE 4.26 IFNet and loader: the same file and inputs give the same
    frame. Its loader keeps only `module.` keys and loads the IFNet's strictly, so our file's names and shapes are
    also the ones it expects."""
    from framelift.interpolation import _Step
    from framelift.interpolation import load_rife as framelift_load

    theirs = framelift_load(rife_file)
    ours = load_rife(rife_file)
    generator = torch.Generator().manual_seed(0)
    image0 = torch.rand(1, 3, 128, 256, generator=generator)
    image1 = torch.roll(image0, shifts=(2, 5), dims=(2, 3))
    with torch.no_grad():
        expected = _Step(theirs, 256, 128)(image0, image1, theirs.encode(image0), theirs.encode(image1),
                                           torch.full((1, 1, 1, 1), 0.3))
    got = ours.interpolate(image0, image1, [0.3])
    assert (got - expected).abs().max().item() < 1e-4
    assert (got - 0.5 * (image0 + image1)).abs().mean().item() > 0.05  # the flows do move pixels


def _rewrite(source: Path, target: Path, change) -> Path:
    state = torch.load(source, weights_only=True)
    change(state)
    torch.save(state, target)
    return target


def test_rife_checkpoint_without_prefix_loads(rife_file: Path, tmp_path: Path) -> None:
    def strip(state):
        for key in list(state):
            state[key[len(PREFIX):]] = state.pop(key)

    load_rife(_rewrite(rife_file, tmp_path / "converted.pkl", strip))


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop(PREFIX + "block3.convblock.5.conv.weight"), r"missing key\(s\) 'block3.convblock.5.conv.weight'"),
    (lambda s: s.__setitem__(PREFIX + "encode.cnn3.weight", torch.zeros(16, 8, 4, 4)),
     r"'encode.cnn3.weight' has shape \(16, 8, 4, 4\), expected \(16, 4, 4, 4\)"),
    (lambda s: s.__setitem__(PREFIX + "block5.conv0.0.0.weight", torch.zeros(1)), r"unexpected key\(s\) 'block5"),
])
def test_rife_checkpoint_refused_with_the_key_named(rife_file: Path, tmp_path: Path, change, message: str) -> None:
    with pytest.raises(WeightsUnavailable, match=message) as error:
        load_rife(_rewrite(rife_file, tmp_path / "bad.pkl", change))
    assert "RIFE 4.26" in str(error.value)


def test_rife_file_that_is_no_state_dict_is_refused(tmp_path: Path) -> None:
    (tmp_path / "garbage.pkl").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="cannot read the RIFE checkpoint"):
        load_rife(tmp_path / "garbage.pkl")
    torch.save([torch.zeros(1)], tmp_path / "list.pkl")
    with pytest.raises(WeightsUnavailable, match="not a state dict"):
        load_rife(tmp_path / "list.pkl")


# ---------------------------------------------------------------- method and weights


def test_auto_picks_rife_when_its_file_is_under_the_weights_root(rife_file: Path, tmp_path: Path) -> None:
    settings = InterpolationSettings()
    assert resolve(settings, tmp_path) == Interpolation(FLOW)
    assert choose_weights(settings, tmp_path).source == SHIPPED
    target = tmp_path / "video_generator" / "RIFE" / "flownet.pkl"
    target.parent.mkdir(parents=True)
    target.write_bytes(rife_file.read_bytes())
    chosen = resolve(settings, tmp_path)
    assert chosen == Interpolation(RIFE, target, 1.0)
    assert chosen.interpolator("cpu").name == "rife-4.26"
    row = weights_for("frame_interpolator", {"interpolation": "auto"}, tmp_path)
    assert (row.source, row.engine, row.path, row.licence) == (OFFICIAL, "rife-4.26", target,
                                                               "MIT (hzwer/Practical-RIFE)")
    assert resolve(InterpolationSettings(interpolation="flow"), tmp_path).method == FLOW
    none = resolve(InterpolationSettings(interpolation="none"), tmp_path)
    assert none.method == NONE and none.interpolator("cpu") is None


def test_rife_without_its_file_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="video_generator/RIFE/flownet.pkl"):
        resolve(InterpolationSettings(interpolation="rife"), tmp_path)
    row = weights_for("frame_interpolator", {"interpolation": "rife"}, tmp_path)
    assert row.source == UNAVAILABLE and "flownet.pkl" in row.note
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        InterpolationSettings(interpolation="linear")


def test_the_video_generator_gives_loaded_wan_engines_the_configured_interpolation(rife_file: Path, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from python_backends.generation import service

    (tmp_path / "video_generator" / "Wan2.2-S2V-14B").mkdir(parents=True)
    monkeypatch.setattr(service, "_load_wan", lambda *args: types.SimpleNamespace(prepare=lambda: None))  # the wiring

    def engine(**parameters):
        settings = service.VideoGeneratorSettings(frame_interpolation=InterpolationSettings(**parameters))
        return service.EngineRegistry(settings, "cpu", root=tmp_path).get(service.S2V)

    assert engine().interpolation == Interpolation(FLOW)
    assert engine(interpolation="none").interpolation == Interpolation(NONE)
    target = tmp_path / "video_generator" / "RIFE" / "flownet.pkl"
    target.parent.mkdir()
    torch.save({"module.encode.cnn0.weight": torch.zeros(1)}, target)  # not RIFE 4.26: refused at load
    with pytest.raises(WeightsUnavailable, match="missing key"):
        engine()
    target.write_bytes(rife_file.read_bytes())
    assert engine().interpolation.method == RIFE


def test_benchmark_scores_real_frames(tmp_path: Path) -> None:
    """perf/bench_interpolation.py on a few frames of the real talking-face video: its JSON, and flow beating
    repetition there (the full run's figures are in perf/RESULTS.md)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "perf" / "bench_interpolation.py"
    spec = importlib.util.spec_from_file_location("bench_interpolation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "interpolation.json"
    bench.main(["--out", str(out), "--frames", "9", "--videos", "carphone_pristine.mp4", "--cost-frames", "2",
                "--cost-sizes", "64x48"])
    result = json.loads(out.read_text())
    methods = result["quality"][0]["keep_1_of_2"]["methods"]
    assert result["quality"][0]["keep_1_of_2"]["held_out_frames"] == 4
    assert methods["flow"]["psnr"] > methods["repeat"]["psnr"] + 1 and methods["flow"]["ssim"] > methods["repeat"][
        "ssim"]
    assert {row["method"] for row in result["cost"]} == {"repeat", "flow", "rife-4.26", "dis"}
    assert all(row["interpolated_frames"] == 1 for row in result["cost"])
