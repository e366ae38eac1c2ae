"""WanAnimateModel (wan/modules/animate/model_animate.py of Wan-Video/Wan2.2), rewritten on the shared Wan blocks.

What Animate adds to the Wan I2V DiT, with the official module names kept so the released shards load strictly:

* 36 input channels: noise (16) + mask (4) + reference/temporal-guidance latents (16). Latent frame 0 is the
  reference image; frames 1.. are the clip (the first `refert_num` of them optionally carry the previous clip's
  last frames, marked by the mask).
* `pose_patch_embedding`: a patch convolution of the pose-video latents, added to the tokens of frames 1...
* `img_emb` (MLPProj): CLIP ViT-H/14 penultimate-layer tokens of the reference image -> extra cross-attention
  context; every block's cross-attention has `k_img`, `v_img`, `norm_k_img` for it (the I2V decoupled
  cross-attention: text and image attention outputs are summed before `o`).
* `motion_encoder` + `face_encoder` + `face_adapter` (animate_face.py): the driving video's face crops become
  per-latent-frame face tokens that the video tokens attend to after every fifth block.

The official forward concatenates the CLIP tokens in front of the text tokens and splits them again at 257;
here they travel separately (`CrossContext`), which computes the same thing and allows other CLIP grids.
The official model pads tokens to `seq_len` and masks them; here sequences are never padded (one clip per item,
all items the same size), which is what the single-GPU official run computes too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.attention import attention
from ..common.transformer import (
    Head,
    RMSNorm,
    WanAttentionBlock,
    WanCrossAttention,
    conv_in_weight_dtype,
    embed_text,
    linear,
    rope_cos_sin,
    time_embedding_fp32,
    unpatchify,
)
from ..s2v.model import grid_positions
from .configs import FACE_ADAPTER_EVERY, POSE_LATENT_CHANNELS, WanAnimateTransformerConfig
from .face import MOTION_ENCODE_BATCH, Blur, FaceAdapter, FaceEncoder, MotionEncoder, make_blur_kernel

log = logging.getLogger(__name__)


class CrossContext(NamedTuple):
    """What each block's cross-attention reads: embedded text tokens and (optionally) embedded CLIP tokens."""

    text: torch.Tensor  # [B, text_len, dim]
    image: torch.Tensor | None  # [B, N_img, dim] (257 for a 224x224 ViT-H/14 image) or None


class WanAnimateCrossAttention(WanCrossAttention):
    """Text cross-attention plus a parallel attention over the CLIP image tokens (official use_img_emb)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6,
                 use_img_emb: bool = True) -> None:
        super().__init__(dim, num_heads, qk_norm, eps)
        self.use_img_emb = use_img_emb
        if use_img_emb:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: CrossContext) -> torch.Tensor:  # type: ignore[override]
        b = x.shape[0]
        n, d = self.num_heads, self.head_dim
        q = self.norm_q(linear(self.q, x)).view(b, -1, n, d)
        k = self.norm_k(linear(self.k, context.text)).view(b, -1, n, d)
        v = linear(self.v, context.text).view(b, -1, n, d)
        out = attention(q, k, v).flatten(2)
        if self.use_img_emb:
            if context.image is None:
                raise ValueError("this model attends to CLIP image tokens; pass clip_features")
            k_img = self.norm_k_img(linear(self.k_img, context.image)).view(b, -1, n, d)
            v_img = linear(self.v_img, context.image).view(b, -1, n, d)
            out = out + attention(q, k_img, v_img).flatten(2)
        return linear(self.o, out)


class WanAnimateAttentionBlock(WanAttentionBlock):
    """The shared DiT block with the image-aware cross-attention (same parameter names as the official)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True, cross_attn_norm: bool = True,
                 eps: float = 1e-6, use_img_emb: bool = True) -> None:
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.cross_attn = WanAnimateCrossAttention(dim, num_heads, qk_norm, eps, use_img_emb)


class MLPProj(nn.Module):
    """CLIP features -> context tokens: LayerNorm, Linear, GELU (exact), Linear, LayerNorm (official MLPProj)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm0, fc1, _, fc2, norm4 = self.proj
        x = F.layer_norm(x.float(), norm0.normalized_shape, norm0.weight.float(), norm0.bias.float(), norm0.eps)
        x = linear(fc2, F.gelu(linear(fc1, x)))
        return F.layer_norm(x.float(), norm4.normalized_shape, norm4.weight.float(), norm4.bias.float(),
                            norm4.eps).to(fc2.weight.dtype)


class WanAnimateTransformer(nn.Module):
    """The Animate diffusion transformer; parameter names and shapes equal the official WanAnimateModel's."""

    def __init__(self, config: WanAnimateTransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.pose_patch_embedding = nn.Conv3d(POSE_LATENT_CHANNELS, dim, kernel_size=config.patch_size,
                                              stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            WanAnimateAttentionBlock(dim, config.ffn_dim, config.num_heads, config.qk_norm, config.cross_attn_norm,
                                     config.eps, config.use_img_emb)
            for _ in range(config.num_layers))
        self.head = Head(dim, config.out_dim, config.patch_size, config.eps)
        if config.use_img_emb:
            self.img_emb = MLPProj(config.image_dim, dim)
        self.motion_encoder = MotionEncoder(config.motion_channels, config.motion_encoder_dim, config.motion_dim)
        self.face_adapter = FaceAdapter(dim, config.num_heads, config.num_face_blocks)
        self.face_encoder = FaceEncoder(config.motion_encoder_dim, dim, config.face_heads, config.face_hidden_dim)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- conditioning that does not change over the denoising steps ---------------------------------------------

    def encode_face(self, face_pixels: torch.Tensor) -> torch.Tensor:
        """Driving face crops [B, 3, T, S, S] in [-1, 1] -> face tokens [B, T' + 1, heads + 1, dim].

        T' = latent frames of the clip ((T - 1) // 4 + 1); a zero frame is prepended for the reference frame,
        exactly as the official after_patch_embedding does. Crops are encoded 8 at a time like the official.
        """
        if face_pixels.dim() != 5 or face_pixels.shape[1] != 3:
            raise ValueError(f"face_pixels must be [B, 3, T, H, W], got {tuple(face_pixels.shape)}")
        b, _, t = face_pixels.shape[:3]
        device = self.patch_embedding.weight.device
        flat = face_pixels.to(device).transpose(1, 2).flatten(0, 1)  # (b t) c h w
        motion = torch.cat([self.motion_encoder.get_motion(flat[i:i + MOTION_ENCODE_BATCH])
                            for i in range(0, flat.shape[0], MOTION_ENCODE_BATCH)])
        tokens = self.face_encoder(motion.reshape(b, t, -1))
        return torch.cat([tokens.new_zeros(b, 1, *tokens.shape[2:]), tokens], dim=1)

    def encode_image(self, clip_features: torch.Tensor) -> torch.Tensor:
        """CLIP penultimate tokens [B, N, image_dim] -> image context [B, N, dim]."""
        if not self.config.use_img_emb:
            raise ValueError("this model has no img_emb (use_img_emb=false)")
        device = self.patch_embedding.weight.device
        if clip_features.dim() != 3 or clip_features.shape[-1] != self.config.image_dim:
            raise ValueError(f"clip_features must be [B, N, {self.config.image_dim}], got "
                             f"{tuple(clip_features.shape)}")
        return self.img_emb(clip_features.to(device))

    def _text(self, context: torch.Tensor | Sequence[torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """Pad each prompt's T5 features to text_len with zeros (official) and embed them."""
        cfg = self.config
        items = list(context.unbind(0)) if isinstance(context, torch.Tensor) and context.dim() == 3 else list(context)
        if len(items) != batch:
            raise ValueError(f"got {len(items)} text contexts for a batch of {batch}")
        padded = []
        for item in items:
            if item.dim() != 2 or item.shape[1] != cfg.text_dim or item.shape[0] > cfg.text_len:
                raise ValueError(f"each text context must be [L <= {cfg.text_len}, {cfg.text_dim}], "
                                 f"got {tuple(item.shape)}")
            padded.append(F.pad(item.to(device), (0, 0, 0, cfg.text_len - item.shape[0])))
        return embed_text(self.text_embedding, torch.stack(padded))

    def _rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid, str(device))
        cached = self._rope_cache.get(key)
        if cached is None:
            cos, sin = rope_cos_sin(grid_positions((0, 0, 0), grid, grid), self.config.head_dim)
            cached = (cos.to(device), sin.to(device))
            if len(self._rope_cache) >= 8:
                self._rope_cache.clear()
            self._rope_cache[key] = cached
        return cached

    # -- forward --------------------------------------------------------------------------------------------------

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | Sequence[torch.Tensor],
        y: torch.Tensor,
        pose_latents: torch.Tensor,
        clip_features: torch.Tensor | None = None,
        face_pixels: torch.Tensor | None = None,
        face_tokens: torch.Tensor | None = None,
        image_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow for a batch; every input is stacked on dim 0 (one row per clip / CFG branch).

        latents [B, out_dim, F, H, W] (F = 1 reference + clip latent frames); timestep [B] (or one value);
        context [B, L, text_dim] or B tensors [L_i, text_dim]; y [B, in_dim - out_dim, F, H, W] (mask + reference
        latents); pose_latents [B, 16, F - 1, H, W]; clip_features [B, N, image_dim] (or image_context, already
        embedded by `encode_image`); face_pixels [B, 3, T, 512, 512] (or face_tokens from `encode_face`, to reuse
        them over the steps). Returns [B, out_dim, F, H, W] float32.
        """
        cfg = self.config
        device = self.patch_embedding.weight.device
        b = latents.shape[0]
        if latents.dim() != 5 or y.shape[0] != b or y.shape[2:] != latents.shape[2:]:
            raise ValueError(f"latents {tuple(latents.shape)} and y {tuple(y.shape)} must be [B, C, F, H, W] with "
                             "equal B, F, H, W")
        if latents.shape[1] + y.shape[1] != cfg.in_dim:
            raise ValueError(f"latents ({latents.shape[1]}) + y ({y.shape[1]}) channels must be {cfg.in_dim}")
        x = conv_in_weight_dtype(self.patch_embedding, torch.cat([latents, y.to(latents.dtype)], dim=1).to(device))
        pose = conv_in_weight_dtype(self.pose_patch_embedding, pose_latents.to(device))
        if pose.shape[0] != b or pose.shape[2] != x.shape[2] - 1 or pose.shape[3:] != x.shape[3:]:
            raise ValueError(f"pose_latents {tuple(pose_latents.shape)} must cover the {latents.shape[2] - 1} "
                             f"clip frames of latents {tuple(latents.shape)} (all but the reference frame)")
        x = torch.cat([x[:, :, :1], x[:, :, 1:] + pose], dim=2)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)

        if face_tokens is None:
            if face_pixels is None:
                raise ValueError("pass face_pixels (driving face crops) or face_tokens")
            face_tokens = self.encode_face(face_pixels)
        face_tokens = face_tokens.to(device)
        if face_tokens.shape[0] != b or face_tokens.shape[1] != grid[0]:
            raise ValueError(f"face crops give {face_tokens.shape[1] - 1} latent frames but the latents have "
                             f"{grid[0] - 1} clip frames; pass 4 x (latent frames - 2) + 1 face crops")

        if cfg.use_img_emb and image_context is None:
            if clip_features is None:
                raise ValueError("pass clip_features (CLIP tokens of the reference image) or image_context")
            image_context = self.encode_image(clip_features)
        ctx = CrossContext(self._text(context, b, device),
                           None if image_context is None else image_context.to(device))

        t = timestep.to(device=device, dtype=torch.float64).reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t
        e, e0 = time_embedding_fp32(self.time_embedding, self.time_projection, cfg.freq_dim, t)
        e0 = e0.unsqueeze(2)
        bounds = (0, x.shape[1])
        cos, sin = self._rope(grid, device)
        for index, block in enumerate(self.blocks):
            x = block(x, e0, bounds, cos, sin, ctx)
            if index % FACE_ADAPTER_EVERY == 0:
                x = x + self.face_adapter.fuser_blocks[index // FACE_ADAPTER_EVERY](x, face_tokens)
        out = self.head(x, e)
        return unpatchify(out, grid, cfg.patch_size, cfg.out_dim)


def cfg_forward(model: WanAnimateTransformer, *, latents: torch.Tensor, timestep: torch.Tensor,
                context: Sequence[torch.Tensor], context_null: Sequence[torch.Tensor], y: torch.Tensor,
                pose_latents: torch.Tensor, face_pixels: torch.Tensor, clip_features: torch.Tensor | None = None,
                image_context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both classifier-free-guidance branches in one forward, stacked on the batch dim.

    As in WanAnimate.generate (used only when guide_scale > 1), the unconditional branch gets the negative prompt
    and all -1 face crops (`face_pixel_values * 0 - 1`) and shares everything else. Returns (cond, uncond).
    """
    b = latents.shape[0]

    def twice(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else torch.cat([tensor, tensor])

    t = timestep.reshape(-1)
    t = t.expand(b) if t.numel() == 1 else t
    faces = torch.cat([face_pixels, torch.full_like(face_pixels, -1.0)])
    out = model(twice(latents), twice(t), list(context) + list(context_null), twice(y), twice(pose_latents),
                clip_features=twice(clip_features), face_pixels=faces, image_context=twice(image_context))
    return out[:b], out[b:]


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on accelerators (the official param_dtype), float32 on CPU."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def meta_animate_model(config: WanAnimateTransformerConfig,
                       dtype: torch.dtype = torch.float32) -> WanAnimateTransformer:
    """The module tree with no storage (shapes only): for counting, key checks and fast materialisation."""
    with torch.device("meta"):
        return WanAnimateTransformer(config).to(dtype)


def count_animate_parameters(config: WanAnimateTransformerConfig) -> int:
    return sum(p.numel() for p in meta_animate_model(config).parameters())


@torch.no_grad()
def reset_blur_kernels_(model: nn.Module) -> nn.Module:
    """Refill every blur-kernel buffer with its fixed value (they are constants the checkpoint also stores)."""
    for module in model.modules():
        if isinstance(module, Blur):
            module.kernel.copy_(make_blur_kernel().to(module.kernel.dtype))
    return model


@torch.no_grad()
def init_random_animate_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter in place with non-trivial random values (benchmarks and tiny test checkpoints).

    Matrices and convolutions get N(0, 1/fan_in) so activations stay O(1) at any width, except the equalised
    layers of the motion encoder, which scale by 1/sqrt(fan_in) themselves and get N(0, 1) like the official
    init; norms scale ~1; modulation follows the official randn/sqrt(dim); blur kernels get their fixed value.
    """
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        gen = generators.get(param.device)
        if gen is None:
            gen = generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        if name.endswith("modulation"):
            param.normal_(0.0, param.shape[-1] ** -0.5, generator=gen)
        elif name.startswith("motion_encoder.") and param.dim() >= 2 and not name.endswith("direction.weight"):
            param.normal_(0.0, 1.0, generator=gen)
        elif name.endswith("padding_tokens") or name.endswith("direction.weight"):
            param.normal_(0.0, 1.0, generator=gen)
        elif param.dim() >= 2:
            param.normal_(0.0, param[0].numel() ** -0.5, generator=gen)
        elif "norm" in name and name.endswith("weight"):
            param.normal_(1.0, 0.1, generator=gen)
        else:
            param.normal_(0.0, 0.02, generator=gen)
    return reset_blur_kernels_(model)


def build_animate_model(config: WanAnimateTransformerConfig | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, seed: int = 0) -> WanAnimateTransformer:
    """A randomly initialised model at any size (real 14B size for benchmarks), allocated once on `device`."""
    config = config or WanAnimateTransformerConfig()
    dtype = dtype or default_dtype(device)
    model = meta_animate_model(config, dtype).to_empty(device=device)
    init_random_animate_weights_(model, seed)
    return model.eval().requires_grad_(False)

