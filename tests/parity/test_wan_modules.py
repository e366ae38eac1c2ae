"""The official Wan2.1 VAE, umT5 text encoder (tokenizer included) and CLIP vision encoder against ours.

Each side loads the same files of one tiny random Wan2.2-Animate release folder (the S2V release has the same VAE,
umT5 and tokenizer files): the official `Wan2_1_VAE`, `T5EncoderModel` and `CLIPModel`, built at the release's
sizes (tests/parity/animate_oracle.py), against our `WanVAE`, `WanTextEncoder` and `ClipVisionTransformer` as our
engines load them. Compared: VAE encode (one image, 5 and 9 frames) and decode (whole, and our stream of
latent-frame chunks against the matching official frames); the tokenizer's ids and mask and the umT5 context for
prompts that exercise the official cleaning (ftfy, HTML entities, Unicode whitespace), padding within a batch and
truncation at text_len; the CLIP tokens of reference images of several sizes, and the preprocessed image the
official `CLIPModel.visual` feeds its ViT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from wan_fixtures.tiny_release import (
    TINY_RELEASE_T5,
    TINY_RELEASE_VAE_DIM,
    make_tiny_animate_release,
)

from python_backends.generation.wan.animate.clip_vision import load_clip_vision
from python_backends.generation.wan.animate.configs import ANIMATE_14B
from python_backends.generation.wan.common.text_encoder import UMT5Tokenizer, load_text_encoder
from python_backends.generation.wan.common.vae import load_vae

from .animate_oracle import official_tiny_animate

TEXT_LEN = 24
PROMPTS = {
    "plain": "a woman is talking to the camera",
    "official default (Chinese)": ANIMATE_14B.prompt,
    "HTML entities, twice escaped": "a man &amp;amp; a woman &lt;smiling&gt; in front of the camera",
    "mojibake ftfy repairs": "the person\u00e2\u20ac\u2122s face, caf\u00c3\u00a9 video",
    "Unicode whitespace": "  a\tperson\u00a0is\u3000talking\n\nto   the\u2028camera  ",
    "empty": "",
    "longer than text_len": " ".join(["a person is talking to the camera with a clear face"] * 4),
}


@pytest.fixture(scope="module")
def release(tiny_release) -> Path:
    return tiny_release(make_tiny_animate_release)


@pytest.fixture(scope="module")
def vaes(official, release):
    from wan.modules.vae2_1 import Wan2_1_VAE

    with official_tiny_animate():
        theirs = Wan2_1_VAE(vae_pth=str(release / ANIMATE_14B.vae_checkpoint), device="cpu")
    return theirs, load_vae(release / ANIMATE_14B.vae_checkpoint, "cpu", torch.float32, dim=TINY_RELEASE_VAE_DIM)


def _video(frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1]: moving gradients plus noise, so that every frame and position matters."""
    g = torch.Generator().manual_seed(seed)
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    base = torch.stack([torch.sin((x + 3 * t) / 5.0), torch.cos((y - 2 * t) / 7.0), torch.sin((x + y + t) / 9.0)])
    return (0.8 * base + 0.2 * torch.rand(3, frames, height, width, generator=g) - 0.1).clamp(-1, 1)


@torch.no_grad()
@pytest.mark.parametrize("frames", [1, 5, 9])
def test_vae_encode(vaes, parity, frames) -> None:
    theirs, ours = vaes
    video = _video(frames, 40, 56, seed=frames)
    parity.check("Wan2.1 VAE encode", ours.encode(video[None])[0], theirs.encode([video])[0],
                 case=f"{frames} frame(s) of 40x56")


@torch.no_grad()
def test_vae_single_image_from_repeated_frames(vaes, parity) -> None:
    """Our engines encode one image as the first latent frame of 5 copies of it (the causal encoder's first frame
    sees nothing after it); the official encodes the image alone."""
    theirs, ours = vaes
    image = _video(1, 40, 56, seed=3)
    parity.check("Wan2.1 VAE: one image as the first latent of 5 copies", ours.encode(
        image[None].expand(-1, -1, 5, -1, -1))[:, :, :1][0], theirs.encode([image])[0], case="40x56")


@torch.no_grad()
@pytest.mark.parametrize("latent_frames", [1, 4])
def test_vae_decode_whole_and_streamed(vaes, parity, latent_frames) -> None:
    theirs, ours = vaes
    latents = torch.randn(1, 16, latent_frames, 5, 7, generator=torch.Generator().manual_seed(latent_frames))
    (video,) = theirs.decode([latents[0]])
    case = f"{latent_frames} latent frame(s) of 5x7"
    parity.check("Wan2.1 VAE decode (whole)", ours.decode(latents)[0], video, case=case)
    start = 0
    for index, chunk in enumerate(ours.decode_chunks(latents)):
        frames = chunk.shape[2]
        parity.check("Wan2.1 VAE decode streamed, per latent frame", chunk[0], video[:, start:start + frames],
                     case=f"{case}: chunk {index}")
        start += frames
    assert start == video.shape[1]


@pytest.fixture(scope="module")
def text_encoders(official, release):
    from wan.modules.t5 import T5EncoderModel

    with official_tiny_animate():
        theirs = T5EncoderModel(text_len=TEXT_LEN, dtype=torch.float32, device=torch.device("cpu"),
                                checkpoint_path=str(release / ANIMATE_14B.t5_checkpoint),
                                tokenizer_path=str(release / ANIMATE_14B.t5_tokenizer))
    ours = load_text_encoder(release / ANIMATE_14B.t5_checkpoint, release / ANIMATE_14B.t5_tokenizer, "cpu",
                             torch.float32, TINY_RELEASE_T5, text_len=TEXT_LEN)
    return theirs, ours


def test_tokenizer(text_encoders, parity) -> None:
    theirs, _ = text_encoders
    ours = UMT5Tokenizer(theirs.tokenizer_path, TEXT_LEN)
    for name, prompt in PROMPTS.items():
        their_ids, their_mask = theirs.tokenizer([prompt], return_mask=True, add_special_tokens=True)
        our_ids, our_mask = ours([prompt])
        parity.check("umT5 tokenizer: ids", our_ids, their_ids, tolerance=0.0, why="integers", case=name)
        parity.check("umT5 tokenizer: attention mask", our_mask, their_mask, tolerance=0.0, why="integers",
                     case=name)


@torch.no_grad()
def test_text_context(text_encoders, parity) -> None:
    """All prompts as one batch (padding masks differ per prompt) and the longest one alone."""
    theirs, ours = text_encoders
    prompts = list(PROMPTS.values())
    their_contexts = theirs(prompts, torch.device("cpu"))
    our_contexts = ours(prompts)
    assert [len(c) for c in our_contexts] == [len(c) for c in their_contexts]
    assert len(their_contexts[-1]) == TEXT_LEN  # truncated, ends with EOS
    for name, got, expected in zip(PROMPTS, our_contexts, their_contexts):
        parity.check("umT5 text context", got, expected, case=f"{name}, batch of {len(prompts)}")
    parity.check("umT5 text context", ours([PROMPTS["plain"]])[0], theirs([PROMPTS["plain"]], "cpu")[0],
                 case="plain, alone")


@pytest.fixture(scope="module")
def clips(official, release):
    from wan.modules.animate.clip import CLIPModel

    with official_tiny_animate():
        theirs = CLIPModel(dtype=torch.float32, device=torch.device("cpu"),
                           checkpoint_path=str(release / ANIMATE_14B.clip_checkpoint),
                           tokenizer_path=str(release / ANIMATE_14B.clip_tokenizer))
    return theirs, load_clip_vision(release / ANIMATE_14B.clip_checkpoint, "cpu")


@torch.no_grad()
@pytest.mark.parametrize("height, width", [(64, 96), (224, 224), (360, 200)])
def test_clip_vision(clips, parity, height, width) -> None:
    """CLIPModel.visual (bicubic resize to 224, CLIP mean/std, every block but the last) against ours, for a
    reference image smaller than, equal to and larger than the CLIP input."""
    theirs, ours = clips
    rng = np.random.default_rng(height)
    image = torch.from_numpy(rng.uniform(-1, 1, (3, height, width)).astype(np.float32))
    fed: list[torch.Tensor] = []
    hook = theirs.model.visual.register_forward_pre_hook(lambda _module, args: fed.append(args[0].clone()))
    try:
        their_tokens = theirs.visual([image[:, None]])
    finally:
        hook.remove()
    case = f"{height}x{width} reference"
    parity.check("CLIP vision: preprocessed image (resize + mean/std)", ours.preprocess(image[None]), fed[0],
                 case=case)
    parity.check("CLIP vision: penultimate-block tokens", ours.encode_images(image[None]), their_tokens, case=case)
