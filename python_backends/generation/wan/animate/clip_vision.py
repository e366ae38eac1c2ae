"""The vision tower of Wan's CLIP (open-clip xlm-roberta-large ViT-H/14), rewritten, with a strict loader.

Wan-Animate (like Wan2.1 I2V) conditions on the reference image through `CLIPModel.visual`
(wan/modules/animate/clip.py of Wan-Video/Wan2.2): the image in [-1, 1] is resized to 224x224 (bicubic),
normalised with the OpenAI CLIP mean/std, and run through every transformer block but the last
(`use_31_block=True`); the 257 tokens (class token + 16x16 patches) of width 1280 are the output.

The released `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` is a bare state dict of the whole
XLMRobertaCLIP: `visual.*` (this module), `textual.*` (the XLM-RoBERTa text tower, unused by Animate) and
`log_scale`. Only `visual.*` is loaded, strictly (every key of the vision tower with its exact shape, nothing
else under `visual.`); the text tower is checked for being what it should be (only `textual.*` and `log_scale`
besides) and skipped. Module names follow the official VisionTransformer one to one: patch_embedding (no bias,
pre-norm model), cls_embedding, pos_embedding, pre_norm, transformer.N.{norm1, attn.to_qkv, attn.proj, norm2,
mlp.0, mlp.2}, post_norm, head.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.attention import attention
from ..common.checkpoint import CheckpointError, _check_keys
from ..common.transformer import linear

log = logging.getLogger(__name__)

CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TEXT_PREFIX = "textual."
_OTHER_KEYS = ("log_scale",)


@dataclass(frozen=True)
class ClipVisionConfig:
    """VisionTransformer arguments of clip_xlm_roberta_vit_h_14 (pool 'token', pre-norm, exact GELU)."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_ratio: int = 4
    num_heads: int = 16
    num_layers: int = 32
    out_dim: int = 1024
    norm_eps: float = 1e-5

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid**2 + 1


@dataclass(frozen=True)
class XLMRobertaTextConfig:
    """XLMRobertaWithHead arguments of clip_xlm_roberta_vit_h_14 (only its key layout matters here)."""

    vocab_size: int = 250002
    max_text_len: int = 514
    type_size: int = 1
    dim: int = 1024
    num_layers: int = 24
    out_dim: int = 1024


CLIP_VIT_H_14 = ClipVisionConfig()
XLM_ROBERTA_LARGE_TEXT = XLMRobertaTextConfig()


class ClipLayerNorm(nn.LayerNorm):
    """Official clip.LayerNorm: computed in float32, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        q, k, v = linear(self.to_qkv, x).view(b, s, 3, self.num_heads, c // self.num_heads).unbind(2)
        return linear(self.proj, attention(q, k, v).reshape(b, s, c))


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.norm1 = ClipLayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = ClipLayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + linear(self.mlp[2], F.gelu(linear(self.mlp[0], self.norm2(x))))


class ClipVisionTransformer(nn.Module):
    """Official VisionTransformer (pool_type 'token', pre_norm True, post_norm False)."""

    def __init__(self, config: ClipVisionConfig = CLIP_VIT_H_14) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=config.patch_size, stride=config.patch_size,
                                         bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, config.tokens, dim))
        self.pre_norm = ClipLayerNorm(dim, eps=config.norm_eps)
        self.transformer = nn.Sequential(*[AttentionBlock(dim, config.mlp_ratio, config.num_heads, config.norm_eps)
                                           for _ in range(config.num_layers)])
        self.post_norm = ClipLayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Parameter(torch.zeros(dim, config.out_dim))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 3, S, S] CLIP input (CLIPModel.visual: bicubic resize, mean/std)."""
        size = (self.config.image_size,) * 2
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
        x = x.mul(0.5).add(0.5)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, pixels: torch.Tensor, use_31_block: bool = True) -> torch.Tensor:
        """CLIP input [B, 3, S, S] -> tokens [B, grid^2 + 1, dim] after all blocks but the last (default)."""
        dtype = self.patch_embedding.weight.dtype
        x = F.conv2d(pixels.to(dtype), self.patch_embedding.weight, stride=self.config.patch_size)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_embedding.to(dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if x.shape[1] != self.pos_embedding.shape[1]:
            raise ValueError(f"{x.shape[1]} tokens but {self.pos_embedding.shape[1]} positions: feed "
                             f"{self.config.image_size}x{self.config.image_size} images (use preprocess)")
        x = self.pre_norm(x + self.pos_embedding.to(dtype))
        blocks = self.transformer[:-1] if use_31_block else self.transformer
        return blocks(x)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Reference images [B, 3, H, W] in [-1, 1] -> the tokens Wan-Animate's img_emb takes."""
        return self.forward(self.preprocess(images.to(self.patch_embedding.weight.device)))


def xlm_roberta_text_shapes(config: XLMRobertaTextConfig = XLM_ROBERTA_LARGE_TEXT) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the `textual.*` part of the official CLIP file (XLMRobertaWithHead), and `log_scale`."""
    d = config.dim
    mid = (config.dim + config.out_dim) // 2
    shapes: dict[str, tuple[int, ...]] = {
        "textual.token_embedding.weight": (config.vocab_size, d),
        "textual.type_embedding.weight": (config.type_size, d),
        "textual.pos_embedding.weight": (config.max_text_len, d),
        "textual.norm.weight": (d,),
        "textual.norm.bias": (d,),
        "textual.head.0.weight": (mid, d),
        "textual.head.2.weight": (config.out_dim, mid),
        "log_scale": (),
    }
    for i in range(config.num_layers):
        p = f"textual.blocks.{i}."
        for name in ("q", "k", "v", "o"):
            shapes[f"{p}attn.{name}.weight"] = (d, d)
            shapes[f"{p}attn.{name}.bias"] = (d,)
        for norm in ("norm1", "norm2"):
            shapes[f"{p}{norm}.weight"] = (d,)
            shapes[f"{p}{norm}.bias"] = (d,)
        shapes[f"{p}ffn.0.weight"] = (4 * d, d)
        shapes[f"{p}ffn.0.bias"] = (4 * d,)
        shapes[f"{p}ffn.2.weight"] = (d, 4 * d)
        shapes[f"{p}ffn.2.bias"] = (d,)
    return shapes


def meta_clip_vision(config: ClipVisionConfig = CLIP_VIT_H_14) -> ClipVisionTransformer:
    with torch.device("meta"):
        return ClipVisionTransformer(config)


def infer_clip_vision_config(state: Mapping[str, torch.Tensor], source: str) -> ClipVisionConfig:
    """The vision config a CLIP file was saved from, read off its shapes (heads: 80 channels each, as ViT-H/14).

    The official file gives exactly CLIP_VIT_H_14; smaller test files give their own sizes. Every other key is
    then checked against the module built from this config, so a damaged file still fails by name.
    """
    try:
        patch = state["visual.patch_embedding.weight"]
        pos = state["visual.pos_embedding"]
        head = state["visual.head"]
        mlp = state["visual.transformer.0.mlp.0.weight"]
    except KeyError as exc:
        raise CheckpointError(f"{source}: the CLIP vision tower key {exc.args[0]} is missing") from None
    dim, patch_size = patch.shape[0], patch.shape[-1]
    grid = math.isqrt(pos.shape[1] - 1)
    layers = len({k.split(".")[2] for k in state if k.startswith("visual.transformer.")})
    head_dim = CLIP_VIT_H_14.dim // CLIP_VIT_H_14.num_heads
    if dim % head_dim:
        raise CheckpointError(f"{source}: vision width {dim} is not a multiple of the ViT-H head size {head_dim}")
    return ClipVisionConfig(image_size=grid * patch_size, patch_size=patch_size, dim=dim,
                            mlp_ratio=max(1, mlp.shape[0] // dim), num_heads=dim // head_dim, num_layers=layers,
                            out_dim=head.shape[-1])


def split_clip_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The `visual.` tensors with the prefix removed; anything that is neither vision, text nor log_scale fails."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    stray = [k for k in state if not k.startswith(("visual.", _TEXT_PREFIX)) and k not in _OTHER_KEYS]
    if stray:
        raise CheckpointError(f"{source}: key(s) that are not part of Wan's CLIP: {', '.join(sorted(stray)[:5])}")
    if not any(k.startswith(_TEXT_PREFIX) for k in state):
        log.info("%s has no text tower (textual.*); only the vision tower is used anyway", source)
    return visual


def _read_pth(path: Path) -> Mapping[str, torch.Tensor]:
    """torch.load without unpickling code; memory-mapped when the file is in the zip format (2.4 GB officially)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        pass  # legacy (non-zip) serialisation cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path} is not a readable PyTorch state dict: {exc}") from None


def load_clip_vision(path: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                     config: ClipVisionConfig | None = None) -> ClipVisionTransformer:
    """Load the vision tower of the official CLIP .pth strictly (fp16 on GPU as the official CLIPModel, fp32 on CPU)."""
    path = Path(path)
    device = torch.device(device)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.float16)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: Wan-Animate needs {CLIP_FILE} in the checkpoint folder")
    state = _read_pth(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict")
    config = config or infer_clip_vision_config(state, str(path))
    model = meta_clip_vision(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    visual = split_clip_state(state, str(path))
    _check_keys({f"visual.{k}": s for k, s in expected.items()}, [f"visual.{k}" for k in visual], path)
    for key, tensor in visual.items():
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"{path}: visual.{key} has shape {list(tensor.shape)}, the model needs "
                                  f"{list(expected[key])}")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in visual.items()}, strict=True,
                          assign=True)
    log.info("loaded CLIP vision tower (%d layers, width %d) from %s, %s on %s", config.num_layers, config.dim,
             path, dtype, device)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def write_clip_checkpoint(path: Path | str, vision: ClipVisionTransformer, text: XLMRobertaTextConfig,
                          dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Write a CLIP .pth in the official layout: the given vision tower plus a random text tower of `text`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    state = {f"visual.{k}": v.detach().to("cpu", dtype) for k, v in vision.state_dict().items()}
    for key, shape in xlm_roberta_text_shapes(text).items():
        state[key] = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
    torch.save(state, path)
    return path
