"""The LiveAvatar engine on a tiny Wan2.2-S2V release + a tiny liveavatar.safetensors in the release's layout.

Random weights stay random: these runs check the pipeline (folders, LoRA merge, sampler, blocks, caches, decoding,
frame accounting), not what the video looks like.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from wan_fixtures.tiny_release import make_tiny_liveavatar_lora, make_tiny_s2v_release

from python_backends.errors import InputError, WeightsUnavailable
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.wan.common.checkpoint import CheckpointError
from python_backends.generation.wan.common.scheduler import make_sampler
from python_backends.generation.wan.s2v.engine import WanS2VEngine, WanS2VOptions
from python_backends.generation.wan.s2v.liveavatar_engine import LORA_FILE, LiveAvatarOptions, WanLiveAvatarEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR, SECONDS, SIZE = 16000, 2.0, 64
# 2 blocks (24 frames) a clip: 2 s = 32 frames + the 3 the first clip drops = 3 blocks over 2 clips. 13 frames
# of history instead of the release's 365: the tiny VAE spends ~30 ms a frame, and the code path is the same.
OPTIONS = LiveAvatarOptions(infer_frames=24, history_frames=13)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("weights") / "video_generator"
    s2v = make_tiny_s2v_release(root / "Wan2.2-S2V-14B")
    make_tiny_liveavatar_lora(root / "LiveAvatar")
    return s2v, root / "LiveAvatar"


@pytest.fixture(scope="module")
def engine(folders) -> WanLiveAvatarEngine:
    return WanLiveAvatarEngine.from_folders(*folders, "cpu", options=OPTIONS)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    t = np.arange(int(SECONDS * SR)) / SR
    return (0.3 * np.clip(np.sin(2 * np.pi * 3 * t), 0, None) * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    yy, xx = np.mgrid[0:80, 0:72]
    return (np.stack([yy * 2, xx * 3, yy + xx], axis=-1) % 256).astype(np.uint8)


def job(photo, speech, **params) -> GenerationJob:
    base = {"seed": 5, "width": SIZE, "height": SIZE, "fps": 16.0}
    return GenerationJob(photo=photo, waveform=speech, params=GenerationParams(**{**base, **params}))


@pytest.fixture(scope="module")
def reference_run(engine, photo, speech) -> list:
    return list(engine.generate(job(photo, speech)))


def test_streams_block_by_block_over_two_clips(engine, reference_run) -> None:
    chunks = reference_run
    # block 0 of clip 0 streams 12 - 3 frames, block 1 12, then clip 1's first block the 11 still needed
    assert [len(c.frames) for c in chunks] == [9, 12, 11]
    assert [c.start_frame for c in chunks] == [0, 9, 21] and {c.total_frames for c in chunks} == {32}
    assert [c.clip for c in chunks] == [0, 0, 1] and [c.timing["block"] for c in chunks] == [0.0, 1.0, 2.0]
    assert all(c.frames.shape[1:] == (SIZE, SIZE, 3) and c.frames.dtype == np.uint8 for c in chunks)
    sampling = chunks[0].sampling
    assert sampling["sampler"] == "euler-diffusers" and sampling["steps"] == 4 and not sampling["cfg"]
    assert sampling["dit_forwards_per_clip"] == 8 and sampling["latent_frames_per_forward"] == 3
    assert engine.name.startswith("liveavatar-")


@pytest.mark.parametrize(("frame_count", "decoded", "last_chunk"), [(None, 3, 11), (28, 2, 7)], ids=["32", "28"])
def test_the_last_block_leaves_the_decoder_per_latent_frame(engine, photo, speech, reference_run, monkeypatch,
                                                            frame_count, decoded, last_chunk) -> None:
    """Nothing is denoised after the last block, so its frames go on to the copy, interpolation and encoding as
    each latent frame is decoded (the video's tail, pipelined); the chunks and their frames stay the same. Its
    latent frames past the last frame needed are not decoded: with 28 frames, block 2 (frames 21-32) needs only
    its first two latent frames (21-28), and the causal decoder gives them the same pixels without the third."""
    from python_backends.generation.wan.common import streaming

    pieces, run = [], streaming.ChunkMaker.run
    monkeypatch.setattr(streaming.ChunkMaker, "run", lambda self, piece: pieces.append(
        (piece.timing["block"], piece.pixels.shape[2], piece.flush)) or run(self, piece))
    params = {} if frame_count is None else {"frame_count": frame_count}
    chunks = list(engine.generate(job(photo, speech, **params)))
    assert pieces == [(0.0, 9, True), (1.0, 12, True)] + [(2.0, 4, False)] * (decoded - 1) + [(2.0, 4, True)]
    # the last piece's extra frames are past the video's end
    assert [len(c.frames) for c in chunks] == [9, 12, last_chunk]
    assert np.array_equal(np.concatenate([c.frames for c in chunks]),
                          np.concatenate([c.frames for c in reference_run])[: 21 + last_chunk])


def test_the_first_chunk_says_where_the_requests_start_went(reference_run) -> None:
    first, *later = reference_run
    phases = {f"start_{p}_s" for p in ("audio_features", "text", "reference_encode", "history_encode",
                                       "dit_prefill", "decoder_prime")}
    assert phases <= set(first.timing) and all(first.timing[key] >= 0 for key in phases)
    # encode_s is still the VAE encoding + prefill before the first block (and the first priming's wait for its
    # latents, already there), now split into its phases
    assert first.timing["encode_s"] == pytest.approx(sum(first.timing[f"start_{p}_s"] for p in (
        "reference_encode", "history_encode", "dit_prefill")), abs=0.01)
    assert first.timing["decode_s"] >= first.timing["start_decoder_prime_s"] > 0
    assert first.timing["elapsed_s"] >= sum(first.timing[key] for key in phases - {"start_decoder_prime_s"})
    # the start is reported once: later chunks carry no start time (ChunkMaker zeroes its sums after a chunk)
    assert not any(value for chunk in later for key, value in chunk.timing.items() if key.startswith("start_"))


def test_the_lora_is_merged_and_the_sampler_is_its_own(folders, engine) -> None:
    plain = WanS2VEngine.from_folder(folders[0], "cpu", options=WanS2VOptions())
    q = engine.transformer.blocks[0].self_attn.q.weight
    assert not torch.equal(q, plain.transformer.blocks[0].self_attn.q.weight)
    torch.testing.assert_close(engine.transformer.blocks[0].norm3.weight, plain.transformer.blocks[0].norm3.weight)
    assert engine.options.default_steps == 4 and engine.options.default_guidance == 0.0 and engine.options.shift == 3
    # diffusers' FlowMatchEuler with shift 3 shifts twice (scheduler.py): the model sees these four timesteps
    sampler = make_sampler(engine.options.sampler, 4, 3.0)
    np.testing.assert_allclose(sampler.timesteps, [1000.0, 857.6923, 602.1506, 8.928572], rtol=1e-6)
    np.testing.assert_allclose(sampler.sigmas, [1.0, 0.8576923, 0.6021506, 0.008928572, 0.0], rtol=1e-6)


def test_same_seed_same_video_another_seed_another(engine, photo, speech, reference_run) -> None:
    frames = np.concatenate([c.frames for c in reference_run])
    again = np.concatenate([c.frames for c in engine.generate(job(photo, speech))])
    assert np.array_equal(frames, again)
    other = np.concatenate([c.frames for c in engine.generate(job(photo, speech, seed=6))])
    assert other.shape == frames.shape and not np.array_equal(other, frames)


def test_fp8_kv_caches_make_the_same_video_to_their_rounding(folders, photo, speech, reference_run) -> None:
    from python_backends.generation.engines import ENGINES

    assert ENGINES["liveavatar-14B"].options(served_settings(liveavatar_kv_cache_fp8="true"), None).kv_cache_fp8
    fp8 = WanLiveAvatarEngine.from_folders(*folders, "cpu", options=replace(OPTIONS, kv_cache_fp8=True))
    frames = np.concatenate([c.frames for c in reference_run]).astype(np.int16)
    quantized = np.concatenate([c.frames for c in fp8.generate(job(photo, speech))]).astype(np.int16)
    assert quantized.shape == frames.shape and not np.array_equal(quantized, frames)
    diff = np.abs(quantized - frames)
    assert diff.mean() < 0.25 and diff.max() <= 4  # of 255; measured 0.031 and 2 (tiny model, 3 blocks, 4 steps)


def test_fewer_steps_and_a_short_segment(engine, photo, speech) -> None:
    two = list(engine.generate(job(photo, speech, steps=2, frame_count=5)))
    assert sum(len(c.frames) for c in two) == 5 and two[0].sampling["steps"] == 2
    later = list(engine.generate(job(photo, speech, start_frame=20, frame_count=6)))
    assert [c.start_frame for c in later][0] == 20 and sum(len(c.frames) for c in later) == 6


def test_a_segment_continues_from_the_callers_frames(engine, photo, speech, reference_run) -> None:
    frames = np.concatenate([c.frames for c in reference_run])
    source = GenerationJob(photo=photo, waveform=speech, motion_frames=frames[:20], params=GenerationParams(
        seed=9, width=SIZE, height=SIZE, fps=16.0, start_frame=20))
    chunks = list(engine.generate(source))
    assert chunks[0].start_frame == 20 and sum(len(c.frames) for c in chunks) == 12


def test_guidance_and_bad_options_are_refused(engine, photo, speech) -> None:
    with pytest.raises(InputError, match="without classifier-free guidance"):
        list(engine.generate(job(photo, speech, guidance=4.5)))
    with pytest.raises(ValueError, match="whole number of blocks"):
        LiveAvatarOptions(infer_frames=40)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        LiveAvatarOptions(history_frames=72)
    assert LiveAvatarOptions().history_frames == 365 and LiveAvatarOptions().max_area == 704 * 384


def test_missing_or_wrong_lora_file_is_refused_by_name(folders, tmp_path: Path) -> None:
    s2v, live = folders
    with pytest.raises(WeightsUnavailable, match=f"{LORA_FILE} is missing: download Quark-Vision/Live-Avatar"):
        WanLiveAvatarEngine.from_folders(s2v, tmp_path, "cpu", options=OPTIONS)
    partial = tmp_path / "partial"
    shutil.copytree(live, partial)
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(partial / LORA_FILE).items() if ".blocks.0.ffn.0." not in k}
    save_file(state, str(partial / LORA_FILE))
    with pytest.raises(CheckpointError, match=r"liveavatar\.safetensors: 1 target module\(s\) have no LoRA weights: "
                                              r"blocks\.0\.ffn\.0"):
        WanLiveAvatarEngine.from_folders(s2v, partial, "cpu", options=OPTIONS)


def test_a_longer_history_keeps_the_frame_count(folders, photo, speech, reference_run) -> None:
    longer = WanLiveAvatarEngine.from_folders(*folders, "cpu", options=replace(OPTIONS, history_frames=29))
    chunks = list(longer.generate(job(photo, speech, frame_count=21)))
    assert [len(c.frames) for c in chunks] == [len(c.frames) for c in reference_run[:2]]


# ---------------------------------------------------------------- overlapped stages (stage_pipeline)


def test_overlapped_stages_stream_the_same_frames_as_one_thread(engine, photo, speech) -> None:
    """Decoding, the host copy and 16 -> 30 fps interpolation in stage threads change no pixel and no order."""
    sequential = replace(engine.options, overlap=False)
    for params in ({}, {"fps": 30.0}):
        overlapped = list(engine.generate(job(photo, speech, **params)))
        engine.options = sequential
        try:
            plain = list(engine.generate(job(photo, speech, **params)))
        finally:
            engine.options = OPTIONS
        assert [(c.start_frame, len(c.frames), c.clip) for c in overlapped] == [
            (c.start_frame, len(c.frames), c.clip) for c in plain]
        assert np.array_equal(np.concatenate([c.frames for c in overlapped]),
                              np.concatenate([c.frames for c in plain]))
    stats = engine.last_stages.as_dict()
    assert set(stats["busy_s"]) == {"denoise", "decode", "frames"} and stats["items"]["denoise"] == 3


def test_the_first_chunk_streams_before_the_last_block_is_denoised(engine, photo, speech, monkeypatch) -> None:
    """The last block's DiT waits until the consumer holds the first chunk: only an overlapped run gets there."""
    import threading

    first_chunk, waited = threading.Event(), []
    block = engine.causal.block

    def gated(latents, t, audio, cache, n, *args):
        if n == 2 and not waited:
            waited.append(first_chunk.wait(timeout=60))
        return block(latents, t, audio, cache, n, *args)

    monkeypatch.setattr(engine.causal, "block", gated)
    chunks = []
    for chunk in engine.generate(job(photo, speech)):
        chunks.append(chunk)
        first_chunk.set()
    assert waited == [True] and len(chunks) == 3


def test_a_failing_stage_raises_in_the_consumer_and_stops_the_dit(engine, photo, speech, monkeypatch) -> None:
    from python_backends.generation.stage_pipeline import busy_stage_threads
    from python_backends.generation.wan.s2v import liveavatar_engine

    calls = []

    class Broken(liveavatar_engine.LatentDecoder):
        def feed(self, latents):
            calls.append(latents.shape[2])
            if len(calls) == 1:  # the first block's latents (priming advances the decoder without feed)
                raise RuntimeError("decoder out of memory")
            return super().feed(latents)

    monkeypatch.setattr(liveavatar_engine, "LatentDecoder", Broken)
    with pytest.raises(RuntimeError, match="decoder out of memory"):
        list(engine.generate(job(photo, speech)))
    assert not busy_stage_threads()


# ---------------------------------------------------------------- through video_generator's logic


def served_settings(**overrides: str):
    """The video_generator settings its config.pbtxt gives, with overrides."""
    from client.repository import REPOSITORIES, load_config, parameters
    from python_backends.generation.service import VideoGeneratorSettings
    from python_backends.settings import from_mapping

    config = load_config(REPOSITORIES[0] / "video_generator" / "config.pbtxt")
    return from_mapping(VideoGeneratorSettings, {**parameters(config), **overrides})


def test_video_generator_serves_liveavatar_when_its_lora_is_present(folders, photo, speech) -> None:
    from python_backends import spec
    from python_backends.generation.service import LIVEAVATAR, S2V, EngineRegistry, choose_weights, generate

    root = folders[0].parent.parent
    settings = served_settings(liveavatar_history_frames="13")
    choice = choose_weights(settings, root)
    assert choice.engine == LIVEAVATAR and choice.path == folders[1] / LORA_FILE and "Apache-2.0" in choice.licence
    from python_backends.weights import sha256_of

    assert choice.parts == (folders[0],) and choice.sha256() != sha256_of(choice.path)  # the base counts too
    assert "4 euler-diffusers steps, no CFG: 16 DiT forwards per 48-frame clip" in choice.note
    registry = EngineRegistry(settings, "cpu", root)
    assert registry.summary().startswith("speech engine liveavatar-14B [official]: Wan2.2-S2V-14B")
    inputs = {spec.IMAGE: photo, spec.WAVEFORM: speech[: SR // 2]}
    outputs = list(generate(registry, inputs, {"seed": 3, "width": SIZE, "height": SIZE, "fps": 16}))
    import json

    infos = [json.loads(o[spec.CHUNK_INFO][0]) for o in outputs]
    assert {i["engine_id"] for i in infos} == {LIVEAVATAR} and infos[0]["sampling"]["dit_forwards_per_clip"] == 16
    assert sum(len(o[spec.FRAMES]) for o in outputs) == 8  # 0.5 s at 16 fps
    official = choose_weights(served_settings(liveavatar_folder="Elsewhere"), root)
    assert official.engine == S2V and official.path == folders[0]
    assert "40 unipc steps, CFG 4.5 (x2 forwards): 80 DiT forwards per 80-frame clip" in official.note
    assert "Quark-Vision/Live-Avatar" in official.note


def test_benchmark_random_weights_build_the_engine_in_memory(photo, speech, monkeypatch, tmp_path: Path) -> None:
    """`benchmark_random_weights` serves LiveAvatar with no release folder (tiny widths here, release size on a GPU)."""
    from functools import partial

    from wan_fixtures.tiny import TINY_S2V_CONFIG

    from python_backends import spec
    from python_backends.generation.service import LIVEAVATAR, EngineRegistry, generate
    from python_backends.generation.wan.s2v import random_engine

    monkeypatch.setattr(random_engine, "build_random_engine",
                        partial(random_engine.build_random_engine, config=TINY_S2V_CONFIG, scratch=tmp_path))
    registry = EngineRegistry(served_settings(benchmark_random_weights="true", liveavatar_history_frames="13",
                                              wan_vae_memory_format="channels_last_3d"), "cpu", tmp_path / "no-weights")
    assert registry.summary().startswith(f"speech engine {LIVEAVATAR} [benchmark]: random weights built in memory")
    inputs = {spec.IMAGE: photo, spec.WAVEFORM: speech[: SR // 2]}
    outputs = list(generate(registry, inputs, {"seed": 3, "width": SIZE, "height": SIZE, "fps": 16}))
    import json

    infos = [json.loads(o[spec.CHUNK_INFO][0]) for o in outputs]
    assert {i["engine_id"] for i in infos} == {LIVEAVATAR} and infos[0]["engine"].endswith("(random weights)")
    assert infos[0]["timing_s"]["start_history_encode_s"] >= 0  # the request's start by phase, in the first
    vae = registry.get(LIVEAVATAR).vae  # the served setting reached the VAE
    assert vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert sum(len(o[spec.FRAMES]) for o in outputs) == 8  # 0.5 s at 16 fps, through the real wav2vec2 loader


# ---------------------------------------------------------------- priming the decoder from the history's tail

# One block a clip, and a history just longer than the 261 frames whose latents the primed state depends on
# (4 (decoder_memory - 1) + encoder_memory + 1 at the release's VAE depth, which the tiny VAE has).
PRIMING = replace(OPTIONS, infer_frames=12, history_frames=4 * 66 + 1)


@pytest.mark.parametrize("continuing", [False, True], ids=["fresh", "continuing"])
def test_priming_from_the_history_tail_streams_the_full_history_frames(
        engine, photo, speech, reference_run, monkeypatch, continuing) -> None:
    """3 clips: the frames streamed when each clip's decoder is primed from the history's tail (and the encoder
    goes on with the new frames, and skips the chunks of the photo's still run past its fixed point) are those of
    re-encoding and decoding the whole history, every chunk, as the release does.
    Slow (~1 min) because the full path it is checked against re-encodes 265 frames per clip, and fewer would
    not reach past the state's receptive field."""
    from python_backends.generation.wan.common import streaming
    from python_backends.generation.wan.common.vae import LatentEncoder

    pixels: list[torch.Tensor] = []
    encoded: list[tuple[int, int]] = []  # per feed: the frames given, the frames whose chunks ran
    to_uint8, feed = streaming.to_uint8, LatentEncoder.feed  # streaming's chunker takes each decoded block to uint8
    monkeypatch.setattr(streaming, "to_uint8", lambda block: pixels.append(block.clone()) or to_uint8(block))

    def counted_feed(self, video):
        before = self.encoded_frames
        latents = feed(self, video)
        encoded.append((video.shape[2], self.encoded_frames - before))
        return latents

    monkeypatch.setattr(LatentEncoder, "feed", counted_feed)
    if continuing:
        motion = np.concatenate([c.frames for c in reference_run])[:4]
        the_job = GenerationJob(photo=photo, waveform=speech, motion_frames=motion, params=GenerationParams(
            seed=9, width=SIZE, height=SIZE, fps=16.0, start_frame=4, frame_count=25))
    else:
        the_job = job(photo, speech, frame_count=22)  # clip 0 streams 9 frames, then 12 + 1

    runs = {}
    for full in (True, False):
        monkeypatch.setattr(engine, "options", replace(PRIMING, full_history_priming=full))
        monkeypatch.setattr(LatentEncoder, "skip_still_start", not full)  # the release runs every chunk
        pixels.clear(), encoded.clear()
        chunks = list(engine.generate(the_job))
        runs[full] = (chunks, list(pixels), list(encoded))
    (full_chunks, full_pixels, full_encoded), (chunks, tail_pixels, tail_encoded) = runs[True], runs[False]
    assert [c.clip for c in chunks] == [c.clip for c in full_chunks] == [0, 1, 2]
    # the whole history for the motion condition and clip 0, the reference photo (5 frames), then per clip
    assert full_encoded == [(265, 265), (5, 5), (265, 265), (265, 265)]
    # the history's last 261 frames give the condition's 19 and the decoder's 38 latent frames; the photo's still
    # run is encoded to the fixed point (117 frames) once, and a fresh history's encoding gives the reference latent
    # too. After a fresh clip 0 the history moved 9 frames (12 less the 3 dropped), off the 4-frame grouping, so
    # clip 1 restarts on the 261: from the fixed point, the last 12 frames are left to encode. Continuing, the
    # history is the photo then 4 frames of the last segment, and the reference is encoded on its own.
    assert tail_encoded == ([(261, 121), (5, 5), (12, 12), (12, 12)] if continuing else
                            [(261, 117), (261, 12), (12, 12)])
    # bitwise: every VAE layer sees the same shapes and tails on both paths (HistoryPrimer)
    # 3 blocks, the last streamed per latent frame and only its first decoded: it holds the 22nd and last frame
    assert len(tail_pixels) == len(full_pixels) == 3
    assert all(torch.equal(a, b) for a, b in zip(tail_pixels, full_pixels, strict=True))
    for a, b in zip(chunks, full_chunks, strict=True):
        assert a.start_frame == b.start_frame and np.array_equal(a.frames, b.frames)
    assert all(c.timing["decode_s"] > 0 and c.timing["encode_s"] >= 0 for c in chunks)


def test_segments_continuing_a_held_stream_are_the_whole_videos_frames(folders, photo, speech) -> None:
    """video_generator's live streams: a segment that names the attempt before it as `stream_after` goes on with
    that request's stream: bitwise the frames of one request for the whole video, and no new start."""
    import json

    from python_backends import spec
    from python_backends.generation.service import EngineRegistry, generate

    registry = EngineRegistry(served_settings(liveavatar_history_frames="13"), "cpu", folders[0].parent.parent)
    inputs = {spec.IMAGE: photo, spec.WAVEFORM: speech}
    base = {"seed": 3, "width": SIZE, "height": SIZE, "fps": 16, "engine": "liveavatar-14B"}

    def run(inputs, **params) -> tuple[np.ndarray, list[dict]]:
        outputs = list(generate(registry, inputs, {**base, **params}))
        return np.concatenate([o[spec.FRAMES] for o in outputs]), [json.loads(o[spec.CHUNK_INFO][0]) for o in outputs]

    whole, _ = run(inputs)
    first, first_info = run(inputs, frame_count=14, stream="job:0")  # cuts block 1 (frames 9..21) at 14
    assert len(registry.streams) == 1 and first_info[0]["stream"] == "started"
    rest, rest_info = run(inputs, start_frame=14, seed=11, stream="job:1", stream_after="job:0")
    assert np.array_equal(np.concatenate([first, rest]), whole)
    assert {i["stream"] for i in rest_info} == {"continued"} and rest_info[0]["stream_seed"] == 3
    assert "start_history_encode_s" not in rest_info[0].get("timing_s", {})  # no new start
    assert len(registry.streams) == 0  # the video's end: nothing left to continue

    # Not continued: another photo with the token (another job's inputs), or a request that stopped early.
    run(inputs, frame_count=14, stream="job:0")
    _, other = run({**inputs, spec.IMAGE: photo[::-1].copy()}, start_frame=14, stream="job:1",
                   stream_after="job:0")
    assert other[0]["stream"] == "started" and len(registry.streams) == 0
    partial = generate(registry, inputs, {**base, "frame_count": 14, "stream": "job:2"})
    next(partial)
    partial.close()
    assert len(registry.streams) == 0

    # whole_clips (the orchestrator sized the request before it knew the engine): going on with a stream, the frames
    # asked; without one, LiveAvatar's nearest whole clips (3 s: 48 frames at 16 fps), or up to the video's end.
    assert len(run(inputs, frame_count=14, stream="job:3", whole_clips=True)[0]) == 14
    assert len(run(inputs, frame_count=14, whole_clips=True)[0]) == min(48, len(whole)) > 14



def test_the_served_engine_encodes_its_prompt_at_load_where_the_setting_puts_umt5(folders) -> None:
    from python_backends.generation.service import LIVEAVATAR, EngineRegistry

    registry = EngineRegistry(served_settings(wan_text_encoder_cpu="true", preload="true"), "cpu",
                              folders[0].parent.parent)
    engine = registry.get(LIVEAVATAR)
    assert engine.options.text_encoder_cpu and engine.text_encoder.device == torch.device("cpu")
    assert list(engine._contexts) == [engine.options.default_prompt]  # no CFG: no negative prompt


@pytest.mark.parametrize("text_encoder_cpu", ["false", "true"])
def test_running_out_of_gpu_memory_is_explained_and_the_next_request_runs(folders, photo, speech, monkeypatch,
                                                                          text_encoder_cpu: str) -> None:
    """A request that runs out of GPU memory (on an H100, LiveAvatar's KV caches at a request's start) fails with
    what to do, holds no stream, gives PyTorch's cached blocks back, and the next request runs."""
    from python_backends import spec
    from python_backends.errors import TalkingHeadError
    from python_backends.generation.service import EngineRegistry, generate
    from python_backends.generation.stage_pipeline import busy_stage_threads
    from python_backends.generation.wan.s2v import causal

    registry = EngineRegistry(served_settings(liveavatar_history_frames="13", wan_text_encoder_cpu=text_encoder_cpu),
                              "cpu", folders[0].parent.parent)
    inputs = {spec.IMAGE: photo, spec.WAVEFORM: speech[: SR // 2]}
    params = {"seed": 3, "width": SIZE, "height": SIZE, "fps": 16, "engine": "liveavatar-14B", "stream": "job:0"}
    # umT5 on the GPU is the first thing to move off it
    text = "" if text_encoder_cpu == "true" else (r", set video_generator's wan_text_encoder_cpu \(umT5 on the CPU "
                                                  r"leaves 11 GiB to the DiT\)")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 274.00 MiB. GPU 0 has a total capacity "
                                     "of 79.18 GiB of which 254.56 MiB is free. Process 731 has 582.00 MiB in use.")

    caches = causal.step_caches
    monkeypatch.setattr(causal, "step_caches", out_of_memory)
    released: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(True))
    with pytest.raises(TalkingHeadError, match=(
            r"^video_generator ran out of GPU memory generating 64x64 with liveavatar-14B \(CUDA out of memory\. "
            r"Tried to allocate 274\.00 MiB\. GPU 0 has .* 254\.56 MiB is free\.\): ask for a smaller width and "
            rf"height{text}, or serve it on a GPU with more memory$")):
        list(generate(registry, inputs, params))
    assert released == [True] and len(registry.streams) == 0 and not busy_stage_threads()
    monkeypatch.setattr(causal, "step_caches", caches)
    assert sum(len(o[spec.FRAMES]) for o in generate(registry, inputs, params)) == 8  # 0.5 s at 16 fps


def test_a_history_shorter_than_a_clip_keeps_its_length_over_clip_boundaries(engine, photo, speech) -> None:
    # 13 history frames, 24-frame clips: the second boundary's history is the last 13 of the clip's frames (it was
    # the clip's 24, not 1 + 4k frames, and the encoder refused it).
    long_speech = np.concatenate([speech, speech])[: int(3.0 * SR)]
    chunks = list(engine.generate(job(photo, long_speech)))
    assert sum(len(c.frames) for c in chunks) == 48 and max(c.clip for c in chunks) == 2
