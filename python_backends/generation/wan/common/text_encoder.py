"""umT5-XXL text encoder, loading Wan's official `models_t5_umt5-xxl-enc-bf16.pth` and `google/umt5-xxl/` tokenizer.

Prompt -> context for the Wan DiT's cross-attention, as the official `T5EncoderModel` computes it: clean the text
(ftfy + whitespace), tokenize with EOS, pad/truncate to `text_len` (512), run the encoder with padding masked
out, and keep each prompt's embeddings up to its real length.

Official layout (a bare state dict, bf16): `token_embedding.weight` [256384, 4096], then per layer i < 24
`blocks.{i}.norm1.weight`, `blocks.{i}.attn.{q,k,v,o}.weight`, `blocks.{i}.norm2.weight`,
`blocks.{i}.ffn.gate.0.weight`, `blocks.{i}.ffn.fc1.weight`, `blocks.{i}.ffn.fc2.weight`,
`blocks.{i}.pos_embedding.embedding.weight` [32, 64] (umT5: every layer has its own relative position bias),
and `norm.weight`.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ftfy
import regex  # the official cleaning's `\s` (Unicode White_Space) differs from `re`'s on a few control characters
import torch
import torch.nn.functional as F
from torch import nn

from ....errors import WeightsUnavailable
from .vae import load_into_meta

log = logging.getLogger(__name__)

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_FOLDER = "google/umt5-xxl"
TEXT_LEN = 512


@dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    shared_pos: bool = False  # umT5: one relative position table per layer
    max_distance: int = 128
    eps: float = 1e-6


UMT5_XXL = UMT5Config()


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # float16 activations of T5-XXL overflow; the official code clamps them back to the finite range.
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        if dim_attn % num_heads:
            raise ValueError(f"dim_attn {dim_attn} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, C]; bias [B or 1, heads, L, L] = position bias with masked keys at the dtype's minimum."""
        b, n = x.shape[0], self.num_heads
        q, k, v = (proj(x).view(b, -1, n, proj.out_features // n).transpose(1, 2) for proj in (self.q, self.k, self.v))
        # T5 folds the 1/sqrt(d) scaling into its weights: no scaling here.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(y.transpose(1, 2).flatten(2))


class T5FeedForward(nn.Module):
    """Gated-GELU feed-forward: fc2(fc1(x) * gelu_tanh(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5RelativeEmbedding(nn.Module):
    """Bidirectional bucketed relative position bias: [1, heads, Lq, Lk]."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        device = self.embedding.weight.device
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        return self.embedding(self._bucket(rel)).permute(2, 0, 1).unsqueeze(0).contiguous()

    def _bucket(self, rel: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2  # keys after the query use the upper half of the buckets
        buckets = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        # Beyond `exact`, distances share log-spaced buckets up to max_distance.
        far = (
            exact
            + (
                torch.log(rel.clamp(min=1).float() / exact) / math.log(self.max_distance / exact) * (half - exact)
            ).long()
        )
        far = far.clamp(max=half - 1)
        return buckets + torch.where(rel < exact, rel, far)


class T5SelfAttention(nn.Module):
    """One encoder layer (the official class name; it holds attention and feed-forward)."""

    def __init__(self, cfg: UMT5Config) -> None:
        super().__init__()
        self.norm1 = T5LayerNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5LayerNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = (
            None if cfg.shared_pos else T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads, cfg.max_distance)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, pos_bias: torch.Tensor | None) -> torch.Tensor:
        if self.pos_embedding is not None:
            pos_bias = self.pos_embedding(x.shape[1], x.shape[1])
        bias = pos_bias.to(x.dtype)
        if key_mask is not None:
            bias = bias.masked_fill(~key_mask[:, None, None, :], torch.finfo(x.dtype).min)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """The encoder stack of umT5 (official `T5Encoder`): ids [B, L] (+ mask) -> hidden states [B, L, dim]."""

    def __init__(self, cfg: UMT5Config = UMT5_XXL) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embedding = (
            T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads, cfg.max_distance) if cfg.shared_pos else None
        )
        self.blocks = nn.ModuleList(T5SelfAttention(cfg) for _ in range(cfg.num_layers))
        self.norm = T5LayerNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask [B, L]: nonzero for real tokens; padding keys are ignored by every token."""
        x = self.token_embedding(ids)
        key_mask = None if mask is None else mask.to(x.device) != 0
        pos_bias = self.pos_embedding(x.shape[1], x.shape[1]) if self.pos_embedding is not None else None
        for block in self.blocks:
            x = block(x, key_mask, pos_bias)
        return self.norm(x)


# ---- tokenizer ----


def clean_prompt(text: str) -> str:
    """Official 'whitespace' cleaning: ftfy repairs, double HTML unescape, whitespace runs to one space."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


class UMT5Tokenizer:
    """The `google/umt5-xxl` tokenizer from a local folder (never the Hub), padded and truncated to text_len."""

    def __init__(self, folder: Path, text_len: int = TEXT_LEN) -> None:
        from transformers import AutoTokenizer  # heavy: only when a tokenizer is built

        folder = Path(folder)
        if not folder.is_dir():
            raise WeightsUnavailable(f"tokenizer folder {folder} does not exist (expected Wan's {TOKENIZER_FOLDER}/)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # missing tokenizer.json/spiece.model, unreadable config, ...
            raise WeightsUnavailable(f"cannot load the tokenizer in {folder}: {exc}") from exc
        self.text_len = text_len

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids and attention mask, both [B, text_len] int64; every prompt ends with EOS before its padding."""
        encoded = self.tokenizer(
            [clean_prompt(p) for p in prompts], return_tensors="pt", padding="max_length", truncation=True,
            max_length=self.text_len, add_special_tokens=True,
        )  # fmt: skip
        return encoded["input_ids"], encoded["attention_mask"]


class WanTextEncoder:
    """Prompts -> umT5 context: one [real length, dim] tensor per prompt (official `T5EncoderModel.__call__`)."""

    def __init__(self, model: UMT5Encoder, tokenizer: UMT5Tokenizer) -> None:
        if len(tokenizer) > model.cfg.vocab_size:
            raise WeightsUnavailable(
                f"the tokenizer has {len(tokenizer)} tokens but the encoder only {model.cfg.vocab_size} embeddings:"
                " they are not a pair"
            )
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        ids, mask = self.tokenizer(list(prompts))
        lengths = mask.sum(dim=1)
        # Padding keys are masked out and T5's position bias is relative, so the real tokens' outputs do not
        # depend on how much padding follows: running only up to the longest prompt gives the official values
        # at a fraction of the cost of all text_len positions.
        longest = int(lengths.max())
        hidden = self.model(ids[:, :longest].to(self.device), mask[:, :longest].to(self.device))
        return [h[: int(n)] for h, n in zip(hidden, lengths)]

    def padded(self, prompts: Sequence[str], text_len: int | None = None) -> torch.Tensor:
        """[B, text_len, dim]: each prompt's context followed by zeros, as the Wan DiT pads it."""
        text_len = text_len or self.tokenizer.text_len
        contexts = self(prompts)
        out = contexts[0].new_zeros(len(contexts), text_len, contexts[0].shape[1])
        for i, context in enumerate(contexts):
            out[i, : context.shape[0]] = context
        return out


def load_umt5_encoder(
    path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16, cfg: UMT5Config = UMT5_XXL
) -> UMT5Encoder:
    """The encoder with the weights of an official `models_t5_umt5-xxl-enc-bf16.pth` (or a smaller one)."""
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    return load_into_meta(model, path, device, dtype)


def load_text_encoder(
    checkpoint: Path,
    tokenizer_folder: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    cfg: UMT5Config = UMT5_XXL,
    text_len: int = TEXT_LEN,
) -> WanTextEncoder:
    """Encoder + tokenizer from Wan's checkpoint folder files (`T5_FILE`, `TOKENIZER_FOLDER`)."""
    tokenizer = UMT5Tokenizer(tokenizer_folder, text_len)
    return WanTextEncoder(load_umt5_encoder(checkpoint, device, dtype, cfg), tokenizer)
