"""Wan2.2-S2V engine: flow-matching samplers, the release-folder loader, and whole tiny-release runs on CPU."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from wan_fixtures.tiny_release import make_tiny_s2v_release

from python_backends.errors import InputError, WeightsUnavailable
from python_backends.frame_interpolation.config import Interpolation
from python_backends.frame_interpolation.flow_interpolator import FlowInterpolator
from python_backends.frame_interpolation.resampler import InterpolatingResampler
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.wan.common.configs import S2V_14B
from python_backends.generation.wan.common.scheduler import (
    OFFICIAL_SIGMA_MAX,
    FlowEulerSampler,
    distill_schedule,
    flow_schedule,
    make_sampler,
)
from python_backends.generation.wan.s2v.engine import (
    WanFrameChunk,
    WanS2VEngine,
    WanS2VOptions,
    audio_window,
    output_size,
    resample_to_video_rate,
    size_within_area,
)

log = logging.getLogger(__name__)

SIZE = 64
PER_CLIP = 20  # frames per clip: the first clip streams 17, so 2 s of audio (32 frames) takes two clips
SECONDS = 2.0
SR = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- scheduler helpers


def gaussian_flow(x: torch.Tensor, sigma: float, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Exact flow of x_sigma = (1 - sigma) x0 + sigma n for x0 ~ N(mu, std^2): (x - E[x0 | x]) / sigma."""
    a = 1.0 - sigma
    x0_mean = mu + a * std**2 / (a**2 * std**2 + sigma**2) * (x - a * mu)
    return (x - x0_mean) / sigma


def solve_gaussian(sampler, x: torch.Tensor, mu, std) -> torch.Tensor:
    for i in range(sampler.num_steps):
        x = sampler.step(gaussian_flow(x, float(sampler.sigmas[i]), mu, std), x)
    return x


# ---------------------------------------------------------------- scheduler tests


def test_schedule_matches_the_closed_form() -> None:
    sigmas, timesteps = flow_schedule(40, 3.0)
    assert sigmas.dtype == np.float32 and timesteps.dtype == np.int64
    assert len(sigmas) == 41 and len(timesteps) == 40 and sigmas[-1] == 0.0
    s = 0.999 * (1 - np.arange(40) / 40)
    expected = 3 * s / (1 + 2 * s)
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-6)
    np.testing.assert_array_equal(timesteps, np.floor(expected * 1000 + 1e-9).astype(np.int64))
    assert timesteps[0] == 999 and timesteps[-1] == 71
    assert OFFICIAL_SIGMA_MAX == pytest.approx(0.999, abs=1e-7)
    # shift 1 is the plain linear schedule; shift > 1 spends more steps at high noise
    linear, _ = flow_schedule(10, 1.0)
    np.testing.assert_allclose(linear[:-1], np.linspace(OFFICIAL_SIGMA_MAX, 0, 11)[:-1], rtol=1e-6)
    assert np.all(flow_schedule(10, 5.0)[0][1:-1] > linear[1:-1])
    # Euler for distilled checkpoints starts from pure noise: LightX2V's step list 1000, 750, 500, 250 with
    # shift 5, and the model sees the shifted timesteps unrounded (WanStepDistillScheduler: sigmas * 1000)
    sigmas4, t4 = distill_schedule(4, 5.0)
    np.testing.assert_allclose(sigmas4, [1.0, 0.9375, 5 / 6, 0.625, 0.0], rtol=1e-6)
    np.testing.assert_allclose(t4, [1000, 937.5, 2500 / 3, 625], rtol=1e-6)
    assert make_sampler("euler", 4, 5.0).timestep().item() == 1000.0
    with pytest.raises(ValueError):
        flow_schedule(0, 3.0)


@pytest.mark.parametrize("name", ["unipc", "euler", "euler-diffusers"])
def test_exact_flow_lands_on_the_data(name: str) -> None:
    """On straight paths the flow is noise - x0 everywhere: any consistent solver must end exactly at x0."""
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)
    for steps in (1, 2, 5, 40):
        sampler = make_sampler(name, steps, 3.0)
        x = (1 - float(sampler.sigmas[0])) * x0 + float(sampler.sigmas[0]) * noise
        for _ in range(steps):
            x = sampler.step(noise - x0, x)
        torch.testing.assert_close(x, x0, atol=2e-5, rtol=0)
        with pytest.raises(RuntimeError):
            sampler.step(noise - x0, x)


def test_unipc_converges_faster_than_euler_on_a_gaussian() -> None:
    """Gaussian data has a closed-form probability-flow ODE: x0 = mu + std (x - (1 - s0) mu) / sqrt(...)."""
    gen = torch.Generator().manual_seed(1)
    mu, std = torch.randn(64, generator=gen, dtype=torch.float64), 0.3 + torch.rand(64, generator=gen,
                                                                                       dtype=torch.float64)
    noise = torch.randn(64, generator=gen, dtype=torch.float64)
    errors = {}
    for name in ("unipc", "euler"):
        for shift, steps in ((1.0, 20), (1.0, 40), (3.0, 20)):
            sampler = make_sampler(name, steps, shift)
            s0 = float(sampler.sigmas[0])
            exact = mu + std * (noise - (1 - s0) * mu) / torch.sqrt((1 - s0) ** 2 * std**2 + s0**2)
            errors[name, shift, steps] = float((solve_gaussian(sampler, noise.clone(), mu, std) - exact).abs().max())
    log.info("Gaussian ODE max errors: %s", {k: f"{v:.2e}" for k, v in errors.items()})
    assert errors["unipc", 1.0, 20] < errors["euler", 1.0, 20] / 10
    assert errors["unipc", 3.0, 20] < errors["euler", 3.0, 20] / 5
    assert errors["unipc", 1.0, 20] / errors["unipc", 1.0, 40] > 3.5  # second order or better
    assert 1.7 < errors["euler", 1.0, 20] / errors["euler", 1.0, 40] < 2.3  # first order


def test_euler_is_the_explicit_update() -> None:
    sigmas, timesteps = flow_schedule(3, 3.0, sigma_max=1.0)
    sampler = FlowEulerSampler(sigmas, timesteps)
    x = torch.ones(2)
    x1 = sampler.step(torch.full((2,), 2.0), x)
    torch.testing.assert_close(x1, x + (float(sigmas[1]) - float(sigmas[0])) * 2.0)
    with pytest.raises(ValueError):
        FlowEulerSampler([1.0, 0.5, 0.7], [1000, 500])  # not decreasing
    with pytest.raises(ValueError):
        make_sampler("dpm++", 4, 3.0)


# ---------------------------------------------------------------- engine: helpers


def test_official_size_rules() -> None:
    # photo area above the budget: scale down, pad to multiples of 64, stay within 480 x 832
    h, w = size_within_area(1024, 1024, 480 * 832)
    assert (h, w) == (576, 576) and h * w <= 480 * 832
    h, w = size_within_area(720, 1280, 480 * 832)
    assert h % 64 == 0 and w % 64 == 0 and h * w <= 480 * 832 and w > h
    assert size_within_area(300, 200, 480 * 832) == (320, 256)  # small photos are never upscaled, only padded
    assert output_size((100, 80), 64, 64, 480 * 832) == (64, 64)
    assert output_size((200, 100), 0, 128, 480 * 832) == (128, 64)  # width from the photo's aspect
    with pytest.raises(InputError, match="elongated"):
        output_size((100, 10000), 0, 0, 480 * 832)
    for bad in ((70, 64), (64, 32), (-16, 64)):
        with pytest.raises(InputError):
            output_size((100, 80), *bad, 480 * 832)


def test_audio_bucketing_follows_get_audio_embed_bucket_fps() -> None:
    layers, dim, t50 = 3, 2, 100  # 2 s at 50 Hz
    features = torch.arange(layers * t50 * dim, dtype=torch.float32).reshape(layers, t50, dim)
    f30 = resample_to_video_rate(features)
    assert f30.shape == (layers, dim, 60)
    torch.testing.assert_close(f30[:, :, 0], features[:, 0])  # align_corners: the ends are kept
    torch.testing.assert_close(f30[:, :, -1], features[:, -1])
    window = audio_window(f30, 0, 40, 16)
    assert window.shape == (1, layers, dim, 40)
    # frame k takes 30 Hz frame round(1.875 k) with numpy's half-to-even rounding: frame 4 -> 7.5 -> 8
    for k, expected in ((0, 0), (1, 2), (4, 8), (12, 22), (31, 58)):
        torch.testing.assert_close(window[0, :, :, k], f30[:, :, expected])
    assert torch.all(window[..., 32:] == 0)  # past the end: zeros, as the official padding
    before = audio_window(f30, -3, 5, 16)  # frames before the start repeat the first
    for k in range(4):
        torch.testing.assert_close(before[0, :, :, k], f30[:, :, 0])
    torch.testing.assert_close(before[0, :, :, 4], f30[:, :, 2])


@pytest.mark.parametrize("fps", [16.0, 25.0, 30.0, 10.0, 12.5])
def test_frame_rate_resampling_picks_the_nearest_frame(fps: float) -> None:
    """interpolation=none: nearest-time frame selection."""
    source = np.arange(37, dtype=np.uint8)[:, None]  # frame i is "i"
    total = math.ceil(37 / 16 * fps - 1e-9)
    resampler = InterpolatingResampler(16, fps, 37, total)
    out = []
    for start, stop in ((0, 5), (5, 6), (6, 20), (20, 37)):  # pieces of any size, as the VAE yields them
        out.extend(resampler.push(source[start:stop]))
    times = np.arange(total) / fps
    nearest = np.minimum(np.round(times * 16 + 1e-9).astype(int), 36)
    np.testing.assert_array_equal(np.concatenate(out), nearest.astype(np.uint8))


# ---------------------------------------------------------------- engine: tiny release end to end


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_s2v_release(tmp_path_factory.mktemp("wan_s2v_release"))


@pytest.fixture(scope="module")
def engine(release: Path) -> WanS2VEngine:
    return WanS2VEngine.from_folder(release, "cpu", options=WanS2VOptions(infer_frames=PER_CLIP))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    t = np.arange(int(SECONDS * SR)) / SR
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None)
    return (0.3 * envelope * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:80]
    face = (np.stack([yy * 2, xx * 3, (yy + xx)], axis=-1) % 256).astype(np.uint8)
    return np.clip(face + rng.integers(0, 30, face.shape), 0, 255).astype(np.uint8)


def run(engine: WanS2VEngine, photo: np.ndarray, speech: np.ndarray, embedding: np.ndarray | None = None,
        **params) -> tuple[list[WanFrameChunk], float]:
    base = {"seed": 7, "steps": 2, "width": SIZE, "height": SIZE, "fps": 16.0, "chunk_frames": 8}
    job = GenerationJob(photo=photo, waveform=speech, params=GenerationParams(**{**base, **params}),
                        embedding=embedding)
    start = time.perf_counter()
    chunks = list(engine.generate(job))
    return chunks, time.perf_counter() - start


def frames_of(chunks: list[WanFrameChunk]) -> np.ndarray:
    return np.concatenate([c.frames for c in chunks])


@pytest.fixture(scope="module")
def reference_run(engine: WanS2VEngine, photo: np.ndarray, speech: np.ndarray) -> list[WanFrameChunk]:
    chunks, seconds = run(engine, photo, speech)
    log.info("tiny S2V: %d chunks, %d frames in %.1f s", len(chunks), sum(len(c.frames) for c in chunks), seconds)
    return chunks


def test_streams_two_chained_clips(engine: WanS2VEngine, reference_run: list[WanFrameChunk]) -> None:
    chunks = reference_run
    frames = frames_of(chunks)
    assert frames.dtype == np.uint8 and frames.shape == (32, SIZE, SIZE, 3)  # 2 s at 16 fps
    assert len(chunks) > 1 and all(isinstance(c, WanFrameChunk) for c in chunks)
    assert [c.start_frame for c in chunks] == list(np.cumsum([0] + [len(c.frames) for c in chunks[:-1]]))
    assert all(c.total_frames == 32 and c.fps == 16.0 for c in chunks)
    assert {c.clip for c in chunks} == {0, 1}
    first = [c for c in chunks if c.clip == 0]
    assert sum(len(c.frames) for c in first) == PER_CLIP - 3  # the first clip drops 3 frames, as official
    for c in chunks:
        assert c.timing["elapsed_s"] > 0 and c.timing["denoise_s"] > 0 and c.timing["steps"] == 2
        assert "attempts" not in c.timing  # no engine-level re-generation: the pipeline's gates re-roll
    elapsed = [c.timing["elapsed_s"] for c in chunks]
    assert elapsed == sorted(elapsed)
    assert frames.std() > 1.0  # real decoded pixels, not a constant
    assert engine.name.startswith("wan2.2-s2v")


def test_the_first_chunk_says_where_the_requests_start_went(reference_run: list[WanFrameChunk]) -> None:
    first, *later = reference_run
    phases = {f"start_{p}_s" for p in ("audio_features", "text", "reference_encode")}
    assert phases <= set(first.timing) and all(first.timing[key] >= 0 for key in phases)
    # the first clip drops its motion frames, so its encode_s is the photo's encoding, inside the phase's lap
    assert 0 < first.timing["encode_s"] <= first.timing["start_reference_encode_s"] + 1e-3
    assert first.timing["elapsed_s"] >= sum(first.timing[key] for key in phases)
    # reported once: later chunks say 0 (ChunkMaker zeroes its sums after a chunk)
    assert not any(value for chunk in later for key, value in chunk.timing.items() if key.startswith("start_"))


def test_same_seed_same_video_and_fps_resampling(engine, photo, speech, reference_run) -> None:
    """Runs with the same seed at 25 fps. With interpolation=none every frame is the 16 fps frame nearest in
    time; with the default (flow) frame j is the flow interpolator's frame at 16 j / 25 between its two 16 fps
    neighbours, the 16 fps frame itself where the times coincide, the last one past it."""
    source = frames_of(reference_run)
    assert engine.interpolation == Interpolation("flow")  # the default without RIFE weights
    engine.interpolation = Interpolation("none")
    try:
        chunks, _ = run(engine, photo, speech, fps=25.0, chunk_frames=12)
    finally:
        engine.interpolation = Interpolation("flow")
    frames = frames_of(chunks)
    assert frames.shape[0] == 50 and all(c.total_frames == 50 and c.fps == 25.0 for c in chunks)
    nearest = np.minimum(np.floor(np.arange(50) * 16 / 25 + 0.5).astype(int), 31)
    np.testing.assert_array_equal(frames, source[nearest])

    interpolated = frames_of(run(engine, photo, speech, fps=25.0, chunk_frames=12)[0])
    assert interpolated.shape == frames.shape
    flow = FlowInterpolator("cpu")
    for j in (0, 1, 7, 25, 30, 49):
        k, t = divmod(j * 16, 25)
        expected = source[k] if t == 0 or k == 31 else flow(source[k], source[k + 1], [t / 25])[0]  # 31: last
        np.testing.assert_array_equal(interpolated[j], expected)


def test_overlapped_stages_stream_the_same_chunks_as_one_thread(engine, photo, speech, reference_run) -> None:
    """The host copy, interpolation and chunking in a stage thread beside the DiT change no pixel, no chunk."""
    from dataclasses import replace

    options = engine.options
    engine.options = replace(options, overlap=False)
    try:
        plain, _ = run(engine, photo, speech)
        plain30, _ = run(engine, photo, speech, fps=30.0, chunk_frames=12)
    finally:
        engine.options = options
    assert [(c.start_frame, len(c.frames), c.clip) for c in plain] == [
        (c.start_frame, len(c.frames), c.clip) for c in reference_run]
    np.testing.assert_array_equal(frames_of(plain), frames_of(reference_run))
    overlapped30, _ = run(engine, photo, speech, fps=30.0, chunk_frames=12)
    assert [len(c.frames) for c in overlapped30] == [len(c.frames) for c in plain30]
    np.testing.assert_array_equal(frames_of(overlapped30), frames_of(plain30))
    stats = engine.last_stages.as_dict()
    assert set(stats["busy_s"]) == {"denoise+decode", "frames"} and stats["items"]["frames"] == len(overlapped30)


def test_balanced_clips_denoise_only_what_the_job_needs(engine, photo, speech, monkeypatch) -> None:
    """1.5 s = 24 frames + the 3 the first clip drops: two full 20-frame clips denoise 40 frames, two balanced
    ones 32 (4 latent frames each), and the same 24 frames stream."""
    from dataclasses import replace

    denoised = []
    denoise = engine._denoise

    def recording(seed, shape, *args):
        denoised.append(shape[2])
        return denoise(seed, shape, *args)

    monkeypatch.setattr(engine, "_denoise", recording)
    full, _ = run(engine, photo, speech, max_duration_s=1.5)
    options = engine.options
    engine.options = replace(options, balance_clips=True)
    try:
        balanced, _ = run(engine, photo, speech, max_duration_s=1.5)
    finally:
        engine.options = options
    assert denoised == [5, 5, 4, 4]
    assert len(frames_of(full)) == len(frames_of(balanced)) == 24
    assert balanced[0].sampling["frames_per_clip"] == 16 and full[0].sampling["frames_per_clip"] == PER_CLIP


def test_another_seed_another_video(engine, photo, speech, reference_run) -> None:
    chunks, _ = run(engine, photo, speech, seed=8, max_duration_s=1.0)  # first clip only
    frames = frames_of(chunks)
    assert frames.shape[0] == 16 and {c.clip for c in chunks} == {0}
    assert np.abs(frames.astype(int) - frames_of(reference_run)[:16].astype(int)).mean() > 1.0


def test_bad_requests_are_input_errors(engine, photo, speech) -> None:
    with pytest.raises(InputError, match="multiples of 16"):
        run(engine, photo, speech, width=72)
    with pytest.raises(InputError, match="speech"):
        list(engine.generate(GenerationJob(photo=photo, params=GenerationParams(width=SIZE, height=SIZE))))
    with pytest.raises(InputError, match="wav2vec2 features must be"):
        list(engine.generate(GenerationJob(photo=photo, wav2vec2_features=np.zeros((3, 50, 8), np.float32))))


def test_release_folder_with_a_missing_file_is_rejected_by_name(release: Path, tmp_path: Path) -> None:
    for name in (S2V_14B.vae_checkpoint, S2V_14B.t5_checkpoint, S2V_14B.wav2vec, "google/umt5-xxl",
                 "diffusion_pytorch_model.safetensors.index.json"):
        folder = tmp_path / name.replace("/", "_")
        shutil.copytree(release, folder)
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        with pytest.raises(WeightsUnavailable, match=name.split("/")[-1].replace(".", r"\.")):
            WanS2VEngine.from_folder(folder)
    # a shard listed in the index but absent is named by the strict DiT loader
    folder = tmp_path / "shard"
    shutil.copytree(release, folder)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsUnavailable, match="diffusion_pytorch_model-00002-of-00002"):
        WanS2VEngine.from_folder(folder)


def test_decode_context_option_keeps_the_frame_count(engine) -> None:
    """Priming the causal decoder with fewer motion latents is faster and approximate, never misaligned."""
    gen = torch.Generator().manual_seed(3)
    motion = torch.randn(1, 16, 4, SIZE // 8, SIZE // 8, generator=gen)
    latents = torch.randn(1, 16, PER_CLIP // 4, SIZE // 8, SIZE // 8, generator=gen)
    exact = torch.cat(list(engine._decoded(motion, latents, 0)), dim=2)
    options = engine.options
    engine.options = replace(options, decode_context_latents=2)
    try:
        short = torch.cat(list(engine._decoded(motion, latents, 0)), dim=2)
    finally:
        engine.options = options
    assert exact.shape == short.shape == (1, 3, PER_CLIP, SIZE, SIZE)
    assert not torch.equal(short, exact)  # approximate: the random tiny VAE says nothing about how close


def _lora_for(engine: WanS2VEngine, rank: int, scale: float) -> dict[str, torch.Tensor]:
    from python_backends.generation.wan.common.lora import relighting_targets

    generator = torch.Generator().manual_seed(1)
    modules = dict(engine.transformer.named_modules())
    state = {}
    for name in sorted(relighting_targets(engine.transformer)):
        out_dim, in_dim = modules[name].weight.shape
        state[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(rank, in_dim, generator=generator)
        state[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(out_dim, rank, generator=generator) * scale
    return state


def test_lora_and_fp8_switches_load_and_act(release: Path, engine, photo, speech, reference_run) -> None:
    from safetensors.torch import save_file

    save_file(_lora_for(engine, 4, 0.0), release / "zero_lora.safetensors")
    save_file(_lora_for(engine, 4, 0.05), release / "some_lora.safetensors")
    reference = frames_of(reference_run)
    zero = WanS2VEngine.from_folder(release, "cpu", options=WanS2VOptions(infer_frames=PER_CLIP,
                                                                          lora="zero_lora.safetensors"))
    assert np.array_equal(frames_of(run(zero, photo, speech)[0]), reference)  # B = 0: the LoRA adds nothing
    some = WanS2VEngine.from_folder(release, "cpu", options=WanS2VOptions(infer_frames=PER_CLIP,
                                                                          lora="some_lora.safetensors"))
    assert not np.array_equal(frames_of(run(some, photo, speech)[0]), reference)
    fp8 = WanS2VEngine.from_folder(release, "cpu", options=WanS2VOptions(infer_frames=PER_CLIP, fp8="rowwise"))
    from python_backends.generation.wan.common.fp8 import FP8Linear

    assert any(isinstance(m, FP8Linear) for m in fp8.transformer.modules())
    frames = frames_of(run(fp8, photo, speech)[0])
    assert frames.shape == reference.shape
    # e4m3 weights: close to the bf16/fp32 video, not equal (mean absolute difference in grey levels).
    assert 0 < np.abs(frames.astype(float) - reference).mean() < 20


def test_a_segment_continues_from_motion_frames(engine, photo, speech, reference_run) -> None:
    """Re-generating the second clip as a segment from the first clip's frames (what the orchestrator does to
    re-roll a segment) gives the whole-clip run's second clip, up to the uint8 rounding of the motion frames."""
    source = frames_of(reference_run)
    start = PER_CLIP - 3  # where clip 1 starts; the whole-clip run made it with seed 7 + 1
    job = GenerationJob(photo=photo, waveform=speech, motion_frames=source[:start], params=GenerationParams(
        seed=8, steps=2, width=SIZE, height=SIZE, fps=16.0, chunk_frames=8, start_frame=start))
    chunks = list(engine.generate(job))
    frames = frames_of(chunks)
    assert [c.start_frame for c in chunks][0] == start and frames.shape == source[start:].shape
    assert all(c.total_frames == 32 for c in chunks)
    diff = np.abs(frames.astype(int) - source[start:].astype(int)).mean()
    other = GenerationJob(photo=photo, waveform=speech, motion_frames=source[:start], params=GenerationParams(
        seed=9, steps=2, width=SIZE, height=SIZE, fps=16.0, chunk_frames=8, start_frame=start))
    rerolled = frames_of(list(engine.generate(other)))
    assert diff < 0.5 < np.abs(rerolled.astype(int) - source[start:].astype(int)).mean()
    bounded = GenerationJob(photo=photo, waveform=speech, motion_frames=source[:start], params=GenerationParams(
        seed=8, steps=2, width=SIZE, height=SIZE, fps=16.0, chunk_frames=8, start_frame=start, frame_count=5))
    assert frames_of(list(engine.generate(bounded))).shape[0] == 5


def test_vae_options_are_checked_for_s2v_and_animate() -> None:
    from python_backends.generation.wan.animate.engine import WanAnimateOptions
    from python_backends.generation.wan.s2v.engine import WanS2VOptions

    for options in (WanS2VOptions, WanAnimateOptions):
        with pytest.raises(ValueError, match="vae_memory_format must be one of contiguous, channels_last_3d"):
            options(vae_memory_format="channels_last")
        with pytest.raises(ValueError, match="vae_dtype must be"):
            options(vae_dtype="int8")
        assert options(vae_memory_format="channels_last_3d", vae_compile=True).vae_compile


class CountingTextEncoder:
    """The engine's umT5, counting the prompts it encodes."""

    def __init__(self, encoder) -> None:
        self.encoder, self.prompts = encoder, []

    def __call__(self, prompts):
        self.prompts += list(prompts)
        return self.encoder(prompts)


def test_prepare_encodes_the_default_prompts_so_that_no_request_waits_for_umt5(release: Path, photo: np.ndarray,
                                                                              speech: np.ndarray) -> None:
    from python_backends.generation.wan.common.configs import S2V_14B

    engine = WanS2VEngine.from_folder(release, "cpu", options=WanS2VOptions(infer_frames=PER_CLIP,
                                                                            text_encoder_cpu=True))
    counting = engine.text_encoder = CountingTextEncoder(engine.text_encoder)
    engine.prepare()
    assert counting.prompts == [WanS2VOptions.default_prompt, S2V_14B.sample_neg_prompt]  # CFG reads both
    run(engine, photo, speech[: SR // 2])
    assert len(counting.prompts) == 2  # the request found them encoded
    run(engine, photo, speech[: SR // 2], prompt="A woman smiles while she talks.")
    assert counting.prompts[2:] == ["A woman smiles while she talks."]


def test_the_text_encoder_goes_to_the_cpu_in_float32_when_asked() -> None:
    from python_backends.generation.wan.s2v.engine import text_encoder_placement

    gpu = torch.device("cuda", 0)  # placement only: no GPU is touched
    assert text_encoder_placement(gpu, False) == (gpu, torch.bfloat16)  # the release's t5_dtype beside the DiT
    assert text_encoder_placement(gpu, True) == (torch.device("cpu"), torch.float32)  # official --t5_cpu
    assert text_encoder_placement(torch.device("cpu"), False) == (torch.device("cpu"), torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_engine_with_its_text_encoder_on_the_cpu_generates(release: Path, photo: np.ndarray,
                                                                speech: np.ndarray) -> None:
    engine = WanS2VEngine.from_folder(release, "cuda", options=WanS2VOptions(infer_frames=PER_CLIP,
                                                                             text_encoder_cpu=True))
    assert engine.device.type == "cuda" and engine.text_encoder.device == torch.device("cpu")
    assert engine.text_encoder.model.token_embedding.weight.dtype == torch.float32
    chunks, _ = run(engine, photo, speech[: SR // 2])
    assert sum(len(c.frames) for c in chunks) == 8 and np.isfinite(frames_of(chunks)).all()
