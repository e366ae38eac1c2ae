"""Typed configuration of Wan2.2-S2V-14B: the diffusion transformer and the pipeline around it.

Every value below was read from the official sources, Wan-Video/Wan2.2 at commit
42bf4cfaa384bc21833865abc2f9e6c0e67233dc:

| value                                   | where                                                          |
|-----------------------------------------|----------------------------------------------------------------|
| dim 5120, ffn_dim 13824, freq_dim 256   | wan/configs/wan_s2v_14B.py (`s2v_14B.transformer.*`)           |
| num_heads 40, num_layers 40             | same                                                           |
| patch_size (1, 2, 2), eps 1e-6          | same                                                           |
| qk_norm, cross_attn_norm True           | same                                                           |
| window_size (-1, -1)                    | same                                                           |
| enable_adain True, adain_mode attn_norm | same                                                           |
| audio_inject_layers 0,4,...,24,27,...39 | same (12 layers)                                               |
| zero_init, zero_timestep True           | same                                                           |
| enable_motioner False, framepack True   | same; framepack_drop_mode "padd"                               |
| add_last_motion True, enable_tsm False  | same                                                           |
| audio_dim 1024, cond_dim 16             | same                                                           |
| motion_frames 73                        | same (`s2v_14B.transformer.motion_frames`, used by the pipeline)|
| trainable_token_pos_emb False           | same (`s2v_14B.transformer.trainable_token = False`)          |
| num_audio_token 4                       | WanModel_S2V.__init__ default (wan/modules/s2v/model_s2v.py); |
|                                         | not set in wan_s2v_14B.py                                      |
| in_dim 16, out_dim 16, text_dim 4096    | WanModel_S2V.__init__ defaults (not in the 14B config file)    |
| text_len 512                            | wan/configs/shared_config.py and WanModel_S2V default          |
| 25 wav2vec2 layers weighted             | CausalAudioEncoder(num_layers=25) default, audio_utils.py      |
| sample_steps 40, guide 4.5, shift 3     | wan_s2v_14B.py (generate.py uses them unless overridden)       |
| drop_first_motion True                  | wan_s2v_14B.py                                                 |
| vae Wan2.1_VAE.pth, stride (4, 8, 8)    | wan_s2v_14B.py                                                 |
| t5 models_t5_umt5-xxl-enc-bf16.pth      | wan_s2v_14B.py; tokenizer google/umt5-xxl, t5 umt5_xxl (shared)|
| wav2vec2-large-xlsr-53-english          | wan_s2v_14B.py and wan/speech2video.py                         |
| num_train_timesteps 1000, fps 16        | shared_config.py                                               |
| infer_frames 80 (multiple of 4)         | generate.py `--infer_frames` default                           |
| param_dtype bfloat16                    | shared_config.py                                               |

The released folder's transformer is built by `WanModel_S2V.from_pretrained(checkpoint_dir)`, i.e. from the
diffusers-style config.json next to the shards; `from_diffusers_config` maps that file. Fields listed in the
class's `ignore_for_config` (patch_size, cross_attn_norm, qk_norm, text_dim, window_size) are not written to
config.json by diffusers, so they take the `__init__` defaults, exactly as from_pretrained does.

Key names and shapes: the module tree built from these values has exactly 1260 tensors whose "key:shape" md5
(DiffSynth-Studio's fingerprint of the released diffusion_pytorch_model*.safetensors, model_hash
966cffdcc52f9c46c391768b27637614 in its model_configs.py) matches; 16,295,755,609 parameters.

Disagreements with the brief: none on values. Notes: `num_audio_token` is not in the 14B config file (its value
4 comes from the class default / config.json); `WanS2V.generate` has its own defaults shift=5.0 and
guide_scale=5.0, but generate.py passes the config's 3 and 4.5.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ....errors import ConfigError

log = logging.getLogger(__name__)

OFFICIAL_CLASS_NAME = "WanModel_S2V"
S2V_14B_INJECT_LAYERS = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)


@dataclass(frozen=True)
class WanS2VTransformerConfig:
    """Architecture of WanModel_S2V; the defaults are the released 14B model."""

    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    cond_dim: int = 16
    audio_dim: int = 1024
    num_audio_token: int = 4
    audio_layers: int = 25  # wav2vec2-large hidden states (24 layers + feature projection); fixed in the code
    enable_adain: bool = True
    adain_mode: str = "attn_norm"
    audio_inject_layers: tuple[int, ...] = S2V_14B_INJECT_LAYERS
    zero_init: bool = True
    zero_timestep: bool = True
    enable_motioner: bool = False
    add_last_motion: bool = True
    enable_tsm: bool = False
    trainable_token_pos_emb: bool = False
    motion_token_num: int = 1024
    enable_framepack: bool = True
    framepack_drop_mode: str = "padd"
    model_type: str = "s2v"

    def __post_init__(self) -> None:
        if self.model_type != "s2v":
            raise ConfigError(f"model_type must be 's2v' for WanModel_S2V, got {self.model_type!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ConfigError(f"dim {self.dim} must split into {self.num_heads} heads of even size")
        if self.dim % 4:
            raise ConfigError(f"dim {self.dim} must be a multiple of 4 (audio encoder widths dim/4, dim/2)")
        if self.enable_motioner:
            # The released 14B model uses frame packing; the transformer motioner is not implemented here.
            raise ConfigError("enable_motioner=true (MotionerTransformers) is not supported; the released "
                              "Wan2.2-S2V-14B uses enable_framepack=true")
        if tuple(self.window_size) != (-1, -1):
            raise ConfigError(f"only global attention is supported, window_size={self.window_size}")
        if self.framepack_drop_mode not in ("drop", "padd"):
            raise ConfigError(f"framepack_drop_mode must be 'drop' or 'padd', got {self.framepack_drop_mode!r}")
        if len(self.patch_size) != 3:
            raise ConfigError(f"patch_size must have 3 entries, got {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class WanS2VTaskConfig:
    """The pipeline-level facts of a task (checkpoint file names, sampling defaults)."""

    name: str
    transformer: WanS2VTransformerConfig
    t5_model: str
    t5_checkpoint: str
    t5_tokenizer: str
    t5_dtype: str
    text_len: int
    param_dtype: str
    vae_checkpoint: str
    vae_stride: tuple[int, int, int]
    wav2vec: str
    num_train_timesteps: int
    sample_fps: int
    frame_num: int
    motion_frames: int
    drop_first_motion: bool
    sample_shift: float
    sample_steps: int
    sample_guide_scale: float
    sample_neg_prompt: str
    infer_frames: int
    supported_sizes: tuple[str, ...] = field(default=())
    transformer_config_file: str = "config.json"
    transformer_index_file: str = "diffusion_pytorch_model.safetensors.index.json"

    @property
    def lat_motion_frames(self) -> int:
        """Latent frames the VAE makes of the motion frames (wan/speech2video.py: (motion_frames + 3) // 4)."""
        return (self.motion_frames + 3) // 4


S2V_14B = WanS2VTaskConfig(
    name="s2v-14B",
    transformer=WanS2VTransformerConfig(),
    t5_model="umt5_xxl",
    t5_checkpoint="models_t5_umt5-xxl-enc-bf16.pth",
    t5_tokenizer="google/umt5-xxl",
    t5_dtype="bfloat16",
    text_len=512,
    param_dtype="bfloat16",
    vae_checkpoint="Wan2.1_VAE.pth",
    vae_stride=(4, 8, 8),
    wav2vec="wav2vec2-large-xlsr-53-english",
    num_train_timesteps=1000,
    sample_fps=16,
    frame_num=81,
    motion_frames=73,
    drop_first_motion=True,
    sample_shift=3.0,
    sample_steps=40,
    sample_guide_scale=4.5,
    sample_neg_prompt=(
        "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
        "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
        "三条腿，背景人很多，倒着走"
    ),
    infer_frames=80,
    supported_sizes=("720*1280", "1280*720", "480*832", "832*480", "1024*704", "704*1024", "704*1280", "1280*704"),
)

WAN_CONFIGS: dict[str, object] = {"s2v-14B": S2V_14B}  # wan/__init__.py adds animate-14B (import order)

# WanModel_S2V.__init__ defaults: what from_pretrained uses for a field config.json does not carry.
WANMODEL_S2V_INIT_DEFAULTS: dict[str, Any] = {
    "cond_dim": 0, "audio_dim": 5120, "num_audio_token": 4, "enable_adain": False, "adain_mode": "attn_norm",
    "audio_inject_layers": (0, 4, 8, 12, 16, 20, 24, 27), "zero_init": False, "zero_timestep": False,
    "enable_motioner": True, "add_last_motion": True, "enable_tsm": False, "trainable_token_pos_emb": False,
    "motion_token_num": 1024, "enable_framepack": False, "framepack_drop_mode": "drop", "model_type": "s2v",
    "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 16, "dim": 2048, "ffn_dim": 8192, "freq_dim": 256,
    "text_dim": 4096, "out_dim": 16, "num_heads": 16, "num_layers": 32, "window_size": (-1, -1), "qk_norm": True,
    "cross_attn_norm": True, "eps": 1e-6,
}
# WanModel_S2V.ignore_for_config: diffusers leaves these out of config.json.
IGNORED_FOR_CONFIG = ("patch_size", "cross_attn_norm", "qk_norm", "text_dim", "window_size")
_DIFFUSERS_META = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def _coerce(name: str, value: Any, target: Any) -> Any:
    if isinstance(target, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config.json field {name!r}: expected true/false, got {value!r}")
        return value
    if isinstance(target, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config.json field {name!r}: expected an integer, got {value!r}")
        return value
    if isinstance(target, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config.json field {name!r}: expected a number, got {value!r}")
        return float(value)
    if isinstance(target, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
            raise ConfigError(f"config.json field {name!r}: expected a list of integers, got {value!r}")
        return tuple(value)
    if isinstance(target, str):
        if not isinstance(value, str):
            raise ConfigError(f"config.json field {name!r}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config.json field {name!r}: unsupported value {value!r}")


def from_diffusers_config(raw: Mapping[str, Any]) -> WanS2VTransformerConfig:
    """Map the official diffusers-style config.json of WanModel_S2V onto our config.

    Missing fields take WanModel_S2V's __init__ defaults (as from_pretrained does); unknown fields are logged
    and ignored (as diffusers does); a wrong `_class_name` or a wrongly typed value is a ConfigError.
    """
    class_name = raw.get("_class_name")
    if class_name != OFFICIAL_CLASS_NAME:
        raise ConfigError(f"config.json describes {class_name!r}, expected {OFFICIAL_CLASS_NAME!r}")
    known = {f.name for f in fields(WanS2VTransformerConfig)}
    values: dict[str, Any] = {}
    for name, default in WANMODEL_S2V_INIT_DEFAULTS.items():
        values[name] = _coerce(name, raw[name], default) if name in raw else default
    unknown = sorted(k for k in raw if k not in known and k not in _DIFFUSERS_META)
    if unknown:
        log.warning("config.json: ignoring fields WanModel_S2V does not take: %s", unknown)
    return WanS2VTransformerConfig(**values)


def to_diffusers_config(config: WanS2VTransformerConfig, diffusers_version: str = "0.34.0") -> dict[str, Any]:
    """The config.json diffusers would write for WanModel_S2V(**config) (ignored fields left out).

    Raises ConfigError for a config that config.json cannot express (an ignored field off its default).
    """
    for name in IGNORED_FOR_CONFIG:
        value = getattr(config, name)
        default = WANMODEL_S2V_INIT_DEFAULTS[name]
        if (tuple(value) if isinstance(value, (list, tuple)) else value) != default:
            raise ConfigError(f"{name}={value!r} cannot be stored in an official config.json "
                              f"(diffusers ignores it; from_pretrained would use {default!r})")
    if config.audio_layers != 25:
        raise ConfigError("audio_layers is fixed to 25 in the official code; config.json cannot change it")
    out: dict[str, Any] = {"_class_name": OFFICIAL_CLASS_NAME, "_diffusers_version": diffusers_version}
    for name in WANMODEL_S2V_INIT_DEFAULTS:
        if name in IGNORED_FOR_CONFIG:
            continue
        value = getattr(config, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out
