"""The official Wan2.2-Animate modules at the sizes of our tiny Animate release (make_tiny_animate_release).

The official constructors hard-code the released sizes of the VAE, umT5, CLIP and of parts of WanAnimateModel;
`official_tiny_animate()` tells each of them the tiny release's (tests/parity/official.py says how), so that they
load the same files as ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from wan_fixtures.tiny_animate import TINY_CLIP_TEXT
from wan_fixtures.tiny_release import (
    TINY_RELEASE_ANIMATE_CONFIG,
    TINY_RELEASE_CLIP_VISION,
    TINY_RELEASE_T5,
    TINY_RELEASE_VAE_DIM,
)

from .official import tiny_animate_widths, tiny_clip, tiny_vae_and_t5

# clip_xlm_roberta_vit_h_14's arguments for the tiny CLIP file (the text tower is only loaded: any head count).
CLIP_SIZES = {
    "embed_dim": TINY_RELEASE_CLIP_VISION.out_dim, "image_size": TINY_RELEASE_CLIP_VISION.image_size,
    "patch_size": TINY_RELEASE_CLIP_VISION.patch_size, "vision_dim": TINY_RELEASE_CLIP_VISION.dim,
    "vision_mlp_ratio": TINY_RELEASE_CLIP_VISION.mlp_ratio, "vision_heads": TINY_RELEASE_CLIP_VISION.num_heads,
    "vision_layers": TINY_RELEASE_CLIP_VISION.num_layers, "vocab_size": TINY_CLIP_TEXT.vocab_size,
    "max_text_len": TINY_CLIP_TEXT.max_text_len, "text_dim": TINY_CLIP_TEXT.dim, "text_heads": 2,
    "text_layers": TINY_CLIP_TEXT.num_layers,
}


@contextmanager
def official_tiny_animate() -> Iterator[None]:
    """While inside, the official VAE, umT5, CLIP and WanAnimateModel constructors build the tiny release's sizes."""
    config = TINY_RELEASE_ANIMATE_CONFIG
    with (tiny_vae_and_t5(TINY_RELEASE_VAE_DIM, TINY_RELEASE_T5), tiny_clip(**CLIP_SIZES),
          tiny_animate_widths(config.face_size, config.image_dim)):
        yield
