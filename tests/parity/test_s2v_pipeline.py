"""The whole Wan2.2-S2V job: the official `WanS2V` against our `WanS2VEngine`, on one tiny release folder.

Both sides load every model of the same tiny random release (DiT, Wan2.1 VAE, umT5 + tokenizer, wav2vec2) and get
the same photo (a PNG for the official, its pixels for ours), the same speech (a 16-bit WAV: the official reads it
with librosa, ours with our ffmpeg decoder, as the server does), the same prompt, seed, steps, guidance and shift.
The official pipeline runs as released, built on the CPU in float32 (tests/parity/official.py `build_on_cpu`).

Our engine's deliberate departures are switched to the official behaviour where they would change the numbers:
`audio_sync=False` (official audio windows), `cfg_batched=False` (two forwards per step; the batched pair is
compared too, within its own tolerance), `fps=16` and `max_duration_s` = the official video's length (the official
makes whole clips; we stream exactly the frames the audio needs). The photo is at the output size, so the official
resize + centre crop and our scale-to-cover + crop are both the identity. The initial noise needs no switch on the
CPU: both draw float32 normal noise from a CPU generator seeded with seed + clip.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_files import wav_bytes
from PIL import Image

from python_backends.audio.decode import decode_audio
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.wan.configs import S2V_14B
from python_backends.generation.wan.s2v_engine import (
    WanS2VEngine,
    WanS2VOptions,
    audio_window,
    resample_to_video_rate,
)
from python_backends.generation.wan.tiny import TINY_S2V_CONFIG
from python_backends.generation.wan.tiny_release import TINY_RELEASE_T5, TINY_RELEASE_VAE_DIM, make_tiny_s2v_release

from .official import build_on_cpu

HEIGHT, WIDTH = 64, 128
PER_CLIP = 8  # infer_frames: clips of 5 (the first drops 3), 8, 8 frames
SECONDS = 1.5  # 44 wav2vec2 frames at 30 Hz: the official makes int(44 / (8 * 30 / 16)) + 1 = 3 clips
STEPS, SEED, SHIFT = 3, 11, S2V_14B.sample_shift
PROMPT = "a person is talking to the camera"
# The pixels are clamped to [-1, 1], the latents they decode from reach ~10 and are scaled by the VAE's per-channel
# std (up to 3.3) before decoding: a latent difference of 1e-6 relative reads ~3e-5 relative to the pixel range.
PIXEL_TOLERANCE = 1e-4
PIXEL_WHY = "float32; latents within 1e-6 rel. read ~30x larger against the clamped [-1, 1] pixel range"
LEVEL_WHY = "uint8 truncation (save_video): a float difference of 1e-5 can cross a level boundary"


@pytest.fixture(scope="module")
def release(tiny_release) -> Path:
    return tiny_release(make_tiny_s2v_release)


@pytest.fixture(scope="module")
def pipeline(official, release):
    from wan.configs import s2v_14B
    from wan.speech2video import WanS2V

    config = copy.deepcopy(s2v_14B)
    # float32 on the CPU (the release runs bf16 on GPUs); the tiny DiT's text length.
    config.param_dtype = config.t5_dtype = torch.float32
    config.text_len = TINY_S2V_CONFIG.text_len
    return build_on_cpu(WanS2V, config, release, vae_dim=TINY_RELEASE_VAE_DIM, t5=TINY_RELEASE_T5)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    photo = np.stack([(x * 2) % 256, (y * 4) % 256, ((x + y) * 3) % 256], axis=-1)
    photo = np.clip(photo + rng.integers(-20, 20, photo.shape), 0, 255).astype(np.uint8)
    t = np.arange(int(16000 * SECONDS)) / 16000
    speech = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)
    folder = tmp_path_factory.mktemp("s2v-job")
    Image.fromarray(photo).save(folder / "photo.png")
    (folder / "speech.wav").write_bytes(wav_bytes(speech))
    waveform = decode_audio((folder / "speech.wav").read_bytes()).samples
    return {"photo": photo, "photo_path": str(folder / "photo.png"), "speech_path": str(folder / "speech.wav"),
            "waveform": waveform}


@pytest.fixture(scope="module")
def engines(release) -> dict[bool, WanS2VEngine]:
    """Ours, official switches on: guidance branches as two forwards (False) or batched (True, our default)."""
    return {batched: WanS2VEngine.from_folder(release, "cpu", torch.float32, options=WanS2VOptions(
        infer_frames=PER_CLIP, audio_sync=False, cfg_batched=batched, max_area=HEIGHT * WIDTH)) for batched in
        (False, True)}


def test_audio_embedding(pipeline, engines, inputs, parity) -> None:
    """wav2vec2 hidden states -> 30 Hz -> per video frame at 16 fps (WanS2V.encode_audio) against ours."""
    theirs, clips = pipeline.encode_audio(inputs["speech_path"], infer_frames=PER_CLIP)
    engine = engines[False]
    hidden = torch.from_numpy(engine.audio_encoder.encode([inputs["waveform"]])[0])
    their_hidden = pipeline.audio_encoder.extract_audio_feat(inputs["speech_path"], return_all_layers=True)
    ours30 = resample_to_video_rate(hidden)
    parity.check("S2V audio: wav2vec2 hidden states at 30 Hz", ours30.transpose(1, 2), their_hidden,
                 case=f"{SECONDS:g} s speech, 25 layers")
    ours = torch.cat([audio_window(ours30, clip * PER_CLIP, PER_CLIP, S2V_14B.sample_fps) for clip in range(clips)],
                     dim=-1)
    parity.check("S2V audio: per-frame embedding at 16 fps", ours, theirs,
                 case=f"{clips} clip windows of {PER_CLIP} frames")
    assert theirs[..., : int(SECONDS * 16)].abs().amax(dim=(0, 1, 2)).min() > 0  # speech, then the zero padding


def official_video(pipeline, inputs, guidance: float) -> torch.Tensor:
    with torch.no_grad():
        video = pipeline.generate(PROMPT, inputs["photo_path"], inputs["speech_path"], enable_tts=False,
                                  tts_prompt_audio=None, tts_prompt_text=None, tts_text=None, num_repeat=None,
                                  max_area=HEIGHT * WIDTH, infer_frames=PER_CLIP, shift=SHIFT, sample_solver="unipc",
                                  sampling_steps=STEPS, guide_scale=guidance, seed=SEED, offload_model=False)
    return video  # [3, frames, H, W] in [-1, 1]


def our_video(engine: WanS2VEngine, inputs, guidance: float, frames: int) -> tuple[torch.Tensor, np.ndarray, list]:
    """Our streamed frames (uint8, as served), the float pixels they were made of, and each clip's latents."""
    pixels: list[torch.Tensor] = []
    latents: list[torch.Tensor] = []
    decoded, denoise = engine._decoded, engine._denoise

    def decoded_spy(*args, **kwargs):
        for piece in decoded(*args, **kwargs):
            pixels.append(piece.clone())
            yield piece

    def denoise_spy(*args, **kwargs):
        latents.append(denoise(*args, **kwargs))
        return latents[-1]

    engine._decoded, engine._denoise = decoded_spy, denoise_spy
    try:
        job = GenerationJob(photo=inputs["photo"], waveform=inputs["waveform"], params=GenerationParams(
            engine="s2v-14B", seed=SEED, steps=STEPS, guidance=guidance, fps=S2V_14B.sample_fps,
            max_duration_s=frames / S2V_14B.sample_fps, prompt=PROMPT))
        served = np.concatenate([chunk.frames for chunk in engine.generate(job)])
    finally:
        del engine._decoded, engine._denoise
    return torch.cat(pixels, dim=2)[0], served, latents


@pytest.fixture(scope="module", params=[4.5, 1.0], ids=["cfg-4.5", "no-cfg"])
def official_run(request, pipeline, inputs) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """The official video and, per clip, the latents it decoded (spied on the official VAE's decode)."""
    guidance = request.param
    decoded: list[torch.Tensor] = []
    decode = pipeline.vae.decode

    def decode_spy(latents):
        decoded.append(latents.clone())
        return decode(latents)

    pipeline.vae.decode = decode_spy
    try:
        video = official_video(pipeline, inputs, guidance)
    finally:
        del pipeline.vae.decode
    return guidance, video, [z[:, :, -PER_CLIP // 4 :] for z in decoded]


def test_whole_job(official_run, engines, inputs, parity) -> None:
    guidance, video, their_latents = official_run
    for batched in (False, True) if guidance > 1 else (False,):  # without guidance there is nothing to batch
        compare_job(guidance, video, their_latents, engines[batched], inputs, parity, batched)


def compare_job(guidance, video, their_latents, engine, inputs, parity, batched: bool) -> None:
    frames = video.shape[1]
    assert len(their_latents) >= 3 and frames == (PER_CLIP - 3) + (len(their_latents) - 1) * PER_CLIP
    pixels, served, latents = our_video(engine, inputs, guidance, frames)
    case = f"guidance {guidance:g}, {len(latents)} clips, {STEPS} steps" + (", CFG batched" if batched else "")
    why = ("float32; the two guidance branches in one batch of two (our default) instead of two calls"
           if batched else "float32 on CPU; the same math in another order of operations")
    assert len(latents) == len(their_latents)
    for clip, (ours, theirs) in enumerate(zip(latents, their_latents)):
        parity.check("S2V job: denoised latents per clip", ours, theirs, why=why, case=f"{case}: clip {clip}")
    parity.check("S2V job: decoded frames (float)", pixels, video, tolerance=PIXEL_TOLERANCE, why=PIXEL_WHY,
                 case=case)
    official_uint8 = ((video.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(1, 2, 3, 0)  # as save_video
    record = parity.check("S2V job: streamed uint8 frames", served.astype(np.float64),
                          official_uint8.numpy().astype(np.float64), tolerance=1 / 255, why=LEVEL_WHY, case=case)
    assert record["max_abs"] <= 1
    assert np.mean(served != official_uint8.numpy()) < 1e-3


def test_motion_and_reference_matter(official_run) -> None:
    """The clips differ from each other (the hand-over carries motion, not a copy) and none is blank."""
    _, video, _ = official_run
    first, second, third = video[:, 4], video[:, 5], video[:, 13]
    assert (second - first).abs().mean() > 1e-3 and (third - second).abs().mean() > 1e-3
    assert video.std() > 0.05
