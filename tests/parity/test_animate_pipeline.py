"""The whole Wan2.2-Animate job: the official `WanAnimate.generate` against our `WanAnimateEngine`, one tiny release.

Both sides load every model of the same tiny random release folder (DiT, Wan2.1 VAE, umT5 + tokenizer, CLIP) and
get the same reference photo (a PNG for the official, read by its cv2.imread; its pixels for ours), the same driving
pose frames and face crops (the official src_pose.mp4 / src_face.mp4, handed to its `VideoReader` from memory:
decord is not installable here), the same prompt, seed, steps, guidance, shift and clip length. The official
pipeline runs as released, built on the CPU in float32 (tests/parity/official.py `build_on_cpu(float32=True)`:
WanAnimate casts its inputs to bf16 and builds CLIP in fp16 whatever the config says).

The driving video is 22 frames in three clips that overlap by `refert_num` (two temporal-guidance hand-overs):
clips of 9 frames with refert_num 1, of 13 with refert_num 5 (the official pipeline takes the 5 guide frames from
the previous clip after cutting its first 5, so it needs clips of at least 10 frames). The photo is not at the output
size, so both letterbox it (official padding_resize). Our engine streams; its deliberate departures do not change
the numbers here: the pose and face videos are at the output size and 30 fps, and the face tokens, computed once
per clip instead of once per step, are the same tokens. The initial noise needs no switch on the CPU: both draw
float32 normal noise for clip after clip from one CPU generator seeded with the job's seed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from wan_fixtures.tiny_release import (
    TINY_RELEASE_ANIMATE_CONFIG,
    TINY_RELEASE_T5,
    TINY_RELEASE_VAE_DIM,
    make_tiny_animate_release,
)

from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.wan.animate.engine import AnimateConditioning, WanAnimateEngine, WanAnimateOptions

from .animate_oracle import official_tiny_animate
from .conftest import FLOAT32_WHY, check_job_frames, spying
from .official import build_on_cpu, float32_on_cpu, in_memory_videos

HEIGHT, WIDTH = 32, 48
FRAMES, FPS = 22, 30
STEPS, SEED, SHIFT = 3, 7, 5.0
PROMPT = "a person is talking to the camera"
FACE = TINY_RELEASE_ANIMATE_CONFIG.face_size
# (guidance, refert_num, clip_len): the official default (no CFG) with both temporal-guidance lengths it allows,
# and CFG.
RUNS = {"no CFG, refert 1": (1.0, 1, 9), "CFG 2.5, refert 1": (2.5, 1, 9), "no CFG, refert 5": (1.0, 5, 13)}
# The pixels are clamped to [-1, 1]; the latents they decode from reach ~7 and are scaled by the VAE's per-channel
# std (up to 3.3) before decoding: a latent difference of 3e-6 relative reads ~5e-5 relative to the pixel range.
PIXEL_TOLERANCE = 1e-4
PIXEL_WHY = "float32; latents within 3e-6 rel. read ~20x larger against the clamped [-1, 1] pixel range"


@pytest.fixture(scope="module")
def release(tiny_release) -> Path:
    return tiny_release(make_tiny_animate_release)


@pytest.fixture(scope="module")
def pipeline(official, release):
    from wan.animate import WanAnimate
    from wan.configs import WAN_CONFIGS

    config = copy.deepcopy(WAN_CONFIGS["animate-14B"])
    # float32 on the CPU (the release runs bf16 on GPUs); the tiny DiT's text length.
    config.param_dtype = config.t5_dtype = torch.float32
    config.text_len = TINY_RELEASE_ANIMATE_CONFIG.text_len
    with official_tiny_animate():
        return build_on_cpu(WanAnimate, config, release, vae_dim=TINY_RELEASE_VAE_DIM, t5=TINY_RELEASE_T5,
                            float32=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Any]:
    """A 40x30 photo (portrait: letterboxed into the 48x32 landscape output), 20 pose frames, 20 face crops."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:30]
    photo = np.stack([(x * 8) % 256, (y * 6) % 256, ((x + y) * 5) % 256], axis=-1)
    photo = np.clip(photo + rng.integers(-20, 20, photo.shape), 0, 255).astype(np.uint8)
    t, y, x = np.mgrid[0:FRAMES, 0:HEIGHT, 0:WIDTH]
    poses = np.stack([(x * 5 + t * 9) % 256, (y * 7 - t * 4) % 256, (x * y + t) % 256], axis=-1).astype(np.uint8)
    faces = rng.integers(0, 256, (FRAMES, FACE, FACE, 3), dtype=np.uint8)
    folder = tmp_path_factory.mktemp("animate-job")
    cv2.imwrite(str(folder / "src_ref.png"), photo[..., ::-1])  # BGR on disk, as cv2 writes and reads
    return {"photo": photo, "poses": poses, "faces": faces, "folder": folder}


def _copy(value: Any) -> Any:
    """Tensors cloned, lists of tensors (and the official TensorList, which keeps the list it wraps) copied."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    items = getattr(value, "tensors", value)
    return [_copy(item) for item in items] if isinstance(items, (list, tuple)) else value


def inputs_recorder(calls: list) -> Any:
    """A forward pre-hook recording every DiT call's positional and keyword inputs as they are at the call."""
    def record(_module, args, kwargs):
        calls.append(([_copy(a) for a in args], {key: _copy(value) for key, value in kwargs.items()}))
    return record


@pytest.fixture(scope="module", params=list(RUNS), ids=list(RUNS))
def official_run(request, pipeline, inputs) -> dict[str, Any]:
    """The official video and, per DiT call, what the DiT got; per clip, the latents the VAE decoded."""
    guidance, refert, clip_len = RUNS[request.param]
    folder = inputs["folder"]
    videos = {str(folder / "src_pose.mp4"): inputs["poses"], str(folder / "src_face.mp4"): inputs["faces"]}
    calls, decoded = [], []
    hook = pipeline.noise_model.register_forward_pre_hook(inputs_recorder(calls), with_kwargs=True)
    try:
        with (float32_on_cpu(type(pipeline)), in_memory_videos(type(pipeline), videos),
              spying(pipeline.vae, "decode", decoded), torch.no_grad()):
            video = pipeline.generate(str(folder), replace_flag=False, clip_len=clip_len, refert_num=refert,
                                      shift=SHIFT, sample_solver="unipc", sampling_steps=STEPS, guide_scale=guidance,
                                      input_prompt=PROMPT, n_prompt="", seed=SEED, offload_model=False)
    finally:
        hook.remove()
    per_step = 2 if guidance > 1 else 1
    return {"name": request.param, "guidance": guidance, "engine": (refert, clip_len), "video": video,
            "cond": [kwargs | {"x": args[0][0]} for args, kwargs in calls[::per_step]],
            "uncond": [kwargs for _, kwargs in calls[1::per_step]] if per_step == 2 else [],
            "latents": [args[0][0] for args, _ in decoded]}


@pytest.fixture(scope="module")
def engines(release) -> dict[tuple[int, int, bool], WanAnimateEngine]:
    """Ours per (refert_num, clip_len, CFG batched): guidance branches batched (our default) or not."""
    return {(refert, clip_len, batched): WanAnimateEngine.from_folder(
        release, "cpu", torch.float32, landmarker=lambda frame: None,
        options=WanAnimateOptions(clip_len=clip_len, refert_num=refert, cfg_batched=batched))
        for _, refert, clip_len in RUNS.values() for batched in (True, False)}


def our_run(engine: WanAnimateEngine, inputs, guidance: float) -> dict[str, Any]:
    """Our streamed frames (uint8, as served), the float pixels decoded per clip, and per clip what the denoising
    loop got and made; per DiT call, its inputs."""
    denoised, decoded, clip_tokens, calls = [], [], [], []
    job = GenerationJob(photo=inputs["photo"], params=GenerationParams(
        engine="animate-14B", seed=SEED, steps=STEPS, guidance=guidance, fps=FPS, max_duration_s=FRAMES / FPS,
        prompt=PROMPT))
    cond = AnimateConditioning(inputs["poses"], inputs["faces"], FPS)
    hook = engine.transformer.register_forward_pre_hook(inputs_recorder(calls), with_kwargs=True)
    try:
        with (spying(engine, "_denoise", denoised), spying(engine.vae, "decode_chunks", decoded),
              spying(engine.clip, "encode_images", clip_tokens)):
            served = np.concatenate([chunk.frames for chunk in engine.generate_from(job, cond)])
    finally:
        hook.remove()
    # The pieces of each decode_chunks call, one call per clip (the last clip stops at the frames the job needs).
    pieces: list[list[torch.Tensor]] = []
    for index, (args, piece) in enumerate(decoded):
        if not index or args is not decoded[index - 1][0]:
            pieces.append([])
        pieces[-1].append(piece)
    clips = [torch.cat(clip, dim=2)[0] for clip in pieces]
    refert = engine.options.refert_num
    pixels = torch.cat([clips[0]] + [clip[:, refert:] for clip in clips[1:]], dim=1)[:, :FRAMES]
    # _denoise(latents, steps, guidance, context, context_null, y, pose_latents, face_pixels, image_context)
    return {"served": served, "pixels": pixels, "clip_tokens": clip_tokens[0][1], "calls": calls,
            "noise": [args[0] for args, _ in denoised], "context": denoised[0][0][3],
            "context_null": denoised[0][0][4], "y": [args[5] for args, _ in denoised],
            "pose": [args[6] for args, _ in denoised], "faces": [args[7] for args, _ in denoised],
            "latents": [out for _, out in denoised]}


def test_whole_job(official_run, engines, inputs, parity) -> None:
    guidance = official_run["guidance"]
    for batched in (True, False) if guidance > 1 else (True,):  # without guidance there is nothing to batch
        compare_job(official_run, engines[(*official_run["engine"], batched)], inputs, parity, batched)


def compare_job(theirs: dict[str, Any], engine: WanAnimateEngine, inputs, parity, batched: bool) -> None:
    guidance, video = theirs["guidance"], theirs["video"]
    ours = our_run(engine, inputs, guidance)
    clips = len(theirs["latents"])
    assert len(ours["latents"]) == clips >= 3 and video.shape[1] == FRAMES
    case = f"{theirs['name']}, {clips} clips, {STEPS} steps" + (", CFG batched" if guidance > 1 and batched else "")
    why = ("float32; the two guidance branches in one batch of two (our default) instead of two calls"
           if guidance > 1 and batched else FLOAT32_WHY)
    first = theirs["cond"][0]
    parity.check("Animate job: umT5 context of the prompt", ours["context"], first["context"][0], case=case)
    if guidance > 1:
        parity.check("Animate job: umT5 context of the negative prompt", ours["context_null"],
                     theirs["uncond"][0]["context"][0], case=case)
        parity.check("Animate job: unconditional face crops (all -1)", torch.full_like(ours["faces"][0], -1.0),
                     theirs["uncond"][0]["face_pixel_values"], tolerance=0.0, why="constants", case=case)
    parity.check("Animate job: CLIP tokens of the letterboxed photo", ours["clip_tokens"], first["clip_fea"],
                 case=case)
    for clip in range(clips):
        step0 = theirs["cond"][clip * STEPS]
        at = f"{case}: clip {clip}"
        parity.check("Animate job: initial noise per clip", ours["noise"][clip][0], step0["x"], tolerance=0.0,
                     why="the same generator draws", case=at)
        parity.check("Animate job: driving face crops per clip", ours["faces"][clip], step0["face_pixel_values"],
                     tolerance=1e-7, why="x / 127.5 - 1 in float32 (ours) or float64 then float32", case=at)
        parity.check("Animate job: pose latents per clip", ours["pose"][clip], step0["pose_latents"], case=at)
        parity.check("Animate job: y (masks, reference and temporal-guidance latents) per clip", ours["y"][clip][0],
                     step0["y"][0], why=why, case=at)
        for step in range(STEPS):
            call = ours["calls"][(clip * STEPS + step) * (1 if batched or guidance <= 1 else 2)]
            their_call = theirs["cond"][clip * STEPS + step]
            parity.check("Animate job: timesteps", call[0][1].reshape(-1)[:1], their_call["t"], tolerance=0.0,
                         why="the same float32 schedule", case=f"{at}, step {step}")
            parity.check("Animate job: latents entering each step", call[0][0][0], their_call["x"], why=why,
                         case=f"{at}, step {step}")
        parity.check("Animate job: denoised latents per clip", ours["latents"][clip][0, :, 1:],
                     theirs["latents"][clip], why=why, case=at)
    check_job_frames(parity, "Animate job", ours["pixels"], ours["served"], video, case, PIXEL_TOLERANCE, PIXEL_WHY)


def test_clips_and_guidance_matter(official_run) -> None:
    """The clips are not copies of each other and the video is not blank; the guide frames hand over."""
    video = official_run["video"]
    assert video.std() > 0.05
    assert (video[:, 9] - video[:, 8]).abs().mean() > 1e-3
    ys = [call["y"][0] for call in official_run["cond"][::STEPS]]
    assert ys[0][0, 1:].abs().max() == 0 and ys[1][0, 1:].abs().max() == 1  # temporal-guidance mask from clip 2 on
