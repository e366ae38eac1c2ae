"""WanModel_S2V (official) against our WanS2VTransformer: the same tiny release files, the same inputs.

Both load the DiT of one tiny random Wan2.2-S2V release folder (diffusers from_pretrained on the official side, our
strict loader on ours) and run in float32 on CPU. Compared: the whole forward (video + reference + motion latents +
audio features, with and without the motion frames, at several timesteps, every add_last_motion), the CFG pair we
batch into one forward against the official two forwards, and the parts on their own: the causal audio encoder,
the audio injection after a block, and the FramePack motioner (tokens and rotary positions).
"""

from __future__ import annotations

import pytest
import torch
from wan_fixtures.tiny_release import make_tiny_s2v_release

from python_backends.generation.wan.common.checkpoint import load_s2v_transformer
from python_backends.generation.wan.common.transformer import rope_cos_sin
from python_backends.generation.wan.s2v.model import DEFAULT_MOTION_FRAMES, cfg_forward

LATENT_FRAMES, LAT_H, LAT_W = 3, 8, 16  # 4x FramePack patches need latent sides that are multiples of 8
TEXT_TOKENS = 7
TIMESTEPS = (999.0, 500.0, 3.0)


@pytest.fixture(scope="module")
def models(official, tiny_release):
    from wan.modules.s2v.model_s2v import WanModel_S2V

    folder = tiny_release(make_tiny_s2v_release)
    theirs = WanModel_S2V.from_pretrained(str(folder), torch_dtype=torch.float32).eval().requires_grad_(False)
    ours = load_s2v_transformer(folder, "cpu", torch.float32)
    return theirs, ours


@pytest.fixture(scope="module")
def inputs(models):
    _, ours = models
    cfg = ours.config
    g = torch.Generator().manual_seed(16)
    return {
        "latents": torch.randn(1, cfg.in_dim, LATENT_FRAMES, LAT_H, LAT_W, generator=g),
        "ref": torch.randn(1, cfg.in_dim, 1, LAT_H, LAT_W, generator=g),
        "motion": torch.randn(1, 16, DEFAULT_MOTION_FRAMES[1], LAT_H, LAT_W, generator=g),
        "cond": torch.randn(1, cfg.cond_dim, LATENT_FRAMES, LAT_H, LAT_W, generator=g),
        "audio": torch.randn(1, cfg.audio_layers, cfg.audio_dim, 4 * LATENT_FRAMES, generator=g),
        "context": torch.randn(TEXT_TOKENS, cfg.text_dim, generator=g),
        "context_null": torch.randn(TEXT_TOKENS + 3, cfg.text_dim, generator=g),
    }


def official_forward(theirs, x, t, context, add_last_motion=2, drop_motion=False, audio=None, cond=None):
    """One official call as WanS2V.generate makes it (lists of per-sample tensors, batch of one)."""
    return theirs([x["latents"][0]], t=torch.tensor([t]), context=[context], seq_len=None,
                  ref_latents=x["ref"], motion_latents=x["motion"],
                  cond_states=x["cond"] if cond is None else cond,
                  audio_input=x["audio"] if audio is None else audio, motion_frames=list(DEFAULT_MOTION_FRAMES),
                  add_last_motion=add_last_motion, drop_motion_frames=drop_motion)[0]


@torch.no_grad()
@pytest.mark.parametrize("drop_motion", [False, True], ids=["motion", "no-motion"])
@pytest.mark.parametrize("t", TIMESTEPS)
def test_forward(models, inputs, parity, t, drop_motion):
    theirs, ours = models
    x = inputs
    expected = official_forward(theirs, x, t, x["context"], drop_motion=drop_motion)
    got = ours(x["latents"], torch.tensor([t]), [x["context"]], x["ref"], x["motion"], x["audio"], x["cond"],
               motion_frames=DEFAULT_MOTION_FRAMES, drop_motion_frames=drop_motion)[0]
    parity.check("S2V DiT forward", got, expected, case=f"t={t:g}, {'no ' if drop_motion else ''}motion frames")


@torch.no_grad()
def test_forward_is_sensitive_to_every_input(models, inputs):
    """The comparison above would not notice a dropped input unless each one moves the output."""
    theirs, _ = models
    x = inputs
    base = official_forward(theirs, x, 500.0, x["context"])
    changed = {
        "motion": official_forward(theirs, {**x, "motion": x["motion"] * 0.5}, 500.0, x["context"]),
        "audio": official_forward(theirs, x, 500.0, x["context"], audio=x["audio"].roll(1, dims=-1)),
        "ref": official_forward(theirs, {**x, "ref": x["ref"].flip(-1)}, 500.0, x["context"]),
        "text": official_forward(theirs, x, 500.0, x["context_null"]),
        "cond": official_forward(theirs, x, 500.0, x["context"], cond=x["cond"] * 0),
    }
    for name, out in changed.items():
        assert (out - base).abs().max() > 1e-3 * base.abs().max(), f"{name} does not change the official output"


@torch.no_grad()
@pytest.mark.parametrize("add_last_motion", [0, 1])
def test_forward_with_fewer_motion_latents(models, inputs, parity, add_last_motion):
    theirs, ours = models
    x = inputs
    expected = official_forward(theirs, x, 500.0, x["context"], add_last_motion=add_last_motion)
    got = ours(x["latents"], torch.tensor([500.0]), [x["context"]], x["ref"], x["motion"], x["audio"], x["cond"],
               motion_frames=DEFAULT_MOTION_FRAMES, add_last_motion=add_last_motion)[0]
    parity.check("S2V DiT forward", got, expected, case=f"t=500, add_last_motion={add_last_motion}")


@torch.no_grad()
def test_forward_at_latent_sides_not_multiples_of_8(models, parity):
    """720x1280 video is 90x160 latents: the 2x / 4x FramePack patches then leave rows and columns out."""
    theirs, ours = models
    g = torch.Generator().manual_seed(8)
    size = (10, 12)
    x = {"latents": torch.randn(1, 16, 2, *size, generator=g), "ref": torch.randn(1, 16, 1, *size, generator=g),
         "motion": torch.randn(1, 16, 19, *size, generator=g), "cond": torch.randn(1, 16, 2, *size, generator=g),
         "audio": torch.randn(1, 25, ours.config.audio_dim, 8, generator=g)}
    context = torch.randn(TEXT_TOKENS, ours.config.text_dim, generator=g)
    expected = official_forward(theirs, x, 500.0, context)
    got = ours(x["latents"], torch.tensor([500.0]), [context], x["ref"], x["motion"], x["audio"], x["cond"],
               motion_frames=DEFAULT_MOTION_FRAMES)[0]
    parity.check("S2V DiT forward", got, expected, case=f"t=500, latents {size[0]}x{size[1]}")


@torch.no_grad()
def test_zero_pose_condition(models, inputs, parity):
    """The pipeline passes all-zero pose latents (COND[0] * 0); ours takes None for them."""
    theirs, ours = models
    x = inputs
    expected = official_forward(theirs, x, 500.0, x["context"], cond=torch.zeros_like(x["cond"]))
    got = ours(x["latents"], torch.tensor([500.0]), [x["context"]], x["ref"], x["motion"], x["audio"], None,
               motion_frames=DEFAULT_MOTION_FRAMES)[0]
    parity.check("S2V DiT forward", got, expected, case="t=500, zero pose latents as None")


@torch.no_grad()
@pytest.mark.parametrize("drop_motion", [False, True], ids=["motion", "no-motion"])
def test_batched_cfg_pair_equals_two_official_forwards(models, inputs, parity, drop_motion):
    """Our one batched forward of both guidance branches against the official conditional and unconditional calls
    (negative prompt, all-zero audio)."""
    theirs, ours = models
    x = inputs
    cond = official_forward(theirs, x, 500.0, x["context"], drop_motion=drop_motion, cond=x["cond"] * 0)
    uncond = official_forward(theirs, x, 500.0, x["context_null"], drop_motion=drop_motion,
                              audio=0.0 * x["audio"], cond=x["cond"] * 0)
    got_cond, got_uncond = cfg_forward(ours, latents=x["latents"], timestep=torch.tensor([500.0]),
                                       context=[x["context"]], context_null=[x["context_null"]],
                                       ref_latents=x["ref"], motion_latents=x["motion"], audio=x["audio"],
                                       motion_frames=DEFAULT_MOTION_FRAMES, drop_motion_frames=drop_motion)
    case = f"t=500, {'no ' if drop_motion else ''}motion frames"
    parity.check("S2V DiT CFG pair, batched", got_cond[0], cond, case=f"{case}, conditional")
    parity.check("S2V DiT CFG pair, batched", got_uncond[0], uncond, case=f"{case}, unconditional")


@torch.no_grad()
def test_causal_audio_encoder(models, inputs, parity):
    theirs, ours = models
    audio = inputs["audio"]
    padded = torch.cat([audio[..., :1].expand(-1, -1, -1, DEFAULT_MOTION_FRAMES[0]), audio], dim=-1)
    their_global, their_local = theirs.casual_audio_encoder(padded)
    our_local, our_global = ours.casual_audio_encoder(padded)
    parity.check("S2V audio encoder (layer weighting + causal convs)", our_local, their_local, case="local tokens")
    parity.check("S2V audio encoder (layer weighting + causal convs)", our_global, their_global, case="global")


@torch.no_grad()
@pytest.mark.parametrize("block", [0, 1])
def test_audio_injection(models, inputs, parity, block):
    """One block's audio cross-attention added to random hidden states, with the audio features of a forward."""
    theirs, ours = models
    x = inputs
    official_forward(theirs, x, 500.0, x["context"])  # sets the audio embeddings the injector reads
    tokens = ours.prepare_tokens(x["latents"], torch.tensor([500.0]), [x["context"]], x["ref"], x["motion"],
                                 x["audio"], x["cond"], motion_frames=DEFAULT_MOTION_FRAMES)
    hidden = torch.randn(tokens.x.shape, generator=torch.Generator().manual_seed(block))
    expected = theirs.after_transformer_block(block, hidden.clone())
    got = ours._inject_audio(block, hidden.clone(), tokens)
    parity.check("S2V audio injection", got - hidden, expected - hidden, case=f"block {block} (residual)")
    assert torch.equal(got[:, tokens.n_video :], hidden[:, tokens.n_video :])  # reference/motion tokens untouched


@torch.no_grad()
@pytest.mark.parametrize("add_last_motion", [0, 1, 2])
def test_framepack_motioner(models, inputs, parity, add_last_motion):
    theirs, ours = models
    motion = inputs["motion"]
    their_tokens, their_rope = theirs.frame_packer([motion[0]], add_last_motion)
    our_tokens, positions = ours._motion_tokens(motion, add_last_motion)
    case = f"add_last_motion={add_last_motion}"
    parity.check("S2V FramePack motioner", our_tokens, their_tokens[0], case=f"tokens, {case}")
    cos, sin = rope_cos_sin(positions, ours.config.head_dim)
    rope = their_rope[0][0, :, 0]  # [N, head_dim / 2] complex
    parity.check("S2V FramePack motioner", torch.stack([cos, sin]), torch.stack([rope.real, rope.imag]),
                 case=f"rotary tables, {case}")
