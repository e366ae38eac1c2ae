"""Sequence parallelism for the S2V transformer over N ranks (DeepSpeed-Ulysses, as Wan2.2 does).

What Wan2.2 does (wan/distributed/ulysses.py, sequence_parallel.py and the usp path of
wan/modules/s2v/model_s2v.py at commit 42bf4cf): every rank builds the whole token sequence, keeps its own
contiguous slice, and runs the blocks on that slice. Self-attention is the only place where tokens meet:
an all-to-all turns [B, L/N, heads, d] into [B, L, heads/N, d] (each rank attends over the whole sequence for
a subset of heads) and a second all-to-all turns the result back. Rotary tables are sliced with the same
offsets, so every token keeps its global position. At the end the ranks gather the predictions.

Where this differs from the official code, and why:
* Uneven slices. torch.chunk slices of a length that N does not divide differ in size, which the official
  equal-size all_to_all cannot carry; here every collective takes per-rank sizes (all_to_all_single with
  split sizes), so any sequence length works for any N that divides the head count.
* The audio injector runs on each rank's own slice. A video token only attends to the audio tokens of its
  latent frame, so no gather is needed; the official code all-gathers the whole hidden state before each of
  the 12 injections and every rank repeats the same work.
* The output head runs before the gather, so the ranks exchange out_dim * prod(patch) = 64 channels per
  token instead of dim = 5120.

q and k are brought to v's dtype before the exchange (the attention does that anyway), so the all-to-all
moves bf16 on GPU.

Every rank must be given the same inputs (same seed); every rank returns the whole prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn

from ..common.attention import AttentionFn, attention
from ..common.configs import WanS2VTransformerConfig
from ..common.transformer import unpatchify
from .model import WanS2VTransformer

log = logging.getLogger(__name__)


def split_sizes(length: int, world: int) -> list[int]:
    """Contiguous slice lengths of a sequence over `world` ranks (the first length % world get one more)."""
    return [length // world + (1 if rank < length % world else 0) for rank in range(world)]


class SequenceGroup:
    """The ranks that share one sequence, and the three collectives sequence parallelism needs.

    With no process group (torch.distributed not initialised) it is one rank and every collective is the
    identity; with a group, collectives run even for one rank (what the one-GPU check exercises).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size(group) if self.distributed else 1
        self.rank = dist.get_rank(group) if self.distributed else 0

    def seq_to_heads(self, t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """[P, sizes[rank], H, d] (this rank's tokens, all heads) -> [P, sum(sizes), H / world, d]."""
        if not self.distributed:
            return t
        n = self.world
        p, length, heads, d = t.shape
        h = heads // n
        send = t.reshape(p, length, n, h, d).permute(2, 0, 1, 3, 4).contiguous()  # head block j goes to rank j
        counts = [p * s * h * d for s in sizes]
        recv = t.new_empty(sum(counts))
        dist.all_to_all_single(recv, send.reshape(-1), output_split_sizes=counts,
                               input_split_sizes=[p * length * h * d] * n, group=self.group)
        pieces = [piece.view(p, s, h, d) for piece, s in zip(recv.split(counts), sizes)]
        return torch.cat(pieces, dim=1)

    def heads_to_seq(self, t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """[P, sum(sizes), H / world, d] -> [P, sizes[rank], H, d] (inverse of seq_to_heads)."""
        if not self.distributed:
            return t
        n = self.world
        p, _, h, d = t.shape
        length = sizes[self.rank]
        send = torch.cat([piece.reshape(-1) for piece in t.split(list(sizes), dim=1)])
        recv = t.new_empty(n * p * length * h * d)
        dist.all_to_all_single(recv, send, output_split_sizes=[p * length * h * d] * n,
                               input_split_sizes=[p * s * h * d for s in sizes], group=self.group)
        return recv.view(n, p, length, h, d).permute(1, 2, 0, 3, 4).reshape(p, length, n * h, d)

    def gather_sequence(self, t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """[B, sizes[rank], C] on each rank -> [B, sum(sizes), C] on every rank."""
        if not self.distributed:
            return t
        longest = max(sizes)
        padded = t.new_zeros(t.shape[0], longest, t.shape[2])
        padded[:, : t.shape[1]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([part[:, :s] for part, s in zip(parts, sizes)], dim=1)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group: SequenceGroup,
                      sizes: Sequence[int], attn: AttentionFn = attention) -> torch.Tensor:
    """Self-attention of this rank's tokens against the whole sequence: [B, L_rank, H, d] in and out.

    `attn` computes the attention of the gathered sequence on this rank's heads (the model's self_attention).
    """
    b = q.shape[0]
    dtype = v.dtype
    qkv = torch.cat([q.to(dtype), k.to(dtype), v])  # one exchange for the three: [3B, L_rank, H, d]
    q, k, v = group.seq_to_heads(qkv, sizes).split(b)
    return group.heads_to_seq(attn(q, k, v), sizes)


@torch.no_grad()
def sequence_parallel_forward(model: WanS2VTransformer, group: SequenceGroup, *args, **kwargs) -> torch.Tensor:
    """WanS2VTransformer.forward with the token sequence split across the ranks of `group`.

    Takes exactly model.forward's arguments; returns the same [B, out_dim, F, H, W] prediction on every rank.
    """
    cfg = model.config
    if cfg.num_heads % group.world:
        raise ValueError(f"{cfg.num_heads} attention heads cannot be split over {group.world} ranks; "
                         f"use a number of ranks that divides {cfg.num_heads}")
    tokens = model.prepare_tokens(*args, **kwargs)
    seq = tokens.x.shape[1]
    if seq < group.world:
        raise ValueError(f"a sequence of {seq} tokens cannot be split over {group.world} ranks")
    sizes = split_sizes(seq, group.world)
    starts = [sum(sizes[:r]) for r in range(group.world)]
    start, length = starts[group.rank], sizes[group.rank]

    x = tokens.x[:, start : start + length].contiguous()
    cos, sin = tokens.cos[start : start + length], tokens.sin[start : start + length]  # global positions
    bounds = tuple(min(max(edge - start, 0), length) for edge in tokens.bounds)
    attn = partial(ulysses_attention, group=group, sizes=sizes, attn=model.self_attention)
    for index, block in enumerate(model.blocks):
        x = block(x, tokens.e0, bounds, cos, sin, tokens.context, self_attention=attn)
        if index in model.audio_injector.injected_block_id:
            x = model._inject_audio(index, x, tokens, offset=start)

    video_sizes = [max(0, min(s, tokens.n_video - a)) for a, s in zip(starts, sizes)]
    out = model.head(x[:, : video_sizes[group.rank]], tokens.e)  # per-token, so it runs before the gather
    out = group.gather_sequence(out, video_sizes)
    return unpatchify(out, tokens.grid, cfg.patch_size, cfg.out_dim)


class SequenceParallelS2V(nn.Module):
    """Opt-in wrapper: called like the model; splits the sequence over `group` when it has several ranks.

    With one rank (no process group, or a group of one) it calls the model itself, unchanged, unless
    `shard_single_rank` is set (to exercise the sharded path and its collectives on one device).
    """

    def __init__(self, model: WanS2VTransformer, group: dist.ProcessGroup | None = None,
                 shard_single_rank: bool = False) -> None:
        super().__init__()
        self.model = model
        self.group = SequenceGroup(group)
        self.shard_single_rank = shard_single_rank
        if model.config.num_heads % self.group.world:
            raise ValueError(f"{model.config.num_heads} attention heads cannot be split over "
                             f"{self.group.world} ranks")

    @property
    def config(self) -> WanS2VTransformerConfig:
        return self.model.config

    @property
    def sharded(self) -> bool:
        return self.group.world > 1 or (self.shard_single_rank and self.group.distributed)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if not self.sharded:
            return self.model(*args, **kwargs)
        return sequence_parallel_forward(self.model, self.group, *args, **kwargs)
