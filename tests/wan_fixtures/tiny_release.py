"""Complete tiny Wan2.2-S2V-14B and Wan2.2-Animate-14B release folders with random weights, for CPU tests and smoke
runs (the official code loads them too: tests/parity).

Same files and layouts as Wan-AI/Wan2.2-S2V-14B, every part small:

    config.json, diffusion_pytorch_model.safetensors.index.json, diffusion_pytorch_model-0000k-of-00002.safetensors
    Wan2.1_VAE.pth                          VAE of base width 4 (96 officially)
    models_t5_umt5-xxl-enc-bf16.pth         2-layer umT5 whose width is the DiT's text_dim (4096, as the real one)
    google/umt5-xxl/                        small Unigram tokenizer
    wav2vec2-large-xlsr-53-english/         24-layer, 32-wide wav2vec2 (25 hidden states, as the real one)

The umT5 keeps the official width 4096 because the DiT's text_dim is not written to config.json (diffusers
leaves it out), so the DiT always expects 4096-wide text features; its attention and feed-forward are narrow
to keep the file at a few MB. The wav2vec2 keeps the official 24 layers because the DiT weighs exactly 25
hidden states; its width is the tiny DiT's audio_dim.

The Animate folder (`make_tiny_animate_release`) adds the CLIP file and its `xlm-roberta-large/` tokenizer folder.
Its DiT keeps the widths the official WanAnimateModel hard-codes whatever config.json says: the motion encoder's
512-wide style vector and 512 x 20 direction matrix (so motion_encoder_dim 512), the face encoder's 4 x 1024
channels; its motion encoder takes 8 x 8 face crops instead of 512 x 512 (one down-sampling block of the official
size-8 channel table instead of seven). The CLIP vision tower is narrow (160 instead of 1280, 2 layers) but takes
the released 224 x 224 images: the official cross-attention splits its context after exactly 257 CLIP tokens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from python_backends.generation.wan.animate.configs import ANIMATE_14B, WanAnimateTransformerConfig
from python_backends.generation.wan.common.configs import S2V_14B
from python_backends.generation.wan.common.stand_ins import write_wav2vec2
from python_backends.generation.wan.common.text_encoder import UMT5Config

from .tiny import TINY_S2V_CONFIG, make_tiny_s2v_checkpoint
from .tiny_animate import TINY_CLIP_VISION, make_tiny_animate_checkpoint, make_tiny_clip_checkpoint
from .tiny_aux import make_tiny_t5_checkpoint, make_tiny_tokenizer, make_tiny_vae_checkpoint


def make_tiny_wav2vec2(folder: Path | str, hidden_size: int = TINY_S2V_CONFIG.audio_dim,
                       num_layers: int = TINY_S2V_CONFIG.audio_layers - 1, seed: int = 0) -> Path:
    return write_wav2vec2(folder, hidden_size, num_layers, seed)

TINY_RELEASE_T5 = UMT5Config(
    vocab_size=128, dim=TINY_S2V_CONFIG.text_dim, dim_attn=32, dim_ffn=32, num_heads=4, num_layers=2, num_buckets=32
)
TINY_RELEASE_VAE_DIM = 4  # the VAE's per-frame work dominates tiny CPU runs (73 motion frames a clip)
TINY_RELEASE_CLIP_VISION = replace(TINY_CLIP_VISION, image_size=224)
TINY_RELEASE_ANIMATE_CONFIG = WanAnimateTransformerConfig(
    text_len=16, dim=64, ffn_dim=128, freq_dim=32, text_dim=TINY_RELEASE_T5.dim, num_heads=2, num_layers=10,
    motion_encoder_dim=512, image_dim=TINY_RELEASE_CLIP_VISION.dim, motion_channels=(512, 512), motion_dim=20,
    face_hidden_dim=1024, face_heads=4,
)
SAMPLE_RATE = 16000
# A minimal CTC vocabulary in the layout of jonatasgrosman/wav2vec2-large-xlsr-53-english's vocab.json.
def make_tiny_s2v_release(folder: Path | str, seed: int = 0) -> Path:
    """Write every file of a Wan2.2-S2V-14B release folder, with tiny random weights; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_s2v_checkpoint(folder, seed=seed)
    make_tiny_vae_checkpoint(folder, dim=TINY_RELEASE_VAE_DIM, seed=seed)
    make_tiny_t5_checkpoint(folder, cfg=TINY_RELEASE_T5, seed=seed)
    make_tiny_tokenizer(folder)
    make_tiny_wav2vec2(folder / S2V_14B.wav2vec, seed=seed)
    return folder


def make_tiny_animate_release(folder: Path | str, seed: int = 0) -> Path:
    """Write every file of a Wan2.2-Animate-14B release folder the generator reads, with tiny random weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_animate_checkpoint(folder, seed=seed, config=TINY_RELEASE_ANIMATE_CONFIG, with_clip=False)
    make_tiny_clip_checkpoint(folder, TINY_RELEASE_CLIP_VISION, seed=seed)
    make_tiny_vae_checkpoint(folder, dim=TINY_RELEASE_VAE_DIM, seed=seed)
    make_tiny_t5_checkpoint(folder, cfg=TINY_RELEASE_T5, seed=seed)
    make_tiny_tokenizer(folder)
    make_tiny_tokenizer(folder, ANIMATE_14B.clip_tokenizer)  # only loaded, never used: Animate reads no CLIP text
    return folder


def make_tiny_liveavatar_lora(folder: Path | str, seed: int = 0, scale: float = 0.02, prefix: str = "base_model.model.",
                              rank: int = 128) -> Path:
    """`folder`/liveavatar.safetensors for the tiny S2V DiT in the release's layout: PEFT keys with the adapter
    segment (`<prefix><module>.lora_A.default.weight` [r, in], `.lora_B.default.weight` [out, r]), rank 128, on
    every module LiveAvatar's config targets (q, k, v, o, ffn.0, ffn.2: self-, cross- and audio attention). B is
    random (PEFT initialises it to zero; a trained file is not), `scale` its standard deviation."""
    from safetensors.torch import save_file

    from python_backends.generation.wan.common.lora import peft_targets
    from python_backends.generation.wan.s2v.liveavatar_engine import LORA_FILE, LORA_TARGETS
    from python_backends.generation.wan.s2v.model import meta_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = meta_model(TINY_S2V_CONFIG)
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(peft_targets(model, LORA_TARGETS)):
        out_dim, in_dim = modules[name].weight.shape
        state[f"{prefix}{name}.lora_A.default.weight"] = torch.randn(rank, in_dim, generator=generator) / in_dim**0.5
        state[f"{prefix}{name}.lora_B.default.weight"] = torch.randn(out_dim, rank, generator=generator) * scale
    path = folder / LORA_FILE
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(path))
    return path
