"""Typed configuration of Wan2.2-Animate-14B: the diffusion transformer and the pipeline around it.

Every value below was read from the official sources, Wan-Video/Wan2.2 at commit
42bf4cfaa384bc21833865abc2f9e6c0e67233dc:

| value                                      | where                                                           |
|--------------------------------------------|-----------------------------------------------------------------|
| dim 5120, ffn_dim 13824, freq_dim 256      | wan/configs/wan_animate_14B.py                                  |
| num_heads 40, num_layers 40, eps 1e-6      | same                                                            |
| patch_size (1, 2, 2), window (-1, -1)      | same                                                            |
| qk_norm, cross_attn_norm True              | same                                                            |
| motion_encoder_dim 512, use_face_encoder   | same                                                            |
| in_dim 36, text_dim 4096, out_dim 16       | WanAnimateModel.__init__ defaults (wan/modules/animate/          |
| text_len 512, use_img_emb True             | model_animate.py); not in the 14B config file                   |
| img_emb MLPProj(1280, dim)                 | model_animate.py (CLIP ViT-H/14 width, hard-coded)              |
| pose_patch_embedding Conv3d(16, dim)       | same (VAE latent channels, hard-coded)                          |
| face adapter after every 5th block         | same (num_adapter_layers = num_layers // 5, block_idx % 5 == 0) |
| motion encoder Generator(512, 512, 20)     | same; motion_encoder.py (LIA encoder, 512x512 face crops)       |
| face encoder 4 heads, width 1024           | same; face_blocks.py (FaceEncoder, hard-coded 1024)             |
| sample_steps 20, shift 5.0, guide 1.0      | wan_animate_14B.py                                              |
| frame_num (clip_len) 77, sample_fps 30     | same                                                            |
| prompt '视频中的人在做动作'                  | same                                                            |
| refert_num 1 or 5                          | wan/animate.py WanAnimate.generate (asserted)                   |
| sample_solver 'unipc'                      | generate.py `--sample_solver` default (generate() says dpm++)   |
| clip models_clip_open-clip-xlm-roberta-... | wan_animate_14B.py (clip_checkpoint, tokenizer xlm-roberta-large)|
| relighting_lora.ckpt, rank 128, alpha 128  | wan_animate_14B.py; wan/animate.py (get_loraconfig)             |
| vae Wan2.1_VAE.pth, stride (4, 8, 8)       | wan_animate_14B.py                                              |
| t5 models_t5_umt5-xxl-enc-bf16.pth         | wan_animate_14B.py; tokenizer google/umt5-xxl, text_len 512      |
| num_train_timesteps 1000, neg prompt       | wan/configs/shared_config.py                                    |
| supported sizes 720*1280, 1280*720         | wan/configs/__init__.py SUPPORTED_SIZES['animate-14B']          |

The released folder's transformer is built by `WanAnimateModel.from_pretrained(checkpoint_dir)`, i.e. from a
diffusers-style config.json next to four shards. WanAnimateModel declares no `ignore_for_config`, so every
`__init__` argument can appear there; absent ones take the `__init__` defaults (which are the 14B values).

Fields marked "extension" below are hard-coded in the official classes. They keep the official value by default
and are written to config.json only when they differ (tiny test checkpoints shrink them; the official
from_pretrained would ignore such fields, diffusers' WanAnimateTransformer3DModel has the same knobs as config).

Key names and shapes: the module tree built from the defaults has exactly the tensors DiffSynth-Studio
fingerprints for the released diffusion_pytorch_model*.safetensors (model_hash 31fa352acb8a1b1d33cd8764273d80a2,
md5 of the sorted "key:shape" and "key" strings), including the motion encoder's blur-kernel buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ....errors import ConfigError
from ..common.configs import _coerce

log = logging.getLogger(__name__)

OFFICIAL_CLASS_NAME = "WanAnimateModel"
FACE_ADAPTER_EVERY = 5  # official after_transformer_block: block_idx % 5 == 0 -> fuser_blocks[block_idx // 5]
POSE_LATENT_CHANNELS = 16  # pose_patch_embedding = Conv3d(16, dim): Wan2.1 VAE latent channels
# EncoderApp's channel table for size 512 (official motion_encoder.py), from the 512x512 input down to 4x4.
OFFICIAL_MOTION_CHANNELS = (32, 64, 128, 256, 512, 512, 512, 512)


@dataclass(frozen=True)
class WanAnimateTransformerConfig:
    """Architecture of WanAnimateModel; the defaults are the released 14B model."""

    # official config.json fields (WanAnimateModel.__init__ arguments)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 36
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 40
    num_layers: int = 40
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    motion_encoder_dim: int = 512
    use_context_parallel: bool = False
    use_img_emb: bool = True
    # extensions (hard-coded officially)
    image_dim: int = 1280  # MLPProj input: CLIP vision width
    motion_channels: tuple[int, ...] = OFFICIAL_MOTION_CHANNELS
    motion_dim: int = 20  # LIA motion directions
    face_hidden_dim: int = 1024  # FaceEncoder's inner width
    face_heads: int = 4  # FaceEncoder's token count per frame (before the padding token)

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ConfigError(f"dim {self.dim} must split into {self.num_heads} heads of even size")
        if self.num_layers % FACE_ADAPTER_EVERY:
            # The official model builds num_layers // 5 face blocks but calls one after every block index
            # divisible by 5, so any other depth indexes past its ModuleList.
            raise ConfigError(f"num_layers must be a multiple of {FACE_ADAPTER_EVERY}, got {self.num_layers}")
        if tuple(self.window_size) != (-1, -1):
            raise ConfigError(f"only global attention is supported, window_size={self.window_size}")
        if len(self.patch_size) != 3:
            raise ConfigError(f"patch_size must have 3 entries, got {self.patch_size}")
        if len(self.motion_channels) < 2:
            raise ConfigError("motion_channels needs at least 2 widths (input conv and one residual block)")
        if self.motion_dim > self.motion_encoder_dim:
            raise ConfigError(f"motion_dim {self.motion_dim} cannot exceed motion_encoder_dim "
                              f"{self.motion_encoder_dim} (QR of the direction matrix)")
        if self.in_dim <= self.out_dim:
            raise ConfigError(f"in_dim {self.in_dim} must hold the {self.out_dim} noise channels plus mask and "
                              "reference latents")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_face_blocks(self) -> int:
        return self.num_layers // FACE_ADAPTER_EVERY

    @property
    def face_size(self) -> int:
        """Side of the square face crops the motion encoder takes (512 officially): 4 x 2^(residual blocks)."""
        return 4 * 2 ** (len(self.motion_channels) - 1)


@dataclass(frozen=True)
class WanAnimateTaskConfig:
    """Pipeline-level facts of the animate task (checkpoint file names, sampling defaults)."""

    name: str
    transformer: WanAnimateTransformerConfig
    t5_model: str
    t5_checkpoint: str
    t5_tokenizer: str
    t5_dtype: str
    text_len: int
    clip_checkpoint: str
    clip_tokenizer: str
    lora_checkpoint: str
    lora_rank: int
    lora_alpha: int
    param_dtype: str
    vae_checkpoint: str
    vae_stride: tuple[int, int, int]
    num_train_timesteps: int
    sample_fps: int
    frame_num: int  # clip_len: frames per generated clip, 4n+1
    refert_nums: tuple[int, ...]  # frames carried over from the previous clip (temporal guidance)
    sample_shift: float
    sample_steps: int
    sample_guide_scale: float
    sample_solver: str
    prompt: str
    sample_neg_prompt: str
    face_size: int
    supported_sizes: tuple[str, ...]
    transformer_config_file: str = "config.json"
    transformer_index_file: str = "diffusion_pytorch_model.safetensors.index.json"
    transformer_shards: int = 4

    @property
    def latent_frames(self) -> int:
        """Latent frames of one clip (official lat_t = T // 4 + 1), before the reference frame is prepended."""
        return self.frame_num // 4 + 1


ANIMATE_14B = WanAnimateTaskConfig(
    name="animate-14B",
    transformer=WanAnimateTransformerConfig(),
    t5_model="umt5_xxl",
    t5_checkpoint="models_t5_umt5-xxl-enc-bf16.pth",
    t5_tokenizer="google/umt5-xxl",
    t5_dtype="bfloat16",
    text_len=512,
    clip_checkpoint="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    clip_tokenizer="xlm-roberta-large",
    lora_checkpoint="relighting_lora.ckpt",
    lora_rank=128,
    lora_alpha=128,
    param_dtype="bfloat16",
    vae_checkpoint="Wan2.1_VAE.pth",
    vae_stride=(4, 8, 8),
    num_train_timesteps=1000,
    sample_fps=30,
    frame_num=77,
    refert_nums=(1, 5),
    sample_shift=5.0,
    sample_steps=20,
    sample_guide_scale=1.0,
    sample_solver="unipc",
    prompt="视频中的人在做动作",
    sample_neg_prompt=(
        "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
        "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
        "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
    ),
    face_size=512,
    supported_sizes=("720*1280", "1280*720"),
)

ANIMATE_CONFIGS: dict[str, WanAnimateTaskConfig] = {"animate-14B": ANIMATE_14B}

# WanAnimateModel.__init__ defaults: what from_pretrained uses for a field config.json does not carry.
WANANIMATEMODEL_INIT_DEFAULTS: dict[str, Any] = {
    "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 36, "dim": 5120, "ffn_dim": 13824, "freq_dim": 256,
    "text_dim": 4096, "out_dim": 16, "num_heads": 40, "num_layers": 40, "window_size": (-1, -1), "qk_norm": True,
    "cross_attn_norm": True, "eps": 1e-6, "motion_encoder_dim": 512, "use_context_parallel": False,
    "use_img_emb": True,
}
EXTENSION_DEFAULTS: dict[str, Any] = {
    "image_dim": 1280, "motion_channels": OFFICIAL_MOTION_CHANNELS, "motion_dim": 20, "face_hidden_dim": 1024,
    "face_heads": 4,
}
_DIFFUSERS_META = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def from_animate_config(raw: Mapping[str, Any]) -> WanAnimateTransformerConfig:
    """Map the official diffusers-style config.json of WanAnimateModel onto our config.

    Missing fields take WanAnimateModel's __init__ defaults (as from_pretrained does); unknown fields are logged
    and ignored (as diffusers does); a wrong `_class_name` or a wrongly typed value is a ConfigError.
    """
    class_name = raw.get("_class_name")
    if class_name != OFFICIAL_CLASS_NAME:
        raise ConfigError(f"config.json describes {class_name!r}, expected {OFFICIAL_CLASS_NAME!r}")
    values: dict[str, Any] = {}
    for name, default in {**WANANIMATEMODEL_INIT_DEFAULTS, **EXTENSION_DEFAULTS}.items():
        values[name] = _coerce(name, raw[name], default) if name in raw else default
    known = {f.name for f in fields(WanAnimateTransformerConfig)}
    unknown = sorted(k for k in raw if k not in known and k not in _DIFFUSERS_META)
    if unknown:
        log.warning("config.json: ignoring fields WanAnimateModel does not take: %s", unknown)
    if values["use_context_parallel"]:
        log.info("config.json asks for use_context_parallel; sequence parallelism is chosen at run time here")
    return WanAnimateTransformerConfig(**values)


def to_animate_config(config: WanAnimateTransformerConfig, diffusers_version: str = "0.35.1") -> dict[str, Any]:
    """The config.json diffusers writes for WanAnimateModel(**config), plus any extension off its default."""
    out: dict[str, Any] = {"_class_name": OFFICIAL_CLASS_NAME, "_diffusers_version": diffusers_version}
    for name in WANANIMATEMODEL_INIT_DEFAULTS:
        value = getattr(config, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    for name, default in EXTENSION_DEFAULTS.items():
        value = getattr(config, name)
        if value != default:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out
