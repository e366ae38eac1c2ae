"""LiveAvatar's block-causal streaming forward of Wan2.2-S2V-14B, on our S2V modules (rewritten, not vendored).

Read from Alibaba-Quark/LiveAvatar @9c2c38d: liveavatar/models/wan/causal_model_s2v.py (CausalWanModel_S2V
`_forward_sink`, `_forward_inference`, CausalWanS2VSelfAttention, CausalHead_S2V), causal_s2v_pipeline.py (the
single-GPU `WanS2V.generate` that infinite_inference_single_gpu.sh runs), causal_s2v_utils.py (rollout_grid_sizes)
and causal_motioner.py. The modules and weights are the official S2V ones (LiveAvatar builds them from the
Wan2.2-S2V-14B folder and merges its LoRA); what changes is which tokens a forward holds and what they attend to:

* Condition prefill (`_forward_sink`, once per video): the reference and motion tokens alone go through every
  block, modulated with t = 0 and attending only to each other (no audio injection: there are no video tokens).
  Each layer's keys and values of these condition tokens are kept (`CondCache`).
* Block forward (`_forward_inference`): the token sequence is one block of `block_frames` (3) latent frames,
  noisy tokens only (mark 0, modulated with the block's t). Its queries attend to the keys and values of the
  last `window` blocks (this one included) and of the condition tokens (the release concatenates them in that
  order; here the condition's come first, in the same buffer, which softmax attention does not see). Rotary
  frame positions are absolute: a block starting at latent frame f0 sits at f0 .. f0 + 2. Audio injection (the
  block's own audio frames, encoded with the official 73-copy padding of its first frame), text cross-attention,
  FFN and the head are the official ones on the block's tokens. The release's head takes per-frame t; within a
  block every frame has the same t, which is what our head gets.
* One KV cache per denoising step (`StepCache`): step i's cache holds what each earlier block's tokens were at
  step i (computed from that block's own noisy latents at step i; there is no clean re-encoding pass), so block b
  at step i sees blocks b - window + 1 .. b at step i. The release allocates one clip of tokens per cache
  (infer_frames / 4 latent frames: 4 blocks at --infer_frames 48) and writes it as a ring.
* Reference rollout: every forward moves the reference keys from frame 30 to 30 + max(0, f0 - (30 - d)) with
  d = random.randint(4, 30) drawn anew (Python's unseeded `random`: the release is not reproducible); the motion
  keys keep their prefill positions (rollout_grid_sizes shifts only the first two grid groups: the empty noisy one
  and the reference). Here d comes from a generator seeded with the job's seed, or is fixed (`ref_distance`).

What anchors this rewrite, with no LiveAvatar code installable as an oracle (tests/unit/test_wan_causal_s2v.py):
the streamed blocks equal, block for block, one forward of our parity-proven S2V DiT over all of them under the
attention mask LiveAvatar's model was trained with (`_prepare_blockwise_causal_attn_mask`, written out by hand
in the test: video tokens see the video tokens of their own and earlier blocks within the window and every
condition token; condition tokens see only condition tokens), each block's audio encoded on its own as at
inference. The streaming side never forms that mask (it prefills, then runs blocks alone against the caches), so
the agreement checks the caches, slots, window, positions, modulation and per-block audio.

Departures, all below bf16 precision: LiveAvatar's rope_precompute stores its rotary factors as complex32 (fp16
parts, ~5e-4 error); here float32 rotary tables from float64 angles, as our parity-proven S2V path. Its blocks
return the residual stream in bf16: the LiveAvatar engine does too (LiveAvatarOptions.release_residual; the
official S2V's float32 stream when off). The release keeps condition keys unrotated and rotates them every
forward; here they are kept rotated at the prefill positions and the reference rows are rotated by the rollout
(rotations compose: angle(30 + n) = angle(30) + angle(n)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ....transfer import to_device
from ..common.fp8 import FP8_DTYPE, quantize
from ..common.transformer import apply_rope, rope_cos_sin, unpatchify
from .model import (
    DEFAULT_MOTION_FRAMES,
    REF_FRAME_POSITION,
    S2VTokens,
    WanS2VTransformer,
    grid_positions,
    ref_positions,
)

BLOCK_FRAMES = 3  # wan_s2v_14B_modified.py num_frames_per_block
REF_DISTANCES = (4, 30)  # _forward_inference: relative_dist = random.randint(4, 30), both ends included


@dataclass
class CondCache:
    """Keys (rotated at the prefill positions) and values of the condition tokens, per layer; the first `n_ref`
    tokens are the reference image's, also kept on their own (`ref_keys`) for the rollout. `text`: per layer, the
    prompt's cross-attention keys and values, the same for every forward of the video."""

    keys: list[torch.Tensor]  # [B, n_cond, heads, head_dim]
    values: list[torch.Tensor]
    n_ref: int
    text: list[tuple[torch.Tensor, torch.Tensor]]

    def __post_init__(self) -> None:
        self.ref_keys = [k[:, : self.n_ref].clone() for k in self.keys]  # clones: they outlive `keys`


class KVRows:
    """One layer's keys or values [B, tokens, heads, head_dim]: in the compute dtype, or with `fp8` in e4m3 with a
    scale per token and head (quantised as written, dequantised as a forward reads them; one Triton pass each on the
    GPU: common/fp8_rows_triton.py). FP8 halves the KV caches, which are most of LiveAvatar's memory at a request
    (41.5 GB at 704x384 in bf16); e4m3 keeps 3 mantissa bits, so each element carries up to 2^-4 of its magnitude in
    rounding error (more for those over 2^14 below their row's largest).
    Not the release's numerics: a setting (LiveAvatarOptions.kv_cache_fp8)."""

    def __init__(self, like: torch.Tensor, tokens: int, fp8: bool = False) -> None:
        shape = (like.shape[0], tokens, *like.shape[2:])
        self.dtype = like.dtype
        self.data = torch.empty(shape, dtype=FP8_DTYPE if fp8 else like.dtype, device=like.device)
        self.scale = torch.empty((*shape[:-1], 1), dtype=like.dtype, device=like.device) if fp8 else None

    @property
    def tokens(self) -> int:
        return self.data.shape[1]

    def write(self, rows: slice, x: torch.Tensor) -> None:
        if self.scale is None:
            self.data[:, rows] = x
            return
        q, scale = self.data[:, rows], self.scale[:, rows]
        if x.is_cuda:
            from ..common.fp8_rows_triton import quantizable, quantize_rows_into

            x = x.contiguous()
            if quantizable(x, q, scale):  # one kernel instead of six and two copies (the same values)
                quantize_rows_into(x, q, scale)
                return
        q[:], scale[:] = quantize(x, "rowwise")

    def read(self, rows: slice) -> torch.Tensor:
        """The rows in the compute dtype: a view, or (fp8) a dequantised copy."""
        if self.scale is None:
            return self.data[:, rows]
        q, scale = self.data[:, rows], self.scale[:, rows]
        if q.is_cuda:
            from ..common.fp8_rows_triton import dequantize_rows, fusable

            if fusable(q, scale):  # one pass instead of two (the same values)
                return dequantize_rows(q, scale, self.dtype)
        return q.to(self.dtype) * scale


class _SharedKV:
    """Per layer, one buffer of keys and one of values: [left ring | condition | right ring]. Each ring holds one
    denoising step's last `window` blocks; the two steps on either side share the condition's copy, and the keys a
    block attends to, its step's filled slots and the condition, are one contiguous slice either way (the left
    ring fills leftwards from the condition). The reference's rows are rolled out per forward, for whichever step
    runs it: steps run one after another."""

    def __init__(self, cond: CondCache, window: int, block_tokens: int, sides: int, fp8: bool = False) -> None:
        self.n_ref, self.ref_keys, self.text = cond.n_ref, cond.ref_keys, cond.text
        self.window, self.block_tokens = window, block_tokens
        ring = window * block_tokens
        self.cond_start = ring if sides == 2 else 0
        self.cond_end = self.cond_start + cond.keys[0].shape[1]
        self.keys: list[KVRows] = []
        self.values: list[KVRows] = []
        condition = slice(self.cond_start, self.cond_end)
        for k, v in zip(cond.keys, cond.values):
            keys, values = KVRows(v, self.cond_end + ring, fp8), KVRows(v, self.cond_end + ring, fp8)
            keys.write(condition, k)
            values.write(condition, v)
            self.keys.append(keys)
            self.values.append(values)
        self.shifts = [0] * len(self.keys)  # frames the reference rows of each layer are rolled out by now

    def roll_reference(self, layer: int, shift: int, ref_rope: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        if shift != self.shifts[layer]:
            ref = self.ref_keys[layer]
            rows = slice(self.cond_start, self.cond_start + self.n_ref)
            self.keys[layer].write(rows, ref if not shift else apply_rope(ref, *ref_rope))
            self.shifts[layer] = shift


class StepCache:
    """One denoising step's keys and values per layer: the condition tokens' (the reference's rows rolled out per
    forward) and the last `window` blocks' as a ring, oldest overwritten, in one buffer (_SharedKV) so that a
    block's attention reads one contiguous slice. Concatenating the window and the condition per layer and forward
    instead copied every cached key and value once more per forward (softmax attention does not depend on the
    keys' order). The price: a copy of the condition per two steps (`step_caches`)."""

    def __init__(self, shared: _SharedKV, right: bool) -> None:
        self.shared, self.right = shared, right

    def store(self, layer: int, block: int, k: torch.Tensor, v: torch.Tensor, shift: int = 0,
              ref_rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write block `block`'s keys/values (the absolute block index decides the slot), move the reference keys
        `shift` frames from their prefill positions (`ref_rope`: the rotation by `shift`), and return the keys and
        values the block attends to: its step's filled slots and the condition's."""
        shared, n = self.shared, k.shape[1]
        if n != shared.block_tokens:
            raise ValueError(f"every block must have the same token count ({shared.block_tokens}), got {n}")
        keys, values = shared.keys[layer], shared.values[layer]
        slot, filled = block % shared.window, min(block + 1, shared.window) * n
        if self.right:
            start, view = shared.cond_end + slot * n, slice(shared.cond_start, shared.cond_end + filled)
        else:
            start, view = shared.cond_start - (slot + 1) * n, slice(shared.cond_start - filled, shared.cond_end)
        keys.write(slice(start, start + n), k)
        values.write(slice(start, start + n), v)
        shared.roll_reference(layer, shift, ref_rope)
        return keys.read(view), values.read(view)


def step_caches(cond: CondCache, steps: int, window: int, block_tokens: int, fp8: bool = False) -> list[StepCache]:
    """A StepCache per denoising step, two steps per copy of the condition; `fp8`: KVRows in e4m3."""
    if window < 1:
        raise ValueError(f"the attention window must hold at least one block, got {window}")
    caches = []
    for first in range(0, steps, 2):
        sides = min(2, steps - first)
        shared = _SharedKV(cond, window, block_tokens, sides, fp8)
        caches += [StepCache(shared, right) for right in (False, True)[2 - sides:]]  # a lone step: the right ring
    return caches


def ref_shift(frame_start: int, distance: int) -> int:
    """Frames the reference keys move by for a block at latent frame `frame_start` (release: the rollout of
    the reference grid, max(0, f0 - (30 - d)))."""
    return max(0, frame_start - (REF_FRAME_POSITION - distance))


@dataclass
class _AttentionCall:
    """What the current streaming forward's self-attentions read: the prefill's record, or a block's caches."""

    recording: tuple[list, list] | None = None
    cache: StepCache | None = None
    block: int = 0
    shift: int = 0
    ref_rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def set(self, **fields) -> None:
        self.__init__(**fields)


class _LayerAttention:
    """Layer `index`'s self-attention in the streaming forward, one object per layer for the model's life.

    A compiled block then sees the same callable on every call, and what changes per call (block index, caches,
    the reference's rotation) is read outside the graph. A fresh closure per block made torch.compile guard on
    the block index and recompile per block until its recompile limit (8), then run the blocks eagerly.
    """

    def __init__(self, index: int, model: WanS2VTransformer, call: _AttentionCall) -> None:
        self.index, self.model, self.call = index, model, call

    @torch.compiler.disable
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        call, index, attention = self.call, self.index, self.model.self_attention
        if call.recording is not None:
            keys, values = call.recording
            keys[index], values[index] = k.to(v.dtype), v
            return attention(q, k, v)
        keys, values = call.cache.store(index, call.block, k.to(v.dtype), v, call.shift, call.ref_rope)
        return attention(q, keys, values)


class CausalS2V:
    """The block-causal forward of a WanS2VTransformer (shared weights): `prefill` once, `block` per step."""

    def __init__(self, model: WanS2VTransformer, block_frames: int = BLOCK_FRAMES,
                 motion_frames: Sequence[int] = DEFAULT_MOTION_FRAMES) -> None:
        cfg = model.config
        if not cfg.zero_timestep:
            raise ValueError("LiveAvatar's causal forward modulates condition tokens with t = 0 (zero_timestep)")
        self.model, self.block_frames, self.motion_frames = model, block_frames, tuple(motion_frames)
        self._call = _AttentionCall()
        self._layers = [_LayerAttention(index, model, self._call) for index in range(len(model.blocks))]

    @property
    def device(self) -> torch.device:
        return self.model.patch_embedding.weight.device

    def new_step_caches(self, cond: CondCache, steps: int, window: int, latent_height: int,
                        latent_width: int, fp8: bool = False) -> list[StepCache]:
        """Each denoising step's cache for blocks of latents [.., block_frames, latent_height, latent_width]."""
        _, ph, pw = self.model.config.patch_size
        return step_caches(cond, steps, window, self.block_frames * (latent_height // ph) * (latent_width // pw),
                           fp8)

    @torch.no_grad()
    def prefill(self, ref_latents: torch.Tensor, motion_latents: torch.Tensor,
                context: torch.Tensor | Sequence[torch.Tensor]) -> CondCache:
        """The condition tokens through every block (release `_forward_sink`): their keys and values per layer."""
        m, device = self.model, self.device
        b = ref_latents.shape[0]
        ref, ref_hw = m.ref_tokens(ref_latents, b)
        motion, motion_pos = m._motion_tokens(motion_latents.to(device), int(m.config.add_last_motion) * 2)
        x = m.mark(torch.cat([ref, motion], dim=1), [(1, ref.shape[1]), (2, motion.shape[1])])
        cos, sin = rope_cos_sin(torch.cat([ref_positions(ref_hw), motion_pos]), m.config.head_dim)
        e, e0 = m.time_modulation(torch.zeros(1), b, zero_slot=False, device=device)
        embedded = m._context(context, b, device)
        text = [block.cross_attn.context_kv(embedded) for block in m.blocks]
        tokens = S2VTokens(x, e, e0, (0, x.shape[1]), cos.to(device), sin.to(device), text, 0, (0, 0, 0), None,
                           None)
        keys: list[torch.Tensor] = [None] * len(m.blocks)  # type: ignore[list-item]
        values: list[torch.Tensor] = [None] * len(m.blocks)  # type: ignore[list-item]
        self._call.set(recording=(keys, values))
        m.run_blocks(tokens, self._layers.__getitem__)
        return CondCache(keys, values, ref.shape[1], text)

    @torch.no_grad()
    def block(self, latents: torch.Tensor, timestep: torch.Tensor, audio: torch.Tensor, cache: StepCache, block: int,
              frame_start: int, shift: int = 0) -> torch.Tensor:
        """The flow [B, out_dim, F, H, W] for one block of noisy latents [B, in_dim, F, H, W] at `timestep`.

        audio [B, layers, audio_dim, 4 F] are the block's audio frames; `block` its absolute index (its slot in
        `cache`, the cache of this denoising step, which also holds the prompt's keys and values from the prefill);
        `frame_start` its first latent frame; `shift` the frames the reference keys move by (`ref_shift`).
        """
        m, device = self.model, self.device
        cfg = m.config
        b = latents.shape[0]
        audio_local, audio_global = m.audio_tokens(audio, b, self.motion_frames)
        x, grid = m.video_tokens(latents, None)
        if audio_local.shape[1] != grid[0]:
            raise ValueError(f"the block's audio covers {audio_local.shape[1]} latent frames, its latents {grid[0]}")
        x = m.mark(x, [(0, x.shape[1])])
        f0 = frame_start
        positions = grid_positions((f0, 0, 0), (f0 + grid[0], grid[1], grid[2]), grid)
        cos, sin = rope_cos_sin(positions, cfg.head_dim)
        e, e0 = m.time_modulation(timestep, b, zero_slot=False, device=device)
        n = x.shape[1]
        # per forward, so copied without waiting for the stream (transfer.py)
        tokens = S2VTokens(x, e, e0, (0, n), to_device(cos, device), to_device(sin, device), cache.shared.text, n,
                           grid, audio_local, audio_global)
        ref_rope = None
        if shift:
            ref_rope = tuple(to_device(t, device) for t in rope_cos_sin(torch.tensor([[shift, 0, 0]]), cfg.head_dim))
        self._call.set(cache=cache, block=block, shift=shift, ref_rope=ref_rope)
        out = m.head(m.run_blocks(tokens, self._layers.__getitem__), e)
        return unpatchify(out, grid, cfg.patch_size, cfg.out_dim)


class RefDistances:
    """The reference's distance d per forward: fixed, or uniform over 4..30 from a generator seeded per job (the
    release draws it from Python's unseeded `random`)."""

    def __init__(self, seed: int, fixed: int | None = None) -> None:
        if fixed is not None and not REF_DISTANCES[0] <= fixed <= REF_DISTANCES[1]:
            raise ValueError(f"ref_distance must be in {REF_DISTANCES[0]}..{REF_DISTANCES[1]}, got {fixed}")
        self.fixed = fixed
        self.rng = np.random.default_rng(seed)

    def next(self) -> int:
        if self.fixed is not None:
            return self.fixed
        return int(self.rng.integers(REF_DISTANCES[0], REF_DISTANCES[1] + 1))
