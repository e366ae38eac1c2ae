"""Tiny random stand-ins for Wan's VAE, umT5 checkpoint and tokenizer, in the official file names and layouts.

They let tests and CPU smoke runs exercise the production loaders without the 12 GB of real files:
`<folder>/Wan2.1_VAE.pth` (bare fp32 state dict), `<folder>/models_t5_umt5-xxl-enc-bf16.pth` (bare bf16 state
dict) and `<folder>/google/umt5-xxl/` (a Hugging Face tokenizer folder: tokenizer.json + tokenizer_config.json).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from python_backends.generation.wan.common.stand_ins import write_tokenizer as make_tiny_tokenizer  # noqa: F401
from python_backends.generation.wan.common.text_encoder import T5_FILE, UMT5Config, UMT5Encoder
from python_backends.generation.wan.common.vae import VAE_FILE, WanVAE

TINY_VAE_DIM = 8
TINY_T5 = UMT5Config(vocab_size=128, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32)

def make_tiny_vae_checkpoint(folder: Path, dim: int = TINY_VAE_DIM, seed: int = 0) -> Path:
    """Write a random `Wan2.1_VAE.pth` with base width `dim` (96 officially); returns the file."""
    torch.manual_seed(seed)
    model = WanVAE(dim=dim)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.normal_(1.0, 0.1)  # RMS norm gains near one, but not all equal
            elif name.endswith("proj.weight"):
                param.normal_(0.0, 0.05)  # official init zeroes attention outputs; random ones exercise them
    return _save(model, Path(folder) / VAE_FILE, torch.float32)


def make_tiny_t5_checkpoint(folder: Path, cfg: UMT5Config = TINY_T5, seed: int = 0) -> Path:
    """Write a random `models_t5_umt5-xxl-enc-bf16.pth` for `cfg` (bf16, as the official file); returns it."""
    torch.manual_seed(seed)
    model = UMT5Encoder(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Scales that keep activations O(1) through the layers and attention neither uniform nor one-hot.
            if "norm" in name:
                param.normal_(1.0, 0.1)
            elif name == "token_embedding.weight":
                param.normal_(0.0, 1.0)
            elif name.endswith("attn.q.weight"):
                param.normal_(0.0, (cfg.dim * cfg.dim_attn // cfg.num_heads) ** -0.5)
            elif name.endswith("fc2.weight"):
                param.normal_(0.0, cfg.dim_ffn**-0.5)
            elif name.endswith("embedding.weight"):
                param.normal_(0.0, 0.5)  # relative position bias: strong enough to matter in tests
            else:
                param.normal_(0.0, cfg.dim**-0.5)
    return _save(model, Path(folder) / T5_FILE, torch.bfloat16)


def make_tiny_wan_aux(folder: Path) -> dict[str, Path]:
    """All three in one folder, laid out like Wan's checkpoint directory."""
    return {
        "vae": make_tiny_vae_checkpoint(folder),
        "t5": make_tiny_t5_checkpoint(folder),
        "tokenizer": make_tiny_tokenizer(folder),
    }


def _save(model: nn.Module, path: Path, dtype: torch.dtype) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.to(dtype) for k, v in model.state_dict().items()}, path)
    return path
