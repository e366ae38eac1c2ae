"""LoRA files of the public Wan releases (lora.py): their layouts read, merged = the unmerged LoRA forward, and
every malformed file refused by name before any weight changes.

Layouts, written here in the releases' key formats with tiny random tensors:
* LiveAvatar (Quark-Vision/Live-Avatar liveavatar.safetensors): PEFT keys `[base_model.model.]<module>.lora_A.default
  .weight`, rank 128, alpha 64 (liveavatar/configs/s2v_causal_sft.yaml), on every q, k, v, o, ffn.0, ffn.2 module:
  448 modules of the 14B S2V DiT, i.e. 896 tensors (the count a third-party port reported for the released file).
* LightX2V (lightx2v/Wan2.1-Distill-Loras, e.g. wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors, written by
  LightX2V's tools/extract/lora_extractor.py): `diffusion_model.<module>.lora_down.weight` / `.lora_up.weight`,
  no alpha, plus `.diff` / `.diff_b` / `.diff_m` for small and 1-D tensors.
* Wan2.2-Lightning: the same with `diffusion_model.<module>.alpha` scalars.
The reference for the merge is the unmerged LoRA forward (y = W x + s B A x through forward hooks, differences added
to a copy's parameters), not the merge formula restated.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from wan_fixtures.tiny import TINY_S2V_CONFIG
from wan_fixtures.tiny_release import make_tiny_liveavatar_lora

from python_backends.generation.wan.common.checkpoint import CheckpointError
from python_backends.generation.wan.common.configs import WanS2VTransformerConfig
from python_backends.generation.wan.common.lora import merge_lora_, parse_lora, peft_targets, read_lora_file
from python_backends.generation.wan.s2v.liveavatar_engine import LORA_ALPHA, LORA_RANK, LORA_TARGETS
from python_backends.generation.wan.s2v.model import DEFAULT_MOTION_FRAMES, build_s2v_model, meta_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return build_s2v_model(TINY_S2V_CONFIG, seed=3)


def inputs(model: nn.Module) -> tuple:
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    return (torch.randn(1, cfg.in_dim, 2, 8, 8, generator=g), torch.tensor([700.0]),
            [torch.randn(5, cfg.text_dim, generator=g)], torch.randn(1, cfg.in_dim, 1, 8, 8, generator=g),
            torch.randn(1, 16, DEFAULT_MOTION_FRAMES[1], 8, 8, generator=g),
            torch.randn(1, cfg.audio_layers, cfg.audio_dim, 8, generator=g))


class LoraBranch(nn.Module):
    """A linear layer with its LoRA as a separate branch, y = W x + b + s B (A x): not an nn.Linear, so our DiT's
    `linear()` calls it as it is (as it calls FP8Linear)."""

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.base, self.down, self.up, self.scale = base, down, up, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.down), self.up)


@torch.no_grad()
def unmerged_forward(model: nn.Module, pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                     diffs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The forward with the LoRA applied at run time: each target layer replaced by its LoRA branch."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    for name, diff in diffs.items():
        params[name].add_(diff)
    for name, (down, up, scale) in pairs.items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, LoraBranch(getattr(owner, child), down, up, scale))
    return model(*inputs(model))


def random_pairs(model: nn.Module, names, rank: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(names):
        o, i = modules[name].weight.shape
        out[name] = (torch.randn(rank, i, generator=g) / i**0.5, torch.randn(o, rank, generator=g) * 0.05)
    return out


# ---------------------------------------------------------------- LiveAvatar (PEFT)


def test_liveavatar_targets_are_448_modules_of_the_14b_dit() -> None:
    targets = peft_targets(meta_model(WanS2VTransformerConfig()), LORA_TARGETS)
    per_block = {f"blocks.0.{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"} | {"blocks.0.ffn.0",
                                                                                           "blocks.0.ffn.2"}
    assert len(targets) == 40 * 10 + 12 * 4 and per_block <= targets
    assert {f"audio_injector.injector.11.{p}" for p in "qkvo"} <= targets  # peft's suffix match takes them too
    assert not any("norm" in t or "embedding" in t or "head" in t for t in targets)


@pytest.mark.parametrize("prefix", ["base_model.model.", ""])
def test_liveavatar_file_merges_to_its_unmerged_forward(base: nn.Module, tmp_path: Path, prefix: str) -> None:
    path = make_tiny_liveavatar_lora(tmp_path, seed=1, prefix=prefix)
    state = read_lora_file(path)
    targets = peft_targets(base, LORA_TARGETS)
    assert len(state) == 2 * len(targets) and all(".default.weight" in key for key in state)
    assert {t.shape[0] for k, t in state.items() if "lora_A" in k} == {LORA_RANK}
    pairs = {name: (state[f"{prefix}{name}.lora_A.default.weight"].float(),
                    state[f"{prefix}{name}.lora_B.default.weight"].float(), LORA_ALPHA / LORA_RANK)
             for name in targets}
    expected = unmerged_forward(base, pairs, {})
    merged = merge_lora_(copy.deepcopy(base), path, alpha=LORA_ALPHA, targets=targets)
    with torch.no_grad():
        got = merged(*inputs(merged))
        plain = base(*inputs(base))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 100 * (got - expected).abs().max()  # the LoRA moved the output


def test_liveavatar_release_rules_refuse_a_partial_or_stray_file(base: nn.Module, tmp_path: Path) -> None:
    path = make_tiny_liveavatar_lora(tmp_path)
    state = read_lora_file(path)
    targets = peft_targets(base, LORA_TARGETS)
    partial = {k: v for k, v in state.items() if ".blocks.1.ffn.2." not in k}
    with pytest.raises(CheckpointError, match=r"1 target module\(s\) have no LoRA weights: blocks\.1\.ffn\.2"):
        merge_lora_(copy.deepcopy(base), parse_lora(partial, "liveavatar.safetensors"), targets=targets)
    stray = {**state, "text_embedding.0.lora_A.default.weight": torch.zeros(8, 4096),
             "text_embedding.0.lora_B.default.weight": torch.zeros(64, 8)}
    with pytest.raises(CheckpointError, match=r"does not target: text_embedding\.0"):
        merge_lora_(copy.deepcopy(base), parse_lora(stray, "x"), targets=targets)


# ---------------------------------------------------------------- LightX2V / Lightning


@pytest.mark.parametrize("with_alpha", [False, True], ids=["lightx2v", "lightning"])
def test_lightx2v_and_lightning_files_merge_to_their_unmerged_forward(base: nn.Module, tmp_path: Path,
                                                                      with_alpha: bool) -> None:
    names = [f"blocks.{b}.{a}.{p}" for b in (0, 1) for a in ("self_attn", "cross_attn") for p in "qkvo"]
    names += ["blocks.0.ffn.0", "blocks.1.ffn.2", "text_embedding.2", "audio_injector.injector.1.v"]
    rank, alpha, strength = 16, 8.0, 0.7
    state, pairs = {}, {}
    for name, (down, up) in random_pairs(base, names, rank).items():
        state[f"diffusion_model.{name}.lora_down.weight"] = down
        state[f"diffusion_model.{name}.lora_up.weight"] = up
        if with_alpha:
            state[f"diffusion_model.{name}.alpha"] = torch.tensor(alpha)
        pairs[name] = (down, up, strength * (alpha / rank if with_alpha else 1.0))
    params = dict(base.named_parameters())
    g = torch.Generator().manual_seed(9)
    diffs = {"blocks.0.norm3.weight": "blocks.0.norm3.diff", "blocks.1.self_attn.q.bias": "blocks.1.self_attn.q.diff_b",
             "blocks.0.modulation": "blocks.0.diff_m", "head.modulation": "head.diff_m",
             "patch_embedding.weight": "patch_embedding.diff"}
    deltas = {}
    for param, key in diffs.items():
        delta = torch.randn(params[param].shape, generator=g) * 0.05
        state[f"diffusion_model.{key}"] = delta
        deltas[param] = strength * delta
    path = tmp_path / "wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors"
    save_file(state, str(path))
    expected = unmerged_forward(base, pairs, deltas)
    merged = merge_lora_(copy.deepcopy(base), path, strength=strength)
    with torch.no_grad():
        got = merged(*inputs(merged))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.blocks[0].modulation, base.blocks[0].modulation + deltas["blocks.0.modulation"])


# ---------------------------------------------------------------- refusals, each naming the file and the key


def refused(model: nn.Module, state: dict[str, torch.Tensor], tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=pattern) as info:
        merge_lora_(model, path)
    assert str(path) in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing merged


def test_malformed_files_are_refused_by_name(base: nn.Module, tmp_path: Path) -> None:
    model = copy.deepcopy(base)
    (down, up), = random_pairs(base, ["blocks.0.self_attn.q"], 4).values()
    good = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up}
    refused(model, {**good, "blocks.0.self_attn.q.scale": torch.ones(1)}, tmp_path,
            r"1 key\(s\) are not LoRA weights .*: blocks\.0\.self_attn\.q\.scale")
    refused(model, {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down}, tmp_path,
            r"blocks\.0\.self_attn\.q has diffusion_model\.blocks\.0\.self_attn\.q\.lora_down\.weight but no "
            r"lora_B / lora_up weight")
    refused(model, {**good, "diffusion_model.blocks.0.ffn.0.alpha": torch.tensor(4.0)}, tmp_path,
            r"blocks\.0\.ffn\.0 has diffusion_model\.blocks\.0\.ffn\.0\.alpha but no lora_A / lora_down")
    refused(model, {k.replace("blocks.0.", "blocks.7."): v for k, v in good.items()}, tmp_path,
            r"diffusion_model\.blocks\.7\.self_attn\.q\.lora_\w+\.weight targets blocks\.7\.self_attn\.q, which "
            r"does not exist in this model")
    refused(model, {"diffusion_model.blocks.0.self_attn.norm_q.lora_down.weight": down,
                    "diffusion_model.blocks.0.self_attn.norm_q.lora_up.weight": up}, tmp_path,
            r"targets blocks\.0\.self_attn\.norm_q, which is not a linear layer")
    refused(model, {**good, "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up[:, :3]}, tmp_path,
            r"blocks\.0\.self_attn\.q down \(A\) \[4, 64\] / up \(B\) \[64, 3\] do not fit its \[64, 64\] weight")
    refused(model, {**good, "diffusion_model.blocks.0.norm3.diff_b": torch.zeros(3)}, tmp_path,
            r"diffusion_model\.blocks\.0\.norm3\.diff_b has shape \[3\], blocks\.0\.norm3\.bias is \[64\]")
    refused(model, {**good, "diffusion_model.blocks.0.norm1.diff": torch.zeros(64)}, tmp_path,
            r"diffusion_model\.blocks\.0\.norm1\.diff targets blocks\.0\.norm1\.weight, which does not exist")
    refused(model, {**good, "diffusion_model.blocks.0.self_attn.q.alpha": torch.ones(2)}, tmp_path,
            r"blocks\.0\.self_attn\.q\.alpha must be one number")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors is not a readable safetensors file"):
        read_lora_file(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match=r"LoRA file .*absent\.safetensors is missing"):
        read_lora_file(tmp_path / "absent.safetensors")


def test_checkpoint_files_hold_the_tensors_flat_or_under_state_dict(tmp_path: Path) -> None:
    tensors = {"blocks.0.ffn.0.lora_A.weight": torch.ones(2, 3), "blocks.0.ffn.0.lora_B.weight": torch.ones(3, 2)}
    torch.save({"state_dict": tensors}, tmp_path / "relighting_lora.ckpt")
    torch.save(tensors, tmp_path / "flat.pt")
    for name in ("relighting_lora.ckpt", "flat.pt"):
        assert read_lora_file(tmp_path / name).keys() == tensors.keys()
    torch.save({"state_dict": {"x": 1}}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="holds no LoRA tensors"):
        read_lora_file(tmp_path / "odd.ckpt")
