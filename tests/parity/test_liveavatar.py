"""LiveAvatar's pieces that run on installed code, against that code: its sampler (diffusers) and its LoRA loading
(peft on the official WanModel_S2V).

* Sampler: causal_s2v_pipeline.py builds diffusers' FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
  shift=3), calls set_timesteps(sample_steps) and steps it once per denoising step of each block. diffusers (the
  parity extra pins the version) is the oracle of our "euler-diffusers" sampler: timesteps, sigmas, every update.
* LoRA: `WanS2V.add_lora_to_model` wraps the DiT with peft's get_peft_model(LoraConfig(r=128, lora_alpha=64,
  init_lora_weights=True, target_modules=["q", "k", "v", "o", "ffn.0", "ffn.2"])), loads the file with torch's
  load_state_dict(strict=False) after prefixing "base_model.model." to keys that lack it, and merge_and_unload()s.
  Done here exactly so on the official WanModel_S2V (the wan22 oracle) with a tiny file in the release's layout,
  the merged official forward is compared with our DiT after lora.merge_lora_; the peft load must also take every
  key of the file and leave no LoRA parameter unloaded (the release would silently skip such keys).

Not compared (no installable oracle): LiveAvatar's causal forward (see tests/unit/test_wan_causal_s2v.py for its
anchor) and LightX2V's step-distill schedule (LightX2V is not on PyPI).
"""

from __future__ import annotations

import pytest
import torch
from wan_fixtures.tiny_release import make_tiny_liveavatar_lora, make_tiny_s2v_release

from python_backends.generation.wan.common.checkpoint import load_s2v_transformer
from python_backends.generation.wan.common.lora import merge_lora_, peft_targets, read_lora_file
from python_backends.generation.wan.common.scheduler import make_sampler
from python_backends.generation.wan.s2v.liveavatar_engine import LORA_ALPHA, LORA_RANK, LORA_TARGETS
from python_backends.generation.wan.s2v.model import DEFAULT_MOTION_FRAMES


def toy_flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = t.double() / 1000.0
    return (torch.tanh(1.5 * x) * (1.0 + s) - 0.4 * x * s + 0.2).to(x.dtype)


@pytest.mark.parametrize("steps,shift", [(4, 3.0), (2, 3.0), (8, 5.0)])
def test_euler_diffusers_is_flow_match_euler_discrete(parity, steps: int, shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    theirs = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    theirs.set_timesteps(steps, device="cpu")
    ours = make_sampler("euler-diffusers", steps, shift)
    case = f"{steps} steps, shift {shift:g}"
    parity.check("LiveAvatar Euler schedule: sigmas", ours.sigmas, theirs.sigmas, tolerance=0.0,
                 why="the same float32 values", case=case)
    parity.check("LiveAvatar Euler schedule: timesteps", ours.timesteps.astype("float32"), theirs.timesteps,
                 tolerance=0.0, why="the same float32 values", case=case)
    x = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(steps))
    x_ours, x_theirs = x.clone(), x.clone()
    for i, t in enumerate(theirs.timesteps):
        assert ours.timestep().item() == t.item()
        x_ours = ours.step(toy_flow(x_ours, ours.timestep()), x_ours)
        x_theirs = theirs.step(toy_flow(x_theirs, t), t, x_theirs, return_dict=False)[0]
        parity.check("LiveAvatar Euler updates", x_ours, x_theirs, case=f"{case}, step {i + 1}")


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return make_tiny_liveavatar_lora(tmp_path_factory.mktemp("LiveAvatar"), seed=2, scale=0.05)


@torch.no_grad()
def test_liveavatar_lora_merges_as_peft_does_on_the_official_model(official, tiny_release, parity, lora_file) -> None:
    from peft import LoraConfig, get_peft_model
    from wan.modules.s2v.model_s2v import WanModel_S2V

    folder = tiny_release(make_tiny_s2v_release)
    theirs = WanModel_S2V.from_pretrained(str(folder), torch_dtype=torch.float32).eval().requires_grad_(False)
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, init_lora_weights=True, target_modules=list(LORA_TARGETS))
    wrapped = get_peft_model(theirs, config)
    state = {k if k.startswith("base_model.model.") else f"base_model.model.{k}": v.float()
             for k, v in read_lora_file(lora_file).items()}
    missing, unexpected = wrapped.load_state_dict(state, strict=False)
    assert not unexpected, f"keys peft does not know: {unexpected[:5]}"
    assert not [k for k in missing if "lora_" in k], "LoRA parameters the file does not fill"
    theirs = wrapped.merge_and_unload()

    ours = load_s2v_transformer(folder, "cpu", torch.float32)
    plain = load_s2v_transformer(folder, "cpu", torch.float32)
    merge_lora_(ours, lora_file, alpha=LORA_ALPHA, targets=peft_targets(ours, LORA_TARGETS))

    cfg = ours.config
    g = torch.Generator().manual_seed(21)
    latents = torch.randn(1, cfg.in_dim, 3, 8, 8, generator=g)
    ref = torch.randn(1, cfg.in_dim, 1, 8, 8, generator=g)
    motion = torch.randn(1, 16, DEFAULT_MOTION_FRAMES[1], 8, 8, generator=g)
    audio = torch.randn(1, cfg.audio_layers, cfg.audio_dim, 12, generator=g)
    cond = torch.randn(1, cfg.cond_dim, 3, 8, 8, generator=g)
    context = torch.randn(6, cfg.text_dim, generator=g)
    for t in (1000.0, 602.15):
        expected = theirs([latents[0]], t=torch.tensor([t]), context=[context], seq_len=None, ref_latents=ref,
                          motion_latents=motion, cond_states=cond, audio_input=audio,
                          motion_frames=list(DEFAULT_MOTION_FRAMES), add_last_motion=2, drop_motion_frames=False)[0]
        got = ours(latents, torch.tensor([t]), [context], ref, motion, audio, cond)[0]
        parity.check("LiveAvatar LoRA merged DiT forward (peft merge_and_unload)", got, expected,
                     case=f"t={t:g}")
        base = plain(latents, torch.tensor([t]), [context], ref, motion, audio, cond)[0]
        assert (base - expected).abs().max() > 100 * (got - expected).abs().max()  # the LoRA moved the output
