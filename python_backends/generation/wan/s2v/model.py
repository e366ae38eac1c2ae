"""WanModel_S2V (wan/modules/s2v/ of Wan-Video/Wan2.2), rewritten on the shared Wan blocks.

What S2V adds to the Wan DiT, with the official module names kept so the released shards load strictly:

* `cond_encoder`: a patch convolution of the pose/condition latents, added to the noisy-latent tokens.
* `casual_audio_encoder` (sic): a learned softmax-free weighting of the 25 wav2vec2 hidden states followed by
  causal 1-D convolutions (stride 4 in total) -> per latent frame, `num_audio_token` local tokens plus a
  learned padding token, and one global vector (AdaIN input).
* `audio_injector`: after selected blocks, each latent frame's tokens cross-attend to that frame's audio
  tokens (after an audio-conditioned AdaLayerNorm) and the result is added back.
* reference latents: patch-embedded and appended after the video tokens at rotary frame position 30.
* `frame_packer`: the previous clip's motion latents compressed at three rates (1, 2, 16 latent frames with
  1x, 2x, 4x patches) and appended at negative rotary frame positions.
* `trainable_cond_mask`: a 3-row embedding marking noisy (0), reference (1) and motion (2) tokens.
* zero timestep: reference and motion tokens are modulated with the embedding of t = 0.

Inputs follow wan/speech2video.py: `audio` is [B, 25, audio_dim, infer_frames] wav2vec2 features at the video
frame rate; the model prepends `motion_frames[0]` copies of the first frame and drops the first
`motion_frames[1]` encoded frames, so `infer_frames` must be 4 x latent frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.attention import attention
from ..common.configs import WanS2VTransformerConfig
from ..common.transformer import (
    AttentionFn,
    FP32LayerNorm,
    Head,
    WanAttentionBlock,
    WanCrossAttention,
    conv_in_weight_dtype,
    embed_text,
    linear,
    rope_cos_sin,
    time_embedding_fp32,
    unpatchify,
)

log = logging.getLogger(__name__)

# wan/speech2video.py passes motion_frames=[73, (73 + 3) // 4] for the 14B model.
DEFAULT_MOTION_FRAMES = (73, 19)
REF_FRAME_POSITION = 30  # rotary frame index given to the reference image (official ref_grid_sizes)
ZIP_FRAME_BUCKETS = (1, 2, 16)  # FramePackMotioner: latest 1 frame at 1x, next 2 at 2x, oldest 16 at 4x
MOTION_LATENT_CHANNELS = 16  # FramePackMotioner's convolutions take 16 channels whatever in_dim is


def grid_positions(start: Sequence[int], end: Sequence[int], extent: Sequence[int]) -> torch.Tensor:
    """Integer rotary positions [n, 3] of one token grid, as `rope_precompute` samples them.

    The grid spans start..end (exclusive) token indices per axis and is spread over `extent` positions by
    np.linspace truncated to integers; a negative start frame means positions counted backwards (the official
    code conjugates the frame factor, i.e. uses the negative angle).
    """
    f_o, h_o, w_o = (int(v) for v in start)
    f, h, w = (int(v) for v in end)
    t_f, t_h, t_w = (int(v) for v in extent)
    seq_f, seq_h, seq_w = f - f_o, h - h_o, w - w_o
    if seq_f * seq_h * seq_w <= 0:
        return torch.zeros(0, 3, dtype=torch.long)
    if t_f <= 0:
        raise ValueError("trainable token positions (negative extent) are not supported")
    if f_o >= 0:
        frames = np.linspace(f_o, t_f + f_o - 1, seq_f).astype(int)
    else:
        frames = -np.linspace(-f_o, -t_f - f_o + 1, seq_f).astype(int)
    rows = np.linspace(h_o, t_h + h_o - 1, seq_h).astype(int)
    cols = np.linspace(w_o, t_w + w_o - 1, seq_w).astype(int)
    grid = np.stack(np.meshgrid(frames, rows, cols, indexing="ij"), axis=-1).reshape(-1, 3)
    return torch.from_numpy(grid.astype(np.int64))


def ref_positions(ref_hw: Sequence[int], frame: int = REF_FRAME_POSITION) -> torch.Tensor:
    """Rotary positions [rows * cols, 3] of the reference image's tokens: one frame at `frame` (official 30)."""
    return grid_positions((frame, 0, 0), (frame + 1, *ref_hw), (1, *ref_hw))


def framepack_grids(lat_h: int, lat_w: int, add_last_motion: int, drop_mode: str) -> list[tuple]:
    """(start, end, extent) of the packed motion grids present, in token order (1x, 2x, 4x)."""
    grids = []
    for level, frames in enumerate(ZIP_FRAME_BUCKETS):
        if drop_mode == "drop" and ((level == 0 and add_last_motion < 2) or (level == 1 and add_last_motion < 1)):
            continue
        start = -sum(ZIP_FRAME_BUCKETS[: level + 1])
        end = start + frames // (2**level)
        stride = 2 ** (level + 1)
        grids.append(((start, 0, 0), (end, lat_h // stride, lat_w // stride), (frames, lat_h // 2, lat_w // 2)))
    return grids


class S2VTokens(NamedTuple):
    """The transformer's input sequence and what every block needs besides it (see prepare_tokens)."""

    x: torch.Tensor  # [B, seq, dim]: video tokens, then reference, then motion tokens
    e: torch.Tensor  # [B, dim] float32: time embedding for the head
    e0: torch.Tensor  # [B, 6, G, dim] float32: block modulation, slot g for token range g of `bounds`
    bounds: tuple[int, ...]  # token range offsets (0, n_video, seq) or (0, seq)
    cos: torch.Tensor  # [seq, head_dim // 2] rotary tables, one row per token (global positions)
    sin: torch.Tensor
    # [B, text_len, dim] embedded prompt, or per layer its cross-attention keys and values (WanCrossAttention)
    context: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]]
    n_video: int  # tokens of the noisy latents (the ones the head predicts)
    grid: tuple[int, int, int]  # token grid of the noisy latents (frames, rows, cols)
    audio_local: torch.Tensor  # [B, frames, num_audio_token + 1, dim]
    audio_global: torch.Tensor | None  # [B, frames, 1, dim] (AdaIN input) or None


def frame_spans(start: int, end: int, per_frame: int) -> list[tuple[int, int]]:
    """Split token range start..end of the video tokens into a cut first frame, whole frames, a cut last frame.

    Empty parts are left out; a range within one frame is one span.
    """
    if end <= start:
        return []
    first_whole = -(-start // per_frame) * per_frame
    last_whole = end // per_frame * per_frame
    if first_whole >= last_whole:  # no whole frame inside: one or two cut frames
        cut = first_whole if start < first_whole < end else None
        return [(start, end)] if cut is None else [(start, cut), (cut, end)]
    spans = [(start, first_whole)] if start < first_whole else []
    spans.append((first_whole, last_whole))
    if last_whole < end:
        spans.append((last_whole, end))
    return spans


class CausalConv1d(nn.Module):
    """Conv1d with (kernel - 1) replicate padding on the left only, computed in the input's dtype."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.pad = kernel_size - 1
        self.conv = nn.Conv1d(chan_in, chan_out, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad, 0), mode="replicate")
        return F.conv1d(x, self.conv.weight.to(x.dtype), self.conv.bias.to(x.dtype), stride=self.conv.stride)


class MotionEncoderTC(nn.Module):
    """Official MotionEncoder_tc: [B, T, C_audio] -> local [B, T/4, n+1, dim] (+ global [B, T/4, 1, dim])."""

    def __init__(self, in_dim: int, hidden_dim: int, num_heads: int, need_global: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.need_global = need_global
        self.conv1_local = CausalConv1d(in_dim, hidden_dim // 4 * num_heads, 3, stride=1)
        if need_global:
            self.conv1_global = CausalConv1d(in_dim, hidden_dim // 4, 3, stride=1)
        self.conv2 = CausalConv1d(hidden_dim // 4, hidden_dim // 2, 3, stride=2)
        self.conv3 = CausalConv1d(hidden_dim // 2, hidden_dim, 3, stride=2)
        if need_global:
            self.final_linear = nn.Linear(hidden_dim, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim // 4, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(hidden_dim // 2, elementwise_affine=False, eps=1e-6)
        self.norm3 = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, hidden_dim))

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        """norm1/SiLU, conv2, norm2/SiLU, conv3, norm3/SiLU on [N, C, T] -> [N, T/4, hidden]."""
        x = F.silu(self.norm1(x.transpose(1, 2))).transpose(1, 2)
        x = F.silu(self.norm2(self.conv2(x).transpose(1, 2))).transpose(1, 2)
        return F.silu(self.norm3(self.conv3(x).transpose(1, 2)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = x.shape[0]
        x = x.transpose(1, 2)  # b c t
        local = self.conv1_local(x)  # b (n c) t
        t = local.shape[-1]
        local = local.reshape(b, self.num_heads, -1, t).flatten(0, 1)  # (b n) c t
        local = self._tail(local)  # (b n) t' c
        local = local.reshape(b, self.num_heads, *local.shape[1:]).transpose(1, 2)  # b t' n c
        padding = self.padding_tokens.to(local.dtype).expand(b, local.shape[1], 1, -1)
        local = torch.cat([local, padding], dim=2)
        if not self.need_global:
            return local, None
        glob = self._tail(self.conv1_global(x))  # b t' c
        glob = F.linear(glob, self.final_linear.weight.to(glob.dtype), self.final_linear.bias.to(glob.dtype))
        return local, glob.unsqueeze(2)


class CausalAudioEncoder(nn.Module):
    """Learned average of the wav2vec2 layers, then MotionEncoderTC; computed in float32 like the official."""

    def __init__(self, dim: int, num_layers: int, out_dim: int, num_token: int, need_global: bool) -> None:
        super().__init__()
        self.encoder = MotionEncoderTC(dim, out_dim, num_token, need_global)
        self.weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))  # official init

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """features [B, layers, C, T] -> (local [B, T', n+1, dim], global [B, T', 1, dim] or None)."""
        weights = F.silu(self.weights.float())
        weighted = (features.float() * weights / weights.sum(dim=1, keepdim=True)).sum(dim=1)  # b c t
        return self.encoder(weighted.transpose(1, 2))


class AdaLayerNorm(nn.Module):
    """diffusers AdaLayerNorm(embedding_dim, output_dim=2*dim, chunk_dim=1): shift, scale from SiLU(temb)."""

    def __init__(self, embedding_dim: int, output_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_dim, output_dim)
        self.norm = FP32LayerNorm(output_dim // 2, eps)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = linear(self.linear, F.silu(temb)).chunk(2, dim=1)
        return self.norm(x).float() * (1 + scale[:, None, :]) + shift[:, None, :]


def injected_block_ids(num_layers: int, inject_layers: Sequence[int]) -> tuple[dict[int, int], int]:
    """(block index -> injector index, number of injectors), with the official substring matching.

    AudioInjector_WAN counts one injector per (block, layer id) whose module name contains
    'transformer_blocks.{id}', so e.g. id 3 in a 40-layer model would also count blocks 30-39 while only
    block 3 gets injected (the mapping keeps the last count). Reproduced exactly because it decides how many
    injectors, hence checkpoint keys, exist.
    """
    ids: dict[int, int] = {}
    count = 0
    for block in range(num_layers):
        name = f"root.transformer_blocks.{block}"
        for layer in inject_layers:
            if f"transformer_blocks.{layer}" in name:
                ids[layer] = count
                count += 1
    return ids, count


class AudioInjector(nn.Module):
    def __init__(self, num_layers: int, dim: int, num_heads: int, inject_layers: Sequence[int],
                 enable_adain: bool, need_adain_out: bool) -> None:
        super().__init__()
        self.injected_block_id, count = injected_block_ids(num_layers, inject_layers)
        self.injector = nn.ModuleList(WanCrossAttention(dim, num_heads, qk_norm=True) for _ in range(count))
        self.injector_pre_norm_feat = nn.ModuleList(FP32LayerNorm(dim, 1e-6) for _ in range(count))
        self.injector_pre_norm_vec = nn.ModuleList(FP32LayerNorm(dim, 1e-6) for _ in range(count))
        if enable_adain:
            self.injector_adain_layers = nn.ModuleList(AdaLayerNorm(dim, dim * 2) for _ in range(count))
            if need_adain_out:
                # Present in the official model (and its checkpoints) but never used by its forward.
                self.injector_adain_output_layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(count))


class FramePackMotioner(nn.Module):
    """Packs the last 19 motion latent frames into 1x / 2x / 4x patch tokens (official FramePackMotioner)."""

    def __init__(self, inner_dim: int, drop_mode: str = "drop") -> None:
        super().__init__()
        c = MOTION_LATENT_CHANNELS
        self.proj = nn.Conv3d(c, inner_dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(c, inner_dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(c, inner_dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))
        self.drop_mode = drop_mode

    def forward(self, motion: torch.Tensor, add_last_motion: int) -> torch.Tensor:
        """motion [B, 16, T, H, W] -> tokens [B, N, dim] in the weights' dtype."""
        b, c, t, lat_h, lat_w = motion.shape
        if c != MOTION_LATENT_CHANNELS:
            raise ValueError(f"motion latents must have {MOTION_LATENT_CHANNELS} channels, got {c}")
        total = sum(ZIP_FRAME_BUCKETS)
        packed = motion.new_zeros(b, c, total, lat_h, lat_w)
        overlap = min(total, t)
        if overlap > 0:
            packed[:, :, -overlap:] = motion[:, :, -overlap:]
        if add_last_motion < 2 and self.drop_mode != "drop":
            zero_end = sum(ZIP_FRAME_BUCKETS[: len(ZIP_FRAME_BUCKETS) - add_last_motion - 1])
            packed[:, :, -zero_end:] = 0
        far, mid, near = packed.split(list(ZIP_FRAME_BUCKETS)[::-1], dim=2)
        tokens = [conv_in_weight_dtype(conv, part).flatten(2).transpose(1, 2)
                  for conv, part in ((self.proj, near), (self.proj_2x, mid), (self.proj_4x, far))]
        if add_last_motion < 2 and self.drop_mode == "drop":
            tokens[0] = tokens[0][:, :0]
            if add_last_motion < 1:
                tokens[1] = tokens[1][:, :0]
        return torch.cat(tokens, dim=1)


class WanS2VTransformer(nn.Module):
    """The S2V diffusion transformer; parameter names and shapes equal the official WanModel_S2V's."""

    def __init__(self, config: WanS2VTransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            WanAttentionBlock(dim, config.ffn_dim, config.num_heads, config.qk_norm, config.cross_attn_norm,
                              config.eps)
            for _ in range(config.num_layers))
        self.head = Head(dim, config.out_dim, config.patch_size, config.eps)
        if config.cond_dim > 0:
            self.cond_encoder = nn.Conv3d(config.cond_dim, dim, kernel_size=config.patch_size,
                                          stride=config.patch_size)
        self.casual_audio_encoder = CausalAudioEncoder(config.audio_dim, config.audio_layers, dim,
                                                       config.num_audio_token, config.enable_adain)
        self.audio_injector = AudioInjector(config.num_layers, dim, config.num_heads, config.audio_inject_layers,
                                            config.enable_adain, need_adain_out=config.adain_mode != "attn_norm")
        # zeros as the official zero_init does (also keeps meta construction free of normal_ decompositions)
        self.trainable_cond_mask = nn.Embedding(3, dim, _weight=torch.zeros(3, dim))
        if config.enable_framepack:
            self.frame_packer = FramePackMotioner(dim, config.framepack_drop_mode)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # the blocks' self-attention (attention.attention_function: SDPA or the 8-bit kernel); not a weight
        self.self_attention: AttentionFn = attention

    # -- token layout ---------------------------------------------------------------------------------------

    def _motion_tokens(self, motion: torch.Tensor, add_last_motion: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Motion tokens [B, N, dim] and their rotary positions [N, 3] (frame packing or plain patches)."""
        cfg = self.config
        if cfg.enable_framepack:
            tokens = self.frame_packer(motion, add_last_motion)
            grids = framepack_grids(motion.shape[3], motion.shape[4], add_last_motion, cfg.framepack_drop_mode)
        else:
            if motion.shape[2] == 0:
                return motion.new_zeros(motion.shape[0], 0, cfg.dim), torch.zeros(0, 3, dtype=torch.long)
            emb = conv_in_weight_dtype(self.patch_embedding, motion)
            t, h, w = emb.shape[2:]
            tokens = emb.flatten(2).transpose(1, 2)
            grids = [((-t, 0, 0), (0, h, w), (t, h, w))]
        positions = torch.cat([torch.zeros(0, 3, dtype=torch.long)] + [grid_positions(*g) for g in grids])
        if positions.shape[0] != tokens.shape[1]:
            raise ValueError(f"motion latents of spatial size {tuple(motion.shape[3:])} give {tokens.shape[1]} "
                             f"tokens but {positions.shape[0]} rotary positions; use sizes divisible by 8")
        return tokens, positions

    def _rope(self, key: tuple, positions: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._rope_cache.get(key)
        if cached is None:
            cos, sin = rope_cos_sin(positions, self.config.head_dim)
            cached = (cos.to(device), sin.to(device))
            if len(self._rope_cache) >= 8:
                self._rope_cache.clear()
            self._rope_cache[key] = cached
        return cached

    def _context(self, context: torch.Tensor | Sequence[torch.Tensor], batch: int,
                 device: torch.device) -> torch.Tensor:
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

    def _inject_audio(self, block: int, x: torch.Tensor, tokens: S2VTokens, offset: int = 0) -> torch.Tensor:
        """Add the audio cross-attention of `block` to the video tokens among x (in place).

        x holds tokens offset .. offset + L of the full sequence (all of it, offset 0, unless the sequence is
        split across ranks). Every video token attends only to its own latent frame's audio tokens, so a slice
        is computed on its own: whole frames in one batch as the official code does, a frame cut by the slice
        edge as a batch of one.
        """
        injector = self.audio_injector
        idx = injector.injected_block_id[block]
        b, length, dim = x.shape
        audio, audio_global = tokens.audio_local, tokens.audio_global
        per_frame = tokens.n_video // audio.shape[1]
        for start, end in frame_spans(offset, min(offset + length, tokens.n_video), per_frame):
            f0, f1 = start // per_frame, (end - 1) // per_frame + 1
            frames = f1 - f0
            hidden = x[:, start - offset : end - offset].reshape(b * frames, (end - start) // frames, dim)
            if self.config.enable_adain and self.config.adain_mode == "attn_norm":
                temb = audio_global[:, f0:f1].reshape(b * frames, -1)
                hidden = injector.injector_adain_layers[idx](hidden, temb=temb)
            else:
                hidden = injector.injector_pre_norm_feat[idx](hidden)
            residual = injector.injector[idx](hidden, audio[:, f0:f1].flatten(0, 1))
            x[:, start - offset : end - offset] += residual.reshape(b, end - start, dim)
        return x

    # -- token pieces (shared with the block-causal streaming forward, causal_s2v.py) ------------------------------

    def audio_tokens(self, audio: torch.Tensor, batch: int,
                     motion_frames: Sequence[int] = DEFAULT_MOTION_FRAMES) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-frame audio tokens: prepend motion_frames[0] copies of the first audio frame, encode, drop the first
        motion_frames[1] encoded frames. audio [B, layers, audio_dim, frames] -> (local, global or None)."""
        cfg = self.config
        audio = audio.to(self.patch_embedding.weight.device)
        if audio.dim() != 4 or audio.shape[0] != batch:
            raise ValueError(f"audio must be [B={batch}, layers, {cfg.audio_dim}, frames], got {tuple(audio.shape)}")
        audio = torch.cat([audio[..., :1].expand(*audio.shape[:3], motion_frames[0]), audio], dim=-1)
        audio_local, audio_global = self.casual_audio_encoder(audio)
        audio_local = audio_local[:, motion_frames[1]:]
        if audio_global is not None:
            audio_global = audio_global[:, motion_frames[1]:]
        return audio_local, audio_global

    def video_tokens(self, latents: torch.Tensor,
                     cond_states: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Noisy-latent tokens [B, n, dim] (patch embedding + condition encoder) and their grid (F, rows, cols)."""
        device = self.patch_embedding.weight.device
        x = conv_in_weight_dtype(self.patch_embedding, latents.to(device))
        if self.config.cond_dim > 0:
            if cond_states is None:  # conv of all-zero latents == its bias
                x = x + self.cond_encoder.bias.to(x.dtype).view(1, -1, 1, 1, 1)
            else:
                x = x + conv_in_weight_dtype(self.cond_encoder, cond_states.to(device))
        elif cond_states is not None:
            raise ValueError("this model has no cond_encoder (cond_dim=0); pass cond_states=None")
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid

    def ref_tokens(self, ref_latents: torch.Tensor, batch: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Reference-image tokens [B, n, dim] and their (rows, cols)."""
        if ref_latents.shape[0] != batch or ref_latents.shape[2] != 1:
            raise ValueError(f"ref_latents must be [B={batch}, C, 1, H, W], got {tuple(ref_latents.shape)}")
        ref = conv_in_weight_dtype(self.patch_embedding, ref_latents.to(self.patch_embedding.weight.device))
        return ref.flatten(2).transpose(1, 2), tuple(ref.shape[3:])

    def mark(self, x: torch.Tensor, counts: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Add trainable_cond_mask rows: (mark, token count) in order; 0 noisy, 1 reference, 2 motion tokens."""
        marks = torch.cat([torch.full((n,), m, dtype=torch.long, device=x.device) for m, n in counts])
        return x + self.trainable_cond_mask(marks).to(x.dtype)

    def time_modulation(self, timestep: torch.Tensor, batch: int, zero_slot: bool,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(e [B, dim] for the head, e0 [B, 6, G, dim] for the blocks); G = 2 with the t = 0 slot appended."""
        cfg = self.config
        t = timestep.to(device=device, dtype=torch.float64).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        if not zero_slot:
            e, e0 = time_embedding_fp32(self.time_embedding, self.time_projection, cfg.freq_dim, t)
            return e, e0.unsqueeze(2)
        e, e0 = time_embedding_fp32(self.time_embedding, self.time_projection, cfg.freq_dim,
                                    torch.cat([t, t.new_zeros(1)]))
        return e[:batch], torch.stack([e0[:batch], e0[batch:].expand(batch, -1, -1)], dim=2)

    # -- forward ----------------------------------------------------------------------------------------------

    def prepare_tokens(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | Sequence[torch.Tensor],
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor,
        audio: torch.Tensor,
        cond_states: torch.Tensor | None = None,
        motion_frames: Sequence[int] = DEFAULT_MOTION_FRAMES,
        add_last_motion: int = 2,
        drop_motion_frames: bool = False,
    ) -> S2VTokens:
        """Everything before the transformer blocks: the token sequence, its rotary tables and modulation.

        Same inputs as `forward`. Split out so that sequence parallelism can shard the result across ranks.
        """
        cfg = self.config
        device = self.patch_embedding.weight.device
        b = latents.shape[0]
        add_last_motion = int(cfg.add_last_motion) * add_last_motion
        audio_local, audio_global = self.audio_tokens(audio, b, motion_frames)
        x, grid = self.video_tokens(latents, cond_states)
        n_video = x.shape[1]
        if audio_local.shape[1] != grid[0]:
            raise ValueError(f"audio covers {audio_local.shape[1]} latent frames but the latents have {grid[0]}; "
                             f"pass 4 x latent frames of audio features")
        ref, ref_hw = self.ref_tokens(ref_latents, b)

        pieces, marks = [x, ref], [0, 1]
        positions = [grid_positions((0, 0, 0), grid, grid), ref_positions(ref_hw)]
        motion_key: tuple = ()
        if not drop_motion_frames:
            motion_latents = motion_latents.to(device)
            motion, motion_pos = self._motion_tokens(motion_latents, add_last_motion)
            pieces.append(motion)
            marks.append(2)
            positions.append(motion_pos)
            motion_key = (tuple(motion_latents.shape[2:]), add_last_motion)
        x = self.mark(torch.cat(pieces, dim=1), [(m, p.shape[1]) for m, p in zip(marks, pieces)])
        seq = x.shape[1]
        cos, sin = self._rope((grid, ref_hw, motion_key, str(device)), torch.cat(positions), device)

        # timestep modulation: noisy tokens use t, reference/motion tokens use t = 0 (zero_timestep)
        e, e0 = self.time_modulation(timestep, b, cfg.zero_timestep, device)
        bounds: tuple[int, ...] = (0, min(max(0, n_video), seq), seq) if cfg.zero_timestep else (0, seq)
        ctx = self._context(context, b, device)
        return S2VTokens(x, e, e0, bounds, cos, sin, ctx, n_video, grid, audio_local, audio_global)

    def run_blocks(self, tokens: S2VTokens,
                   attention_of: Callable[[int], AttentionFn] | None = None) -> torch.Tensor:
        """Every block on tokens.x, with the audio injection after the official blocks (on the video tokens);
        attention_of(index) swaps a block's self-attention (the streaming forward's cached attention)."""
        x = tokens.x
        for index, block in enumerate(self.blocks):
            attn = self.self_attention if attention_of is None else attention_of(index)
            context = tokens.context[index] if isinstance(tokens.context, list) else tokens.context
            x = block(x, tokens.e0, tokens.bounds, tokens.cos, tokens.sin, context, attn)
            if index in self.audio_injector.injected_block_id and tokens.n_video:
                x = self._inject_audio(index, x, tokens)
        return x

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor | Sequence[torch.Tensor],
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor,
        audio: torch.Tensor,
        cond_states: torch.Tensor | None = None,
        motion_frames: Sequence[int] = DEFAULT_MOTION_FRAMES,
        add_last_motion: int = 2,
        drop_motion_frames: bool = False,
    ) -> torch.Tensor:
        """Predict the flow for a batch; every input is stacked on dim 0 (one row per clip / CFG branch).

        latents [B, in_dim, F, H, W]; timestep [B] (or one value); context [B, L, text_dim] or B tensors
        [L_i, text_dim]; ref_latents [B, in_dim, 1, H, W]; motion_latents [B, 16, T_m, H, W];
        audio [B, 25, audio_dim, 4 * F]; cond_states [B, cond_dim, F, H, W] or None (the official pipeline's
        all-zero pose latents). Returns [B, out_dim, F, H, W] float32.
        """
        tokens = self.prepare_tokens(latents, timestep, context, ref_latents, motion_latents, audio, cond_states,
                                     motion_frames, add_last_motion, drop_motion_frames)
        x = self.run_blocks(tokens)
        out = self.head(x[:, : tokens.n_video], tokens.e)
        return unpatchify(out, tokens.grid, self.config.patch_size, self.config.out_dim)


def cfg_forward(model: WanS2VTransformer, *, latents: torch.Tensor, timestep: torch.Tensor,
                context: Sequence[torch.Tensor], context_null: Sequence[torch.Tensor], ref_latents: torch.Tensor,
                motion_latents: torch.Tensor, audio: torch.Tensor, cond_states: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Both classifier-free-guidance branches in one forward, stacked on the batch dim.

    As in WanS2V.generate, the unconditional branch gets the negative prompt and all-zero audio features and
    shares everything else. Returns (cond, uncond) predictions, each [B, out_dim, F, H, W].
    """
    b = latents.shape[0]

    def twice(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else torch.cat([tensor, tensor])

    t = timestep.reshape(-1)
    t = t.expand(b) if t.numel() == 1 else t
    out = model(twice(latents), twice(t), list(context) + list(context_null), twice(ref_latents),
                twice(motion_latents), torch.cat([audio, audio * 0.0]), twice(cond_states), **kwargs)
    return out[:b], out[b:]


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as in WanS2V.generate: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on accelerators (the official param_dtype), float32 on CPU."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def meta_model(config: WanS2VTransformerConfig, dtype: torch.dtype = torch.float32) -> WanS2VTransformer:
    """The module tree with no storage (shapes only): for counting, key checks and fast materialisation."""
    with torch.device("meta"):
        return WanS2VTransformer(config).to(dtype)


def count_parameters(config: WanS2VTransformerConfig) -> int:
    return sum(p.numel() for p in meta_model(config).parameters())


@torch.no_grad()
def init_random_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter in place with non-trivial random values (benchmarks and tiny test checkpoints).

    Matrices get N(0, 1/fan_in) so activations stay O(1) at any width; norms scale ~1; modulation follows the
    official randn/sqrt(dim); the wav2vec2 layer weights stay positive around the official 0.01.
    """
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        gen = generators.get(param.device)
        if gen is None:
            gen = generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        if name.endswith("casual_audio_encoder.weights"):
            param.uniform_(0.005, 0.015, generator=gen)
        elif name.endswith("modulation"):
            param.normal_(0.0, param.shape[-1] ** -0.5, generator=gen)
        elif param.dim() >= 2 and not name.endswith(("padding_tokens", "trainable_cond_mask.weight")):
            fan_in = param[0].numel()
            param.normal_(0.0, fan_in**-0.5, generator=gen)
        elif "norm" in name and name.endswith("weight"):
            param.normal_(1.0, 0.1, generator=gen)
        else:
            param.normal_(0.0, 0.02, generator=gen)
    return model


def build_s2v_model(config: WanS2VTransformerConfig | None = None, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, seed: int = 0) -> WanS2VTransformer:
    """A randomly initialised model at any size (real 14B size for benchmarks), allocated once on `device`.

    Built on the meta device, given its dtype there, then materialised with `to_empty` (no float32 copy of
    16 B parameters is ever made) and filled with `init_random_weights_`. Returned in eval mode, no grads.
    """
    config = config or WanS2VTransformerConfig()
    dtype = dtype or default_dtype(device)
    model = meta_model(config, dtype).to_empty(device=device)
    init_random_weights_(model, seed)
    return model.eval().requires_grad_(False)
