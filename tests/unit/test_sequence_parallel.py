"""Sequence parallelism (Ulysses) for the S2V transformer: N=1 is the plain forward, N=2 over gloo matches it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from wan_fixtures.tiny import TINY_S2V_CONFIG

from python_backends.generation.wan import build_s2v_model, cfg_forward
from python_backends.generation.wan.s2v.model import frame_spans
from python_backends.generation.wan.s2v.sequence_parallel import (
    SequenceGroup,
    SequenceParallelS2V,
    sequence_parallel_forward,
    split_sizes,
)


def make_inputs(batch: int, frames: int, height: int, width: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = TINY_S2V_CONFIG
    return dict(
        latents=torch.randn(batch, 16, frames, height, width, generator=g),
        timestep=torch.tensor([700.0 - 100 * i for i in range(batch)]),
        context=[torch.randn(5 + i, cfg.text_dim, generator=g) for i in range(batch)],
        ref_latents=torch.randn(batch, 16, 1, height, width, generator=g),
        motion_latents=torch.randn(batch, 16, 19, height, width, generator=g),
        audio=torch.randn(batch, 25, cfg.audio_dim, 4 * frames, generator=g),
    )


# (inputs, forward kwargs): with motion tokens, 352 tokens split 176/176 in the middle of latent frame 2;
# without them, 27 tokens split 14/13 (uneven) in the middle of frame 1.
CASES = {
    "motion": (dict(batch=1, frames=3, height=16, width=16, seed=1), {}),
    "odd_length_no_motion": (dict(batch=2, frames=2, height=6, width=6, seed=2), {"drop_motion_frames": True}),
}
NULL_CONTEXT = dict(seed=9, length=4)


def null_context() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(NULL_CONTEXT["seed"])
    return [torch.randn(NULL_CONTEXT["length"], TINY_S2V_CONFIG.text_dim, generator=g)]


def run_all(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every case through `model`, plus both CFG branches batched into one forward."""
    outs = {}
    with torch.no_grad():
        for name, (shape, kwargs) in CASES.items():
            outs[name] = model(**make_inputs(**shape), **kwargs)
        cond, uncond = cfg_forward(model, context_null=null_context(), **make_inputs(1, 2, 16, 16, seed=3))
    outs["cfg"] = torch.cat([cond, uncond])
    return outs


@pytest.fixture(scope="module")
def model():
    return build_s2v_model(TINY_S2V_CONFIG, device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture(scope="module")
def reference(model) -> dict[str, torch.Tensor]:
    return run_all(model)


def test_split_sizes_cover_the_sequence() -> None:
    assert split_sizes(27, 2) == [14, 13]
    assert split_sizes(352, 2) == [176, 176]
    assert split_sizes(10, 4) == [3, 3, 2, 2]
    assert split_sizes(5, 1) == [5]


def test_frame_spans_cut_at_frame_edges() -> None:
    assert frame_spans(0, 192, 64) == [(0, 192)]  # whole clip: one batch of whole frames, as the plain forward
    assert frame_spans(0, 176, 64) == [(0, 128), (128, 176)]
    assert frame_spans(176, 192, 64) == [(176, 192)]
    assert frame_spans(9, 14, 9) == [(9, 14)]
    assert frame_spans(5, 14, 9) == [(5, 9), (9, 14)]
    assert frame_spans(5, 30, 9) == [(5, 9), (9, 27), (27, 30)]
    assert frame_spans(14, 10, 9) == []


def test_one_rank_is_the_plain_forward_exactly(model, reference) -> None:
    assert not dist.is_initialized()
    wrapper = SequenceParallelS2V(model)
    assert not wrapper.sharded and wrapper.config is model.config
    for name, out in run_all(wrapper).items():
        assert torch.equal(out, reference[name]), name
    # the sharded code path itself, with one rank, computes the same numbers bit for bit
    single = SequenceGroup()
    with torch.no_grad():
        for name, (shape, kwargs) in CASES.items():
            out = sequence_parallel_forward(model, single, **make_inputs(**shape), **kwargs)
            assert torch.equal(out, reference[name]), name


def test_one_rank_process_group_runs_the_collectives(model, reference, tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapper = SequenceParallelS2V(model, shard_single_rank=True)
        assert wrapper.sharded and wrapper.group.world == 1
        for name, out in run_all(wrapper).items():
            assert torch.equal(out, reference[name]), name
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = build_s2v_model(TINY_S2V_CONFIG, device="cpu", dtype=torch.float32, seed=0)
        outs = run_all(SequenceParallelS2V(model))
        torch.save(outs, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_over_gloo_match_one_process(reference, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        outs = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(outs) == set(reference)
        for name, out in outs.items():
            assert out.shape == reference[name].shape, name
            torch.testing.assert_close(out, reference[name], atol=1e-5, rtol=0, msg=name)
            assert out.abs().max() > 0.1  # a real prediction, not zeros


def test_heads_must_divide_over_the_ranks(model) -> None:
    group = SequenceGroup()
    group.world = 3  # as a 3-rank group would report; the check fires before any collective
    with pytest.raises(ValueError, match="2 attention heads cannot be split over 3 ranks"):
        sequence_parallel_forward(model, group, **make_inputs(1, 2, 16, 16, seed=1))
