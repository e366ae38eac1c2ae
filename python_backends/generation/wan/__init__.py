"""Wan2.2-S2V-14B diffusion transformer in our own PyTorch code, loading the official release layout."""

from .animate.configs import ANIMATE_14B
from .common.checkpoint import CheckpointError, load_s2v_transformer, read_config, write_sharded_checkpoint
from .common.configs import (
    S2V_14B,
    WAN_CONFIGS,
    WanS2VTaskConfig,
    WanS2VTransformerConfig,
    from_diffusers_config,
    to_diffusers_config,
)
from .s2v.model import WanS2VTransformer, build_s2v_model, cfg_forward, count_parameters, guide, init_random_weights_

WAN_CONFIGS[ANIMATE_14B.name] = ANIMATE_14B

__all__ = [
    "ANIMATE_14B",
    "S2V_14B",
    "WAN_CONFIGS",
    "CheckpointError",
    "WanS2VTaskConfig",
    "WanS2VTransformer",
    "WanS2VTransformerConfig",
    "build_s2v_model",
    "cfg_forward",
    "count_parameters",
    "from_diffusers_config",
    "guide",
    "init_random_weights_",
    "load_s2v_transformer",
    "read_config",
    "to_diffusers_config",
    "write_sharded_checkpoint",
]
