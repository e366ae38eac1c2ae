"""A tiny random Wan2.2-Animate checkpoint folder in the exact official layout, for tests and CPU smoke runs.

`make_tiny_animate_checkpoint(folder)` writes what `WanAnimate(checkpoint_dir=folder)` reads, with the same
file names and the same key names as the release:

    config.json, diffusion_pytorch_model.safetensors.index.json,
    diffusion_pytorch_model-0000{1..4}-of-00004.safetensors      the transformer (bf16, as released)
    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth     CLIP (visual.*, textual.*, log_scale; fp16)
    Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/   (with_aux=True, from tiny_aux)

Widths are small (dim 64, 5 blocks so one face block, text_dim 32 = the tiny umT5's width) and the motion
encoder has 4 down-sampling stages instead of 7 (64x64 face crops instead of 512x512), so every key name pattern
of the release is present (blur kernels included) at a fraction of the cost. The hard-coded official sizes that
shrink here (CLIP width, motion-encoder channels, face-encoder width) are written to config.json as extension
fields.
"""

from __future__ import annotations

from pathlib import Path

import torch

from python_backends.generation.wan.animate.checkpoint import OFFICIAL_SHARDS, write_animate_checkpoint
from python_backends.generation.wan.animate.clip_vision import (
    CLIP_FILE,
    ClipVisionConfig,
    ClipVisionTransformer,
    XLMRobertaTextConfig,
    write_clip_checkpoint,
)
from python_backends.generation.wan.animate.configs import WanAnimateTransformerConfig
from python_backends.generation.wan.animate.model import build_animate_model

from .tiny_aux import TINY_T5, make_tiny_wan_aux

TINY_CLIP_VISION = ClipVisionConfig(image_size=28, patch_size=14, dim=160, mlp_ratio=2, num_heads=2, num_layers=2,
                                    out_dim=32)
TINY_CLIP_TEXT = XLMRobertaTextConfig(vocab_size=32, max_text_len=16, dim=16, num_layers=1, out_dim=32)
TINY_ANIMATE_CONFIG = WanAnimateTransformerConfig(
    text_len=16,
    dim=64,
    ffn_dim=128,
    freq_dim=32,
    text_dim=TINY_T5.dim,
    num_heads=2,
    num_layers=5,
    motion_encoder_dim=32,
    image_dim=TINY_CLIP_VISION.dim,
    motion_channels=(4, 8, 8, 16, 16),
    motion_dim=20,
    face_hidden_dim=32,
    face_heads=4,
)


@torch.no_grad()
def make_tiny_clip_checkpoint(folder: Path | str, config: ClipVisionConfig = TINY_CLIP_VISION,
                              text: XLMRobertaTextConfig = TINY_CLIP_TEXT, seed: int = 0) -> Path:
    """Write a random `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` of the given sizes."""
    torch.manual_seed(seed)
    model = ClipVisionTransformer(config)
    for name, param in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            param.normal_(1.0, 0.1)
        elif name.endswith("embedding") or name == "head":
            param.normal_(0.0, config.dim**-0.5)
        elif param.dim() >= 2:
            param.normal_(0.0, param[0].numel() ** -0.5)
        else:
            param.normal_(0.0, 0.02)
    return write_clip_checkpoint(Path(folder) / CLIP_FILE, model, text, seed=seed)


def make_tiny_animate_checkpoint(folder: Path | str, seed: int = 0,
                                 config: WanAnimateTransformerConfig = TINY_ANIMATE_CONFIG,
                                 num_shards: int = OFFICIAL_SHARDS, with_clip: bool = True,
                                 with_aux: bool = False) -> Path:
    """Write the tiny transformer folder (+ CLIP, + VAE/umT5/tokenizer when asked); returns the folder."""
    folder = Path(folder)
    model = build_animate_model(config, device="cpu", dtype=torch.float32, seed=seed)
    write_animate_checkpoint(folder, config, model.state_dict(), num_shards=num_shards, dtype=torch.bfloat16)
    if with_clip:
        make_tiny_clip_checkpoint(folder, seed=seed)
    if with_aux:
        make_tiny_wan_aux(folder)
    return folder
