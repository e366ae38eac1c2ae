"""LiveAvatar's block-causal streaming forward (causal_s2v.py) against our S2V DiT with LiveAvatar's attention mask.

LiveAvatar's code is not installable (not on PyPI), so it cannot be run as an oracle. The anchor instead: its
KV-cached streaming must compute, block for block, what one forward of the whole sequence computes under the
attention mask its model was trained with (`CausalWanModel_S2V._prepare_blockwise_causal_attn_mask`, written
out by hand below), through our S2V DiT, whose forward is proven equal to the official one (tests/parity). The
mask: a video token attends to the video tokens of its own block and the blocks before it (within the cache's
window), and to every condition (reference + motion) token; a condition token attends only to condition tokens.
The streaming side never forms that mask: it prefills the condition tokens alone, then runs each block alone
against cached keys and values, so agreement tests the cache (slots, window, positions, modulation, audio per
block) rather than restating it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from wan_fixtures.tiny import TINY_S2V_CONFIG

from python_backends.generation.wan.common.fp8 import quantize
from python_backends.generation.wan.common.scheduler import make_sampler
from python_backends.generation.wan.common.transformer import apply_rope, rope_cos_sin, unpatchify
from python_backends.generation.wan.s2v.causal import (
    REF_DISTANCES,
    CausalS2V,
    CondCache,
    KVRows,
    RefDistances,
    ref_shift,
    step_caches,
)
from python_backends.generation.wan.s2v.engine import compile_regions
from python_backends.generation.wan.s2v.model import DEFAULT_MOTION_FRAMES, WanS2VTransformer, build_s2v_model
from python_backends.transfer import to_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FRAMES, SIDE = 3, 8  # latent frames per block; latent side (FramePack's 4x patches need multiples of 8)


@pytest.fixture(scope="module")
def model() -> WanS2VTransformer:
    return build_s2v_model(TINY_S2V_CONFIG, seed=11)


def case(model: WanS2VTransformer, blocks: int, seed: int = 0) -> dict:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": [torch.randn(1, cfg.in_dim, FRAMES, SIDE, SIDE, generator=g) for _ in range(blocks)],
        "audio": [torch.randn(1, cfg.audio_layers, cfg.audio_dim, 4 * FRAMES, generator=g) for _ in range(blocks)],
        "ref": torch.randn(1, cfg.in_dim, 1, SIDE, SIDE, generator=g),
        "motion": torch.randn(1, 16, DEFAULT_MOTION_FRAMES[1], SIDE, SIDE, generator=g),
        "context": [torch.randn(6, cfg.text_dim, generator=g)],
    }


def streamed(model: WanS2VTransformer, x: dict, t: float, window: int, shift: int = 0,
             step: int = 1, fp8: bool = False) -> list[torch.Tensor]:
    """The blocks streamed through step `step`'s cache of two (0: the ring left of the shared condition)."""
    causal = CausalS2V(model)
    cond = causal.prefill(x["ref"], x["motion"], x["context"])
    cache = causal.new_step_caches(cond, 2, window, SIDE, SIDE, fp8)[step]
    return [causal.block(latents, torch.tensor([t]), audio, cache, block=b, frame_start=b * FRAMES, shift=shift)
            for b, (latents, audio) in enumerate(zip(x["latents"], x["audio"]))]


def training_mask(n_video: int, per_block: int, seq: int, window: int) -> torch.Tensor:
    """[seq, seq] True where query i may attend to key j (video tokens first, then the condition tokens)."""
    i, j = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    video_q, video_k = i < n_video, j < n_video
    block_q, block_k = i // per_block, j // per_block
    in_window = (block_k <= block_q) & (block_k > block_q - window)
    return (video_q & video_k & in_window) | (video_q & ~video_k) | (~video_q & ~video_k)


@torch.no_grad()
def masked_full_forward(model: WanS2VTransformer, x: dict, t: float, window: int) -> torch.Tensor:
    """One forward of our S2V DiT over all blocks with the training mask; each block's audio encoded on its own,
    as LiveAvatar's inference encodes it (its training forward encodes the clip's audio at once)."""
    latents = torch.cat(x["latents"], dim=2)
    tokens = model.prepare_tokens(latents, torch.tensor([t]), x["context"], x["ref"], x["motion"],
                                  torch.cat(x["audio"], dim=-1), motion_frames=DEFAULT_MOTION_FRAMES)
    per_block = [model.audio_tokens(a, 1, DEFAULT_MOTION_FRAMES) for a in x["audio"]]
    tokens = tokens._replace(audio_local=torch.cat([a for a, _ in per_block], dim=1),
                             audio_global=torch.cat([g for _, g in per_block], dim=1))
    per_block_tokens = tokens.n_video // len(x["latents"])
    mask = training_mask(tokens.n_video, per_block_tokens, tokens.x.shape[1], window)

    def masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q.to(v.dtype).transpose(1, 2), k.to(v.dtype).transpose(1, 2),
                                             v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)

    out = model.head(model.run_blocks(tokens, lambda index: masked)[:, : tokens.n_video], tokens.e)
    return unpatchify(out, tokens.grid, model.config.patch_size, model.config.out_dim)


@pytest.mark.parametrize("step", [0, 1], ids=["left-ring", "right-ring"])
@pytest.mark.parametrize("blocks,window", [(1, 4), (3, 4), (4, 2)], ids=["one-block", "in-window", "ring"])
def test_streaming_equals_the_masked_full_forward(model: WanS2VTransformer, blocks: int, window: int,
                                                  step: int) -> None:
    x = case(model, blocks)
    for t in (1000.0, 602.15):
        full = masked_full_forward(model, x, t, window)
        for b, out in enumerate(streamed(model, x, t, window, step=step)):
            torch.testing.assert_close(out, full[:, :, b * FRAMES : (b + 1) * FRAMES], rtol=1e-5, atol=1e-5,
                                       msg=lambda m, b=b, t=t: f"block {b}, t={t}: {m}")


def test_blocks_see_the_past_never_the_future(model: WanS2VTransformer) -> None:
    """Continuity across blocks comes through the cache: changing block 0 moves block 1's output, changing
    block 1 leaves block 0 as it was; outside the window a block is forgotten."""
    x = case(model, 3)
    base = streamed(model, x, 857.69, window=2)
    first = dict(x, latents=[x["latents"][0] * 0.5, *x["latents"][1:]])
    moved = streamed(model, first, 857.69, window=2)
    assert (moved[1] - base[1]).abs().max() > 1e-3
    assert not torch.equal(moved[2], base[2])  # block 2 sees block 1, which saw block 0 at every layer
    later = dict(x, latents=[*x["latents"][:2], x["latents"][2] * 0.5])
    again = streamed(model, later, 857.69, window=2)
    torch.testing.assert_close(again[0], base[0], rtol=0, atol=0)
    torch.testing.assert_close(again[1], base[1], rtol=0, atol=0)


def test_reference_rollout_moves_only_the_reference_keys(model: WanS2VTransformer) -> None:
    # rotations compose, so rotating the prefill's keys (frame 30) by n puts them at frame 30 + n
    cfg = model.config
    k = torch.randn(1, 5, cfg.num_heads, cfg.head_dim)
    at = {f: rope_cos_sin(torch.tensor([[f, 2, 3]] * 5), cfg.head_dim) for f in (30, 37)}
    by7 = rope_cos_sin(torch.tensor([[7, 0, 0]]), cfg.head_dim)
    torch.testing.assert_close(apply_rope(apply_rope(k, *at[30]), *by7), apply_rope(k, *at[37]), rtol=1e-5,
                               atol=1e-5)
    # the release: max(0, f0 - (30 - d)) with d in 4..30
    assert ref_shift(0, 30) == 0 and ref_shift(12, 4) == 0 and ref_shift(12, 30) == 12 and ref_shift(40, 10) == 20
    x = case(model, 1)
    assert (streamed(model, x, 500.0, 4, shift=5)[0] - streamed(model, x, 500.0, 4)[0]).abs().max() > 1e-4


def test_reference_distances_are_seeded_or_fixed() -> None:
    a, b = RefDistances(3), RefDistances(3)
    first = [a.next() for _ in range(200)]
    assert first == [b.next() for _ in range(200)] != [RefDistances(4).next() for _ in range(200)]
    assert min(first) == REF_DISTANCES[0] and max(first) == REF_DISTANCES[1]
    assert {RefDistances(0, fixed=12).next() for _ in range(5)} == {12}
    with pytest.raises(ValueError):
        RefDistances(0, fixed=31)


def test_two_step_caches_share_the_condition_between_their_rings() -> None:
    cond_k, cond_v = torch.full((1, 3, 2, 8), -1.0), torch.full((1, 3, 2, 8), -2.0)  # 2 reference + 1 motion token
    cond_k[:, 2] = -3.0
    left, right = step_caches(CondCache([cond_k], [cond_v], n_ref=2, text=[]), steps=2, window=2, block_tokens=4)
    assert left.shared is right.shared and left.shared.keys[0].tokens == 8 + 3 + 8  # two rings of 2 blocks
    blocks = [torch.full((1, 4, 2, 8), float(i)) for i in range(3)]
    keys, values = left.store(0, 0, blocks[0], blocks[0])
    assert keys[0, :, 0, 0].tolist() == [0] * 4 + [-1, -1, -3] and values[0, 4:, 0, 0].tolist() == [-2] * 3
    keys, _ = right.store(0, 0, blocks[1] * 10, blocks[1] * 10)  # the other step's block 0
    assert keys[0, :, 0, 0].tolist() == [-1, -1, -3] + [10] * 4
    for cache in (left, right):
        cache.store(0, 1, blocks[1], blocks[1])
        keys, _ = cache.store(0, 2, blocks[2], blocks[2])  # overwrites block 0's slot
        assert keys.shape[1] == 11 and sorted(keys[0, :, 0, 0].unique().tolist()) == [-3.0, -1.0, 1.0, 2.0]
    (alone,) = step_caches(CondCache([cond_k], [cond_v], n_ref=2, text=[]), steps=1, window=2, block_tokens=4)
    assert alone.shared.keys[0].tokens == 3 + 8  # an odd step out has one ring
    with pytest.raises(ValueError, match="same token count"):
        right.store(0, 3, torch.zeros(1, 5, 2, 8), torch.zeros(1, 5, 2, 8))


def test_fp8_rows_keep_each_value_to_e4m3s_rounding_in_a_byte() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 2, 16, generator=g) * torch.logspace(-3, 3, 6).view(1, 6, 1, 1)  # rows far apart in scale
    rows = KVRows(x, 10, fp8=True)
    rows.write(slice(2, 8), x)
    back = rows.read(slice(2, 8))
    assert rows.data.element_size() == 1 and back.dtype == x.dtype and back.shape == x.shape
    amax = x.abs().amax(dim=-1, keepdim=True)
    # e4m3: 3 mantissa bits (half a step is 2^-4 of the value), subnormal steps of 2^-9 of the row's scale
    assert ((back - x).abs() <= x.abs() * 2**-4 + amax / 448 * 2**-10).all()
    assert not torch.equal(back, x)
    plain = KVRows(x, 10)
    plain.write(slice(2, 8), x)
    assert plain.scale is None and torch.equal(plain.read(slice(2, 8)), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fused (de)quantisation is a Triton kernel)")
@pytest.mark.parametrize("batch", [1, 2])
def test_fp8_rows_written_and_read_on_the_gpu_are_the_eager_values(batch: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, 300, 40, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    x = x * torch.logspace(-3, 3, 300, device="cuda").view(1, 300, 1, 1).to(x.dtype)  # rows far apart in scale
    rows = KVRows(x, 320, fp8=True)
    rows.data.view(torch.uint8).fill_(0x7F)  # NaN in e4m3: any byte the write should not touch stays one
    rows.write(slice(10, 310), x)
    q, scale = quantize(x, "rowwise")
    assert torch.equal(rows.data[:, 10:310].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(rows.scale[:, 10:310], scale.to(rows.scale.dtype))
    assert (rows.data[:, :10].view(torch.uint8) == 0x7F).all() and (rows.data[:, 310:].view(torch.uint8) == 0x7F).all()
    fused = rows.read(slice(17, 299))
    assert torch.equal(fused, rows.data[:, 17:299].to(torch.bfloat16) * rows.scale[:, 17:299])


def test_fp8_caches_stream_what_exact_caches_do_to_fp8_rounding(model: WanS2VTransformer) -> None:
    x = case(model, 4)
    for t in (1000.0, 602.15):
        for b, (exact, fp8) in enumerate(zip(streamed(model, x, t, 2), streamed(model, x, t, 2, fp8=True))):
            error = ((fp8 - exact).norm() / exact.norm()).item()
            assert 0 < error < 0.01, f"block {b}, t={t}: relative error {error:.4f}"  # measured 0.14-0.22 %


def test_step_cache_rolls_out_the_reference_keys_and_back() -> None:
    g = torch.Generator().manual_seed(0)
    cond_k, cond_v = torch.randn(1, 3, 2, 8, generator=g), torch.randn(1, 3, 2, 8, generator=g)
    left, right = step_caches(CondCache([cond_k], [cond_v], n_ref=2, text=[]), steps=2, window=1, block_tokens=1)
    block = torch.zeros(1, 1, 2, 8)
    by5 = rope_cos_sin(torch.tensor([[5, 0, 0]]), 8)
    keys, _ = left.store(0, 0, block, block, 5, by5)
    torch.testing.assert_close(keys[:, 1:3], apply_rope(cond_k[:, :2], *by5))
    assert torch.equal(keys[:, 3], cond_k[:, 2])  # motion keys keep their positions
    keys, _ = right.store(0, 0, block, block, 0)
    assert torch.equal(keys[:, :3], cond_k)  # the next step's forward without rollout sees the prefill's keys


def test_compiled_regions_do_not_recompile_per_layer(model: WanS2VTransformer) -> None:
    """Every layer's compiled block (and audio injection) must reuse one graph: the streaming attention once closed
    over the layer index, so torch.compile recompiled per layer, hit its limit of 8 and ran the 40 blocks of the
    14B eagerly."""
    import copy

    import torch._dynamo

    compiled = copy.deepcopy(model)
    assert len(compiled.blocks) == 2 and len(compiled.audio_injector.injector) == 2
    compile_regions(compiled, backend="eager")
    x = case(compiled, blocks=3)
    torch._dynamo.reset()
    # One graph for the prefill's token count and one for a block's: a third compile means a guard on the layer.
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        out = streamed(compiled, x, t=500.0, window=2)
    torch._dynamo.reset()
    reference = streamed(model, x, t=500.0, window=2)
    assert all(torch.equal(a, b) for a, b in zip(out, reference))


def test_the_release_residual_stream_leaves_each_block_in_bf16(model: WanS2VTransformer) -> None:
    """LiveAvatar's blocks return the residual stream in bf16 (WanAttentionBlock.residual_dtype): with it set, every
    block hands on bf16 and the flow stays within bf16 rounding of the official float32 stream's."""
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    x = case(bf16, blocks=2)
    official = streamed(bf16, x, t=500.0, window=2)
    seen: list[torch.dtype] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for block in bf16.blocks]
    for block in bf16.blocks:
        block.residual_dtype = torch.bfloat16
    try:
        release = streamed(bf16, x, t=500.0, window=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    for a, b in zip(release, official):
        assert not torch.equal(a, b)
        assert float((a - b).norm() / b.norm()) < 1e-2


def test_to_device_keeps_a_host_tensor_on_the_cpu() -> None:
    t = torch.arange(6.0)
    assert torch.equal(to_device(t, "cpu"), t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_block_forward_does_not_wait_for_the_gpu(model: WanS2VTransformer) -> None:
    """A forward per denoising step: a copy that synchronises the stream (a pageable .to(device), .item()) makes
    the GPU idle while the CPU queues the next forward's first kernels."""
    import copy

    cuda_model = copy.deepcopy(model).cuda()
    x = {k: [t.cuda() for t in v] if isinstance(v, list) else v.cuda() for k, v in case(cuda_model, 2).items()}
    causal = CausalS2V(cuda_model)
    cache = causal.new_step_caches(causal.prefill(x["ref"], x["motion"], x["context"]), 1, 2, SIDE, SIDE)[0]
    t = make_sampler("euler-diffusers", 4, 3.0).timestep("cuda")
    causal.block(x["latents"][0], t, x["audio"][0], cache, block=0, frame_start=0)  # lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t = make_sampler("euler-diffusers", 4, 3.0).timestep("cuda")
        causal.block(x["latents"][1], t, x["audio"][1], cache, block=1, frame_start=FRAMES, shift=5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
