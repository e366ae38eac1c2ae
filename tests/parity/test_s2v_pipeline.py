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
from typing import Any

import numpy as np
import pytest
import torch
from audio_files import wav_bytes
from PIL import Image
from wan_fixtures.tiny import TINY_S2V_CONFIG
from wan_fixtures.tiny_release import TINY_RELEASE_T5, TINY_RELEASE_VAE_DIM, make_tiny_s2v_release

from python_backends.audio.decode import decode_audio
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.wan.common.configs import S2V_14B
from python_backends.generation.wan.s2v.engine import (
    FIRST_CLIP_DROPPED_FRAMES,
    WanS2VEngine,
    WanS2VOptions,
    audio_window,
    resample_to_video_rate,
    size_within_area,
)

from .conftest import FLOAT32_WHY, check_job_frames, spying
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


@pytest.mark.parametrize("seconds", [SECONDS, 0.37, 3.3])
def test_audio_embedding(pipeline, engines, inputs, parity, tmp_path, seconds) -> None:
    """wav2vec2 hidden states -> 30 Hz -> per video frame at 16 fps (WanS2V.encode_audio) against ours; the job's
    speech and two lengths that are not whole wav2vec2 or video frames."""
    path, waveform = inputs["speech_path"], inputs["waveform"]
    if seconds != SECONDS:
        noise = 0.2 * np.random.default_rng(1).standard_normal(int(16000 * seconds))
        path = tmp_path / "speech.wav"
        path.write_bytes(wav_bytes(noise))
        waveform = decode_audio(path.read_bytes()).samples
    theirs, clips = pipeline.encode_audio(str(path), infer_frames=PER_CLIP)
    hidden = torch.from_numpy(engines[False].audio_encoder.encode([waveform])[0])
    their_hidden = pipeline.audio_encoder.extract_audio_feat(str(path), return_all_layers=True)
    ours30 = resample_to_video_rate(hidden)
    parity.check("S2V audio: wav2vec2 hidden states at 30 Hz", ours30.transpose(1, 2), their_hidden,
                 case=f"{seconds:g} s speech, 25 layers")
    ours = torch.cat([audio_window(ours30, clip * PER_CLIP, PER_CLIP, S2V_14B.sample_fps) for clip in range(clips)],
                     dim=-1)
    parity.check("S2V audio: per-frame embedding at 16 fps", ours, theirs,
                 case=f"{seconds:g} s: {clips} clip windows of {PER_CLIP} frames")
    assert theirs[..., : int(seconds * 16)].abs().amax(dim=(0, 1, 2)).min() > 0  # speech, then the zero padding
    # audio_sync (our default, a documented departure): every window starts FIRST_CLIP_DROPPED_FRAMES earlier,
    # the frames before the start repeating the first, so that the first clip's dropped frames take their audio.
    shift = FIRST_CLIP_DROPPED_FRAMES
    index = (torch.arange(clips * PER_CLIP) - shift).clamp(min=0)
    synced = torch.cat([audio_window(ours30, clip * PER_CLIP - shift, PER_CLIP, S2V_14B.sample_fps)
                        for clip in range(clips)], dim=-1)
    parity.check("S2V audio: audio_sync windows (our departure) vs the official embedding shifted", synced,
                 theirs[..., index], case=f"{seconds:g} s, shifted by {shift} frames")


def test_text_context(pipeline, engines, parity) -> None:
    """The umT5 context of the prompt and of the official negative prompt, as each pipeline makes it."""
    assert engines[False].task.sample_neg_prompt == pipeline.sample_neg_prompt
    for name, text in (("prompt", PROMPT), ("negative prompt", pipeline.sample_neg_prompt)):
        with torch.no_grad():
            theirs = pipeline.text_encoder([text], torch.device("cpu"))[0]
        parity.check("S2V job: umT5 text context", engines[False]._text(text), theirs, case=name)


def test_output_size_rule(pipeline, parity) -> None:
    """The video size for a photo within a pixel budget (WanS2V.get_size_less_than_area) against ours."""
    sides = (64, 100, 333, 480, 720, 832, 1080, 1280, 1920, 4000)
    cases = [(h, w, area) for h in sides for w in sides for area in (480 * 832, 720 * 1280, 1024 * 704)]
    ours = [size_within_area(h, w, area) for h, w, area in cases]
    theirs = [pipeline.get_size_less_than_area(h, w, target_area=area) for h, w, area in cases]
    parity.check("S2V output size within an area", np.array(ours), np.array(theirs), tolerance=0.0,
                 why="integers", case=f"{len(cases)} photo sizes x pixel budgets")


def our_run(engine: WanS2VEngine, inputs, guidance: float, frames: int) -> dict[str, Any]:
    """Our streamed frames (uint8, as served), the float pixels they were decoded as, per clip the latents made and
    the reference / motion latents given to the DiT."""
    decoded, denoised = [], []
    job = GenerationJob(photo=inputs["photo"], waveform=inputs["waveform"], params=GenerationParams(
        engine="s2v-14B", seed=SEED, steps=STEPS, guidance=guidance, fps=S2V_14B.sample_fps,
        max_duration_s=frames / S2V_14B.sample_fps, prompt=PROMPT))
    with spying(engine, "_decoded", decoded), spying(engine, "_denoise", denoised):
        served = np.concatenate([chunk.frames for chunk in engine.generate(job)])
    # _denoise(seed, shape, steps, guidance, context, context_null, ref, motion, audio, drop_motion)
    return {"served": served, "pixels": torch.cat([piece for _, piece in decoded], dim=2)[0],
            "latents": [out for _, out in denoised], "ref": denoised[0][0][6],
            "motion": [args[7] for args, _ in denoised[1:]]}


@pytest.fixture(scope="module", params=[4.5, 1.0], ids=["cfg-4.5", "no-cfg"])
def official_run(request, pipeline, inputs) -> dict[str, Any]:
    """The official video and what its VAE encoded and decoded: the reference latents, per clip the motion latents
    handed over and the latents decoded."""
    guidance = request.param
    encoded, decoded = [], []
    with spying(pipeline.vae, "encode", encoded), spying(pipeline.vae, "decode", decoded), torch.no_grad():
        video = pipeline.generate(PROMPT, inputs["photo_path"], inputs["speech_path"], enable_tts=False,
                                  tts_prompt_audio=None, tts_prompt_text=None, tts_text=None, num_repeat=None,
                                  max_area=HEIGHT * WIDTH, infer_frames=PER_CLIP, shift=SHIFT, sample_solver="unipc",
                                  sampling_steps=STEPS, guide_scale=guidance, seed=SEED, offload_model=False)
    # encode calls: the photo, the zero motion frames, the (zero) pose condition, then the motion frames after
    # every clip; decode calls: [reference or motion latents, the clip's latents] per clip.
    latents = [torch.stack(out) for _, out in encoded]
    return {"guidance": guidance, "video": video, "ref": latents[0], "motion": latents[3:-1],
            "latents": [args[0][:, :, -PER_CLIP // 4 :] for args, _ in decoded], "decoded": decoded}


def test_whole_job(official_run, engines, inputs, parity) -> None:
    guidance = official_run["guidance"]
    # The pixel tolerance rests on our VAE decoding the official latents as the official does (the last clip's:
    # motion latents, then its own):
    (latents,), frames = official_run["decoded"][-1]
    with torch.no_grad():
        ours = engines[False].vae.decode(latents)
    parity.check("S2V job: our VAE decoding the official latents", ours[0], frames[0],
                 case=f"guidance {guidance:g}: last clip")
    for batched in (False, True) if guidance > 1 else (False,):  # without guidance there is nothing to batch
        compare_job(official_run, engines[batched], inputs, parity, batched)


def compare_job(theirs: dict[str, Any], engine: WanS2VEngine, inputs, parity, batched: bool) -> None:
    video, guidance = theirs["video"], theirs["guidance"]
    clips = len(theirs["latents"])
    assert clips >= 3 and video.shape[1] == (PER_CLIP - 3) + (clips - 1) * PER_CLIP
    ours = our_run(engine, inputs, guidance, video.shape[1])
    case = f"guidance {guidance:g}, {clips} clips, {STEPS} steps" + (", CFG batched" if batched else "")
    why = ("float32; the two guidance branches in one batch of two (our default) instead of two calls"
           if batched else FLOAT32_WHY)
    parity.check("S2V job: reference latents", ours["ref"], theirs["ref"], case=case)
    assert len(ours["latents"]) == clips and len(ours["motion"]) == len(theirs["motion"]) == clips - 1
    for clip in range(clips):
        if clip:
            parity.check("S2V job: motion latents handed to the next clip", ours["motion"][clip - 1],
                         theirs["motion"][clip - 1], why=why, case=f"{case}: clip {clip}")
        parity.check("S2V job: denoised latents per clip", ours["latents"][clip], theirs["latents"][clip], why=why,
                     case=f"{case}: clip {clip}")
    check_job_frames(parity, "S2V job", ours["pixels"], ours["served"], video, case, PIXEL_TOLERANCE, PIXEL_WHY)


def test_motion_and_reference_matter(official_run) -> None:
    """The clips differ from each other (the hand-over carries motion, not a copy) and none is blank."""
    video = official_run["video"]
    first, second, third = video[:, 4], video[:, 5], video[:, 13]
    assert (second - first).abs().mean() > 1e-3 and (third - second).abs().mean() > 1e-3
    assert video.std() > 0.05
