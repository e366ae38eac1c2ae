"""A tiny random WanModel_S2V checkpoint in the exact official folder layout, for tests.

Same key names as the released 14B model for every pattern (blocks.*, audio_injector.injector.*,
injector_adain_layers.*, casual_audio_encoder.encoder.conv1_local/conv1_global/..., frame_packer.proj*, ...),
with small widths. Fields diffusers leaves out of config.json (text_dim, patch_size, qk_norm, cross_attn_norm,
window_size) keep their official defaults, so text_dim stays 4096 exactly as from_pretrained would build it.
"""

from __future__ import annotations

from pathlib import Path

from python_backends.generation.wan.common.checkpoint import write_sharded_checkpoint
from python_backends.generation.wan.common.configs import WanS2VTransformerConfig
from python_backends.generation.wan.s2v.model import build_s2v_model

TINY_S2V_CONFIG = WanS2VTransformerConfig(
    dim=64,
    ffn_dim=128,
    freq_dim=32,
    num_heads=2,
    num_layers=2,
    text_len=16,
    audio_dim=32,
    num_audio_token=4,
    audio_inject_layers=(0, 1),
)


def make_tiny_s2v_checkpoint(folder: Path | str, seed: int = 0,
                             config: WanS2VTransformerConfig = TINY_S2V_CONFIG, num_shards: int = 2) -> Path:
    """Write config.json, 2 shards and diffusion_pytorch_model.safetensors.index.json of a random tiny model."""
    model = build_s2v_model(config, device="cpu", dtype=None, seed=seed)
    return write_sharded_checkpoint(folder, config, model.state_dict(), num_shards=num_shards)
