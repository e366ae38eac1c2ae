"""Wan 2.1 causal video VAE, loading the official `Wan2.1_VAE.pth` that Wan2.2 S2V uses.

Video [B, 3, T, H, W] in [-1, 1] <-> normalised latents [B, 16, 1 + (T - 1) / 4, H / 8, W / 8].

Every temporal convolution is causal: it sees only the current and earlier frames. The official code exploits
that to encode and decode in chunks (encode: the first frame alone, then 4 frames at a time; decode: one latent
frame at a time, which gives 1 pixel frame, then 4 per step), each layer carrying the tail of its input from one
chunk to the next. Here that carried tail lives in a `StreamState`; `decode_chunks` yields each chunk's pixels
as soon as they exist, which is what lets the server stream video while it is still decoding.

Speed options (`configure_vae`: channels-last 3-D layout, compiled norm + SiLU) change the kernels, not the
model: the same results to round-off.

The module tree mirrors the official `WanVAE_` so that state-dict keys and shapes are identical, e.g.
`encoder.downsamples.0.residual.2.weight`, `decoder.upsamples.3.time_conv.weight`, `conv1.weight`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ....checkpoints import check_state_dict as strict_check
from ....errors import WeightsUnavailable
from .compile_threads import allow_compiled_calls_beside_compiling

log = logging.getLogger(__name__)

VAE_FILE = "Wan2.1_VAE.pth"
Z_DIM = 16
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8
OFFICIAL_DIM = 96

# Per-channel statistics of the official VAE's latents; the diffusion model works on (mu - mean) / std.
LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip



class StreamState:
    """What the causal layers remember between chunks of one video: each layer's input tail."""

    def __init__(self) -> None:
        self.tails: dict[nn.Module, torch.Tensor] = {}
        self.started: set[nn.Module] = set()


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only towards the past in time (and symmetrically in space).

    In a stream the frames before the chunk are the carried tail instead of zeros, so chunked and whole-clip
    results are the same. The spatial zero padding is the convolution's own (no padded copy of the input), and the
    carried tail and any missing past frames join the chunk in one concatenation.
    """

    def __init__(
        self, in_dim: int, out_dim: int, kernel: int | tuple, stride: int | tuple = 1, padding: int | tuple = 0
    ) -> None:
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=(0, ph, pw))
        self.past = 2 * pt  # frames of history each output needs
        self.memory_format = torch.contiguous_format  # set by configure_vae

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        parts, missing = [x], self.past
        if self.past and state is not None:
            tail = state.tails.get(self)
            if tail is not None:
                parts.insert(0, tail)
                missing -= tail.shape[2]
        if missing:
            parts.insert(0, torch.empty((*x.shape[:2], missing, *x.shape[3:]), dtype=x.dtype, device=x.device,
                                        memory_format=self.memory_format).zero_())
        x_in = torch.cat(parts, dim=2) if len(parts) > 1 else x
        if self.past and state is not None:
            # clone: a view would keep the whole chunk alive until the next one (the zeros are not history).
            state.tails[self] = x_in[:, :, max(missing, x_in.shape[2] - self.past) :].clone()
        return super().forward(x_in.contiguous(memory_format=self.memory_format))


class RMSNorm(nn.Module):
    """Channel RMS norm (official `RMS_norm`, no bias): gamma is [C, 1, 1, 1] for video, [C, 1, 1] for images."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

        self.norm_silu = _norm_silu  # the norm and the SiLU after it (configure_vae may compile it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _norm_silu(x: torch.Tensor, gamma: torch.Tensor, scale: float) -> torch.Tensor:
    """RMSNorm then SiLU, exactly as the two modules compute them."""
    return F.silu(F.normalize(x, dim=1) * scale * gamma)


def _fused_norm_silu(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The same in float32 for compiling into one pass over the activation (eager makes five): x / |x| * sqrt(C)
    is x / rms(x), written without the float `scale`, which would make one graph per width."""
    y = x.float()
    y = y * torch.rsqrt(y.square().mean(dim=1, keepdim=True).clamp_min(1e-24)) * gamma.float()
    return F.silu(y).to(x.dtype)


class NearestUpsample2x(nn.Module):
    """2x nearest-exact spatial upsampling in the input's dtype (it only copies pixels: no float32 round trip)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(2.0, 2.0), mode="nearest-exact")


def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of [B, C, T, H, W]."""
    b, _, t = x.shape[:3]
    y = module(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class Resample(nn.Module):
    """Spatial 2x up/down sampling, plus 2x in time for the 3-D modes.

    The very first frame of a video is never resampled in time: one latent frame stands for one pixel frame
    there, and for 4 everywhere else.
    """

    MODES = ("none", "upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown resample mode {mode!r}")
        super().__init__()
        self.mode = mode
        self.memory_format = torch.contiguous_format  # of the 3-D time downsampling's input (configure_vae)
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        else:
            self.resample = nn.Identity()
        if mode == "upsample3d":
            # Predicts two frames per input frame, stacked in channels.
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._upsample_time(x, state)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, state)
        return x

    def _upsample_time(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        first = None
        if self not in state.started:
            state.started.add(self)
            first, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2]:
            # The frames after the first form their own causal sequence, zero-padded before its start.
            y = self.time_conv(x, state)
            b, c2, t, h, w = y.shape
            x = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return x if first is None else torch.cat([first, x], dim=2)

    def _downsample_time(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        first = None
        if self not in state.started:
            state.started.add(self)
            first, seq = x[:, :, :1], x
        else:
            seq = torch.cat([state.tails[self.time_conv].to(x.device), x], dim=2)
        # Windows of 3 frames, stride 2, starting at the video's first frame; the unused rest waits.
        windows = (seq.shape[2] - 1) // 2
        state.tails[self.time_conv] = seq[:, :, 2 * windows :].clone()
        if windows:
            out = self.time_conv(seq[:, :, : 2 * windows + 1].contiguous(memory_format=self.memory_format))
            return out if first is None else torch.cat([first, out], dim=2)
        return first if first is not None else seq[:, :, :0]


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Index layout as official (5 was dropout): keys residual.{0,3}.gamma, residual.{2,6}.weight.
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )  # fmt: skip
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        h = self.shortcut(x)
        return _run(self.residual, x, state) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        return x + _per_frame(self._frames, x)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(n, 1, c * 3, h * w).transpose(2, 3).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        return self.proj(y.squeeze(1).transpose(1, 2).reshape(n, c, h, w))


def _run(layers: nn.Sequential, x: torch.Tensor, state: StreamState) -> torch.Tensor:
    items = list(layers)
    i = 0
    while i < len(items):
        layer = items[i]
        if isinstance(layer, RMSNorm) and i + 1 < len(items) and isinstance(items[i + 1], nn.SiLU):
            x, i = layer.norm_silu(x, layer.gamma, layer.scale), i + 2
            continue
        if isinstance(layer, (CausalConv3d, ResidualBlock, Resample, AttentionBlock)):
            x = layer(x, state)
        else:
            x = layer(x)
        i += 1
    return x


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


class Encoder3d(nn.Module):
    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temporal_downsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        scale = 1.0
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                if scale in attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*layers)
        self.middle = nn.Sequential(
            ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]), ResidualBlock(dims[-1], dims[-1])
        )
        self.head = _head(dims[-1], z_dim)

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        x = self.conv1(x, state)
        for part in (self.downsamples, self.middle, self.head):
            x = _run(part, x, state)
        return x

    def units(self) -> list[tuple[nn.Module, Callable[[torch.Tensor, StreamState], torch.Tensor]]]:
        """forward as a chain of units (a module and how it runs), the same operations in the same order."""
        chain: list[tuple[nn.Module, Callable[[torch.Tensor, StreamState], torch.Tensor]]] = [(self.conv1, self.conv1)]
        chain += [(layer, layer) for part in (self.downsamples, self.middle) for layer in part]
        chain.append((self.head, lambda x, state: _run(self.head, x, state)))
        return chain


Unit = tuple[nn.Module, Callable[[torch.Tensor, StreamState], torch.Tensor]]  # a module and how it runs


class _SettlingChain:
    """A chain of units (Encoder3d.units, the decoder's parts) over a run of identical chunks, each unit run only
    until it settles.

    A unit whose input no longer changes and whose state came out of a chunk as it went in gives that chunk's
    output for every later identical chunk, and keeps that state: the same inputs through the same layers give the
    same values. So once a unit settles, the units before it are skipped; their one constant output is kept and
    fed on. Units settle in order, the encoder's full-resolution ones after a few chunks and the deepest last, so a
    still start costs little more than its deep layers. Checked with torch.equal, never assumed: bitwise the
    chain's own outputs and state."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.units = [(fn, set(module.modules())) for module, fn in units]
        self.settled = 0  # units [0, settled) settled
        self.output: torch.Tensor | None = None  # of unit settled - 1

    def __call__(self, chunk: torch.Tensor, state: StreamState, count: int | None = None) -> torch.Tensor:
        """The output of the chain's first `count` units (all) for `chunk`, the same chunk as every call before on
        this chain; `count` may grow from call to call."""
        x = chunk if self.output is None else self.output
        settling = True  # whether the units before this one have all settled
        for index in range(self.settled, len(self.units) if count is None else count):
            fn, modules = self.units[index]
            before = _tails_of(state, modules) if settling else {}  # past the first unsettled unit: not compared
            x = fn(x, state)
            if settling and _same_tails(before, _tails_of(state, modules)):
                self.settled, self.output = index + 1, x
            else:
                settling = False
        return x


def _tails_of(state: StreamState, modules: set[nn.Module]) -> dict[nn.Module, torch.Tensor]:
    return {m: t for m, t in state.tails.items() if m in modules}


def _same_tails(before: dict[nn.Module, torch.Tensor], after: dict[nn.Module, torch.Tensor]) -> bool:
    return before.keys() == after.keys() and all(
        before[m] is after[m] or (before[m].shape == after[m].shape and torch.equal(before[m], after[m]))
        for m in before)


class Decoder3d(nn.Module):
    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temporal_upsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0])
        )
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # each upsampling conv halves the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                if scale in attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3)

    def parts(self) -> list[nn.Module]:
        """The decoder as a chain of parts in order (conv1, the middle's and the upsamplers' blocks, the head)."""
        return [self.conv1, *self.middle, *self.upsamples, self.head]

    def forward(self, x: torch.Tensor, state: StreamState, parts: int | None = None) -> torch.Tensor:
        """`parts`: run only the first that many (LatentDecoder.advance); the rest leave their state as it is."""
        for part in self.parts()[:parts]:
            x = run_part(part, x, state)
        return x


def run_part(part: nn.Module, x: torch.Tensor, state: StreamState) -> torch.Tensor:
    """One part of Decoder3d.parts on `x`."""
    return _run(part, x, state) if isinstance(part, nn.Sequential) else part(x, state)


class WanVAE(nn.Module):
    """The Wan 2.1 VAE (official `WanVAE_` with Wan's `_video_vae` configuration; `dim` 96 officially)."""

    def __init__(
        self,
        dim: int = OFFICIAL_DIM,
        z_dim: int = Z_DIM,
        dim_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_scales: Sequence[float] = (),
        temporal_downsample: Sequence[bool] = (False, True, True),
    ) -> None:
        super().__init__()
        if z_dim != len(LATENT_MEAN):
            raise ValueError(f"the latent statistics are for z_dim {len(LATENT_MEAN)}, not {z_dim}")
        self.z_dim = z_dim
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, attn_scales, temporal_downsample)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, attn_scales, temporal_downsample[::-1])

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(LATENT_MEAN, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
        return mean, inv_std

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1 + 4k, H, W] in [-1, 1] -> normalised latent mean [B, 16, 1 + k, H/8, W/8] (float32)."""
        _check_video(video)
        return LatentEncoder(self).feed(video)

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Pixels [B, 3, t, H, W] in [-1, 1] (float32) per latent frame: t = 1 for the first, then 4 each."""
        return LatentDecoder(self).feed(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 16, T, h, w] normalised latents -> video [B, 3, 1 + 4 (T - 1), 8h, 8w] in [-1, 1] (float32)."""
        return torch.cat(list(self.decode_chunks(latents)), dim=2)


VAE_MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


@functools.cache
def _compiled_norm_silu() -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    # One compiled function for every norm of every VAE: dynamic shapes, so widths and frame sizes share a graph.
    # gamma detached: a Parameter's shape would be compiled in as a constant, and with it every width. Still one
    # graph per dtype, stride order (contiguous, channels-last, the transposed view after a per-frame layer) and
    # one-frame chunk or not: up to 12 for two dtypes and both layouts, more than dynamo's default of 8.
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
    allow_compiled_calls_beside_compiling()
    compiled = torch.compile(_fused_norm_silu, dynamic=True)
    return lambda x, gamma, scale: compiled(x, gamma.detach())


def configure_vae(vae: WanVAE, memory_format: str = "contiguous", compile: bool = False,
                  cudnn_benchmark: bool = False) -> WanVAE:
    """The VAE's speed options, in place; each gives the default's results to round-off (tests/unit/test_wan_vae_t5).

    memory_format "channels_last_3d": the convolutions' weights and inputs channels-last, the layout cuDNN's fast
    3-D kernels use in bf16; the per-frame 2-D layers then see channels-last views instead of transposed copies.
    compile: each RMSNorm + SiLU pair becomes one compiled kernel (five passes over the activation in eager); the
    convolutions stay cuDNN's. The first use of each new shape pays the compile time.
    cudnn_benchmark: cuDNN times its convolution algorithms on each shape's first call and keeps the fastest,
    instead of picking by heuristics, among the deterministic ones, because the settling shortcuts (_SettlingChain)
    stop a unit when its output repeats bitwise. PyTorch keeps the timings per thread, so the threads that run the
    VAE live on between requests (stage_pipeline). Process-wide (torch.backends.cudnn): only ever switched on here."""
    if memory_format not in VAE_MEMORY_FORMATS:
        raise ValueError(f"VAE memory format must be one of {', '.join(VAE_MEMORY_FORMATS)}, got {memory_format!r}")
    layout = VAE_MEMORY_FORMATS[memory_format]
    channels_last = layout == torch.channels_last_3d
    norm_silu = _compiled_norm_silu() if compile else _norm_silu
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = True
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, (CausalConv3d, Resample)):
                module.memory_format = layout
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                weight_layout = torch.contiguous_format if not channels_last else (
                    torch.channels_last_3d if module.weight.ndim == 5 else torch.channels_last)
                module.weight.data = module.weight.data.contiguous(memory_format=weight_layout)
            if isinstance(module, RMSNorm):
                module.norm_silu = norm_silu
    return vae


@dataclass
class FixedPointMemo:
    """The encoder at the fixed point of a still start (LatentEncoder._still_start): the picture, the outputs of
    chunks 0..K and the state after chunk K. A later stream that starts with the same picture, as long, starts there:
    the same inputs through the same layers give the same values."""

    picture: torch.Tensor | None = None
    encoder: nn.Module | None = None  # whose layers the tails belong to
    outputs: list[torch.Tensor] = field(default_factory=list)
    tails: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    started: set[nn.Module] = field(default_factory=set)

    def holds(self, picture: torch.Tensor, encoder: nn.Module) -> bool:
        held = self.picture
        return (held is not None and self.encoder is encoder and held.shape == picture.shape
                and held.dtype == picture.dtype and held.device == picture.device and torch.equal(held, picture))

    def keep(self, picture: torch.Tensor, encoder: nn.Module, outputs: list[torch.Tensor],
             state: StreamState) -> None:
        # copies of the dict and set: layers replace their tails, never edit them
        self.picture, self.encoder, self.outputs = picture.clone(), encoder, list(outputs)
        self.tails, self.started = dict(state.tails), set(state.started)


class LatentEncoder:
    """One causal encode continued over several calls: the first call takes 1 + 4k frames, later ones 4k more, and
    each returns the normalised latents of its frames, bitwise those of encoding all the frames at once (the
    official chunking: the first frame alone, then 4 at a time; conv1 is 1x1x1). A long still picture at the start
    is encoded only until the encoder's state stops changing (_still_start), and with a `memo` only once for all
    the streams that start with it."""

    skip_still_start = True  # False: run every chunk of a still start too (to compare with)
    settle_still_start = True  # False: every unit of the encoder on each still chunk up to the fixed point

    def __init__(self, vae: WanVAE, memo: FixedPointMemo | None = None) -> None:
        self.vae = vae
        self.state = StreamState()
        self.memo = memo
        self.frames = 0
        self.encoded_frames = 0  # the frames whose chunks ran (a still start's past its fixed point do not)

    @torch.no_grad()
    def feed(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, t, H, W] in [-1, 1] -> [B, 16, t', H/8, W/8] float32 (t' = 1 + (t - 1) / 4 first, t / 4 after)."""
        vae = self.vae
        mu = torch.cat([vae.conv1(out)[:, : vae.z_dim].float() for out in self._features(video)], dim=2)
        mean, inv_std = vae._stats(mu)
        return ((mu - mean) * inv_std).contiguous()

    @torch.no_grad()
    def features(self, video: torch.Tensor) -> torch.Tensor:
        """The encoder's output for these frames in the VAE's dtype, before the 1x1x1 latent head."""
        return torch.cat(self._features(video), dim=2).contiguous()

    def _features(self, video: torch.Tensor) -> list[torch.Tensor]:
        # Per chunk, so that every layer always sees the same shapes: a stream's latents are then bitwise those of
        # encoding at once, however the frames were split between calls.
        vae, t = self.vae, video.shape[2]
        first = self.frames == 0
        if video.ndim != 5 or (t - 1 if first else t) % TEMPORAL_STRIDE or (not first and t == 0):
            raise ValueError(f"a stream's first video must be 1 + 4k frames and each later one 4k > 0 frames, got "
                             f"{tuple(video.shape)} after {self.frames} frames")
        x = video.to(device=vae.device, dtype=vae.dtype)
        # A single image has no tail: splitting an empty tail would yield one empty chunk.
        chunks = ([x[:, :, :1]] if first else []) + (list(x[:, :, int(first):].split(TEMPORAL_STRIDE, dim=2))
                                                     if t > int(first) else [])
        fixed, repeats, still = self._still_start(x) if first and self.skip_still_start else (0, 0, 0)
        reached = still >= fixed > 0
        del chunks[fixed + 1 : fixed + 1 + repeats]
        out: list[torch.Tensor] = []
        memo = self.memo if reached else None
        if memo is not None and memo.holds(x[:, :, :1], vae.encoder):
            out = list(memo.outputs)
            self.state.tails, self.state.started = dict(memo.tails), set(memo.started)
            memo = None
        # chunks 1 .. still are the same 4 frames of the picture: the encoder's units stop running once settled
        settling = _SettlingChain(vae.encoder.units()) if still and self.settle_still_start else None
        for index in range(len(out), len(chunks)):
            chunk = chunks[index]
            run = settling if settling is not None and 1 <= index <= still else vae.encoder
            out.append(run(chunk, self.state))
            self.encoded_frames += chunk.shape[2]
            if memo is not None and len(out) == fixed + 1:
                memo.keep(x[:, :, :1], vae.encoder, out, self.state)
        if repeats:
            out[fixed + 1 : fixed + 1] = [out[fixed]] * repeats
        self.frames += t
        return out

    def _still_start(self, video: torch.Tensor) -> tuple[int, int, int]:
        """A stream that starts with a still picture (LiveAvatar's history of the photo repeated 365 times):
        (K, j, s) such that chunks K + 1 .. K + j need not be encoded, their outputs being chunk K's, and chunks
        1 .. s (s <= K; the still run reaches chunk K when s == K) are the same 4 frames of the picture.

        Exact: the output of chunk k (frames 4k - 3 .. 4k) and the state it leaves depend only on frames
        4k - encoder_memory .. 4k, and from K = ceil((encoder_memory + 1) / 4) on that window holds neither the
        stream's first frame (encoded alone, after zero padding) nor, while chunk k is still inside the still run,
        anything but the same picture at the same places within the 4-frame chunks. So every such chunk computes
        the same values from the same state: the encoder has reached a fixed point, and the frames after it
        continue from it as they would after the whole run."""
        fixed = -(-(encoder_memory(self.vae) + 1) // TEMPORAL_STRIDE)
        still = still_frames(video)
        return (fixed, max(0, (still - 1 - TEMPORAL_STRIDE * fixed) // TEMPORAL_STRIDE),
                min(fixed, (still - 1) // TEMPORAL_STRIDE))


class LatentDecoder:
    """One causal decode continued over several calls: feeding a video's latents in pieces yields exactly the
    pixels of decoding them at once (conv2 is 1x1x1, the decoder carries its causal tails in the stream state),
    so frames can leave as soon as each piece of latents is denoised."""

    settle_still_latents = True  # False: advance runs every active part on a run of identical latent frames too

    def __init__(self, vae: WanVAE) -> None:
        self.vae = vae
        self.state = StreamState()
        self.latent_frames = 0  # fed so far

    def fork(self) -> LatentDecoder:
        """A decoder in this one's state that goes on independently (layers replace their tails, never edit them)."""
        twin = type(self)(self.vae)
        twin.state.tails = dict(self.state.tails)
        twin.state.started = set(self.state.started)
        twin.latent_frames = self.latent_frames
        return twin

    @torch.no_grad()
    def feed(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Pixels [B, 3, t, H, W] in [-1, 1] (float32) per latent frame: t = 1 for the video's first, then 4."""
        vae = self.vae
        for x in self._inputs(latents):
            pixels = vae.decoder(x, self.state).float().clamp_(-1.0, 1.0).contiguous()
            self.latent_frames += 1
            yield pixels

    @torch.no_grad()
    def advance(self, latents: torch.Tensor) -> None:
        """The state `feed` would leave, without the pixels: per latent frame only the parts of the decoder whose
        work the final state depends on (decoder_steps), so the full-resolution parts run for the last few frames
        only. Exact: each part runs its usual chunk shapes on the same inputs over the frames that count; where it
        starts late, its first outputs (from zero or stale tails) fall outside what the final state depends on.

        On a run of identical latent frames (a still photo's history) the parts run as a _SettlingChain from the
        run's second frame on: each only until it settles, bitwise what running them all gives."""
        vae, steps = self.vae, decoder_steps(self.vae)
        parts, frames = vae.decoder.parts(), latents.shape[2]
        chain, previous = None, None
        for i, x in enumerate(self._inputs(latents)):
            active = sum(1 for needed in steps if needed >= frames - i)
            if self.latent_frames:  # a part starting late is past the video's first frame, as the others are
                self.state.started.update(p for p in parts[:active] if isinstance(p, Resample)
                                          and p.mode == "upsample3d")
            if self.settle_still_latents and previous is not None and torch.equal(x, previous):
                chain = chain or _SettlingChain([(part, functools.partial(run_part, part)) for part in parts])
                chain(x, self.state, active)
            else:
                chain = None
                if active:
                    vae.decoder(x, self.state, parts=active)
            previous = x
            self.latent_frames += 1

    def _inputs(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        vae = self.vae
        _check_latents(latents, vae.z_dim)
        z = latents.to(device=vae.device, dtype=torch.float32)
        mean, inv_std = vae._stats(z)
        for i in range(z.shape[2]):  # conv2 per frame too: the same shapes however the latents were split
            yield vae.conv2((z[:, :, i : i + 1] / inv_std + mean).to(vae.dtype))


def decoder_steps(vae: WanVAE) -> list[int]:
    """Per part of the decoder (Decoder3d.parts): K such that the state of that part and of every part after it,
    after any number of latent frames, depends only on the part's input during the last K of them. The first
    part's K is decoder_memory; the full-resolution parts' are a few.

    Walking back from the output, in frames at each part's input rate (1, 2 or 4 per latent frame): a causal conv
    needs its `past` earlier frames; a time upsampler needs ceil(n / 2) of its input for n output frames, plus its
    own conv's past. The first latent frame's special case (not upsampled in time) then falls outside what the
    state depends on."""
    parts, rates, rate = vae.decoder.parts(), [], 1
    for part in parts:
        rates.append(rate)
        rate *= 2 if isinstance(part, Resample) and part.mode == "upsample3d" else 1
    need, steps = 0, []
    for part, rate in zip(reversed(parts), reversed(rates), strict=True):
        if isinstance(part, Resample) and part.mode == "upsample3d":
            need = -(-need // 2) + part.time_conv.past
        else:
            need += sum(m.past for m in part.modules() if isinstance(m, CausalConv3d))
        steps.append(-(-need // rate))
    return steps[::-1]


def decoder_memory(vae: WanVAE) -> int:
    """R: the decoder's state after any number of latent frames depends only on the last R of them, so a fresh
    LatentDecoder fed just those is in the same state (38 for the Wan 2.1 layout at any width)."""
    return decoder_steps(vae)[0]


def encoder_memory(vae: WanVAE) -> int:
    """The pixel frames before a latent frame's last frame that it depends on (112 for the Wan 2.1 layout): the
    last K latent frames of encoding 1 + 4k frames are those of encoding only the last 4 (K - 1) + 113 of them
    (a start 4j frames later keeps the 4-frame grouping).

    Walking back: a causal conv needs its `past` frames; a time downsampler (kernel 3, stride 2, windows from
    the first frame) needs 2n + 2 input frames for n output frames."""
    need = vae.conv1.past
    for module in reversed(list(vae.encoder.modules())):
        if isinstance(module, Resample) and module.mode == "downsample3d":
            need = 2 * need + module.time_conv.kernel_size[0] - 1
        elif isinstance(module, CausalConv3d):
            need += module.past
    return need


def still_frames(video: torch.Tensor, limit: int | None = None, step: int = 16) -> int:
    """How many of the first `limit` (all) frames of [B, C, T, H, W] are bitwise the first one; compared `step`
    frames at a time, so a moving video costs one small comparison and a still one no copy of itself."""
    limit = video.shape[2] if limit is None else limit
    first = video[:, :, :1]
    for start in range(1, limit, step):
        piece = video[:, :, start : min(start + step, limit)]
        same = (piece == first).flatten(3).all(dim=3).all(dim=1).all(dim=0)
        if not bool(same.all()):
            return start + int(same.int().argmin())
    return min(limit, video.shape[2])


def _check_video(video: torch.Tensor) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, T, H, W], got {tuple(video.shape)}")
    t, h, w = video.shape[2:]
    if (t - 1) % TEMPORAL_STRIDE or h % SPATIAL_STRIDE or w % SPATIAL_STRIDE:
        raise ValueError(
            f"video of {t} frames of {h}x{w}: the VAE needs 1 + 4k frames and sides that are multiples of 8"
        )


def _check_latents(latents: torch.Tensor, z_dim: int) -> None:
    if latents.ndim != 5 or latents.shape[1] != z_dim or latents.shape[2] < 1:
        raise ValueError(f"latents must be [B, {z_dim}, T>=1, h, w], got {tuple(latents.shape)}")


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """[C, T, h, w] of the latents of a video of `frames` x `height` x `width`."""
    return Z_DIM, 1 + (frames - 1) // TEMPORAL_STRIDE, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE


# ---- strict loading of official checkpoints (shared with the text encoder) ----


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a bare official state dict (`torch.save(model.state_dict())`), memory-mapped if possible."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"checkpoint {path} does not exist")
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in torch's legacy (non-zip) format cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, an HTML error page saved as .pth, ...
        raise WeightsUnavailable(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsUnavailable(f"checkpoint {path} is not a state dict of tensors")
    return dict(data)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise WeightsUnavailable naming every missing, unexpected and mis-shaped key (works on meta models)."""
    strict_check(model, state, f"{source} does not match {type(model).__name__}", optional_suffixes=())


def load_into_meta(model: nn.Module, path: Path, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Fill a model built on the meta device from an official checkpoint, strictly, without a second copy."""
    state = read_checkpoint(path)
    check_state_dict(model, state, str(path))
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded %d tensors from %s", len(state), path)
    return model.eval().requires_grad_(False)


def load_vae(
    path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, dim: int = OFFICIAL_DIM
) -> WanVAE:
    """The VAE with the weights of an official `Wan2.1_VAE.pth` (or a smaller one of the same layout)."""
    with torch.device("meta"):
        model = WanVAE(dim=dim)
    return load_into_meta(model, path, device, dtype)
