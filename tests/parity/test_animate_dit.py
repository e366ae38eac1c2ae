"""WanAnimateModel (official) against our WanAnimateTransformer: the same tiny release files, the same inputs.

Both load the DiT of one tiny random Wan2.2-Animate release folder (diffusers from_pretrained on the official side,
built at the tiny release's face-crop size and CLIP width, which it hard-codes: tests/parity/animate_oracle.py;
our strict loader on ours) and run in float32 on CPU. Compared: the whole forward (noise +
mask + reference latents, pose latents, driving face crops, CLIP tokens of the reference, text) at several
timesteps and two clip lengths (the second crosses the official 8-crop batching of the motion encoder), the CFG
pair we batch into one forward against the official two calls (negative prompt, all -1 faces), and the parts on
their own: the motion vectors of the LIA motion encoder, the face tokens of the face encoder, the CLIP projection.

Replacement mode changes only what the pipeline puts into `y` (a person mask and background latents); the
forward is the same, so `y` here is random. Our engine does not offer replacement mode (animate_engine.py).
"""

from __future__ import annotations

import pytest
import torch
from wan_fixtures.tiny_release import TINY_RELEASE_ANIMATE_CONFIG, make_tiny_animate_release

from python_backends.generation.wan.animate.checkpoint import load_animate_transformer
from python_backends.generation.wan.animate.model import cfg_forward

from .animate_oracle import official_tiny_animate

# The official motion encoder runs through torch.utils.checkpoint, which warns when nothing needs gradients.
pytestmark = pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad=True:UserWarning")
CONFIG = TINY_RELEASE_ANIMATE_CONFIG
LAT_H, LAT_W = 6, 10
CLIP_TOKENS = 257  # the official cross-attention splits its context after exactly 257 CLIP tokens
TEXT_TOKENS = 7
TIMESTEPS = (999.0, 500.0, 3.0)
CLIPS = {"2 latent frames": 3, "3 latent frames, 9 face crops": 4}  # latent frames incl. the reference one


@pytest.fixture(scope="module")
def models(official, tiny_release):
    from wan.modules.animate import WanAnimateModel

    folder = tiny_release(make_tiny_animate_release)
    with official_tiny_animate():
        theirs = WanAnimateModel.from_pretrained(str(folder), torch_dtype=torch.float32).eval().requires_grad_(False)
    ours = load_animate_transformer(folder, "cpu", torch.float32)
    return theirs, ours


def make_inputs(frames: int, seed: int) -> dict[str, torch.Tensor]:
    """One clip's DiT inputs: `frames` latent frames (the reference one first), 4 (frames - 2) + 1 face crops."""
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(1, CONFIG.out_dim, frames, LAT_H, LAT_W, generator=g),
        "y": torch.randn(1, CONFIG.in_dim - CONFIG.out_dim, frames, LAT_H, LAT_W, generator=g),
        "pose": torch.randn(1, 16, frames - 1, LAT_H, LAT_W, generator=g),
        "faces": torch.rand(1, 3, 4 * (frames - 2) + 1, CONFIG.face_size, CONFIG.face_size, generator=g) * 2 - 1,
        "clip": torch.randn(1, CLIP_TOKENS, CONFIG.image_dim, generator=g),
        "context": torch.randn(TEXT_TOKENS, CONFIG.text_dim, generator=g),
        "context_null": torch.randn(TEXT_TOKENS + 4, CONFIG.text_dim, generator=g),
    }


@pytest.fixture(scope="module", params=list(CLIPS), ids=list(CLIPS))
def clip(request) -> tuple[str, dict[str, torch.Tensor]]:
    return request.param, make_inputs(CLIPS[request.param], seed=len(request.param))


def official_forward(theirs, x: dict[str, torch.Tensor], t: float, context: torch.Tensor | None = None,
                     faces: torch.Tensor | None = None) -> torch.Tensor:
    """One official call as WanAnimate.generate makes it (lists of per-sample tensors, batch of one)."""
    latents = x["latents"][0]
    return theirs([latents], t=torch.tensor([t]), clip_fea=x["clip"],
                  context=[x["context"] if context is None else context], seq_len=latents[0].numel() // 4,
                  y=[x["y"][0]], pose_latents=x["pose"], face_pixel_values=x["faces"] if faces is None else faces)[0]


@torch.no_grad()
@pytest.mark.parametrize("t", TIMESTEPS)
def test_forward(models, clip, parity, t) -> None:
    theirs, ours = models
    name, x = clip
    got = ours(x["latents"], torch.tensor([t]), [x["context"]], x["y"], x["pose"], clip_features=x["clip"],
               face_pixels=x["faces"])[0]
    parity.check("Animate DiT forward", got, official_forward(theirs, x, t), case=f"{name}, t={t:g}")


@torch.no_grad()
def test_cfg_pair_batched(models, clip, parity) -> None:
    """Our one batched forward of both guidance branches against the official two calls (negative prompt and all
    -1 face crops for the unconditional one, everything else shared)."""
    theirs, ours = models
    name, x = clip
    cond, uncond = cfg_forward(ours, latents=x["latents"], timestep=torch.tensor([500.0]), context=[x["context"]],
                               context_null=[x["context_null"]], y=x["y"], pose_latents=x["pose"],
                               face_pixels=x["faces"], clip_features=x["clip"])
    why = "float32; the two guidance branches in one batch of two instead of two calls"
    parity.check("Animate DiT CFG pair, batched", cond[0], official_forward(theirs, x, 500.0), why=why,
                 case=f"{name}, t=500, conditional")
    parity.check("Animate DiT CFG pair, batched", uncond[0],
                 official_forward(theirs, x, 500.0, x["context_null"], x["faces"] * 0 - 1), why=why,
                 case=f"{name}, t=500, unconditional")


@torch.no_grad()
def test_face_path_and_clip_projection(models, clip, parity) -> None:
    """The motion encoder's motion vectors, the face encoder's per-latent-frame tokens (with the official zero
    tokens of the reference frame) and the CLIP projection, each on its own."""
    theirs, ours = models
    name, x = clip
    crops = x["faces"][0].transpose(0, 1)  # the crops as one batch [T, 3, S, S]
    parity.check("Animate motion encoder (LIA): motion vectors", ours.motion_encoder.get_motion(crops),
                 theirs.motion_encoder.get_motion(crops), case=name)
    patches = [theirs.patch_embedding(torch.cat([x["latents"][0], x["y"][0]])[None])]
    _, their_tokens = theirs.after_patch_embedding(patches, x["pose"], x["faces"])
    parity.check("Animate face encoder: face tokens per latent frame", ours.encode_face(x["faces"]), their_tokens,
                 case=name)
    parity.check("Animate CLIP projection (img_emb)", ours.encode_image(x["clip"]), theirs.img_emb(x["clip"]),
                 case=name)


@torch.no_grad()
def test_forward_is_sensitive_to_every_input(models) -> None:
    """The comparisons above would not notice a dropped input unless each one moves the output."""
    theirs, _ = models
    x = make_inputs(CLIPS["2 latent frames"], seed=5)
    base = official_forward(theirs, x, 500.0)
    for key in ("latents", "y", "pose", "faces", "clip", "context"):
        changed = {**x, key: x[key].flip(-1)}  # (reordering text tokens would not count: no positions there)
        assert (official_forward(theirs, changed, 500.0) - base).abs().max() > 1e-3 * base.abs().max(), key
