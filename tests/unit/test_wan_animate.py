"""Wan2.2-Animate transformer + CLIP vision tower: official layouts, strict loading, forward, 14B fingerprints."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from wan_fixtures.tiny_animate import (
    TINY_ANIMATE_CONFIG,
    TINY_CLIP_VISION,
    make_tiny_animate_checkpoint,
)

from python_backends.errors import ConfigError, InputError
from python_backends.generation.job import GenerationJob, GenerationParams
from python_backends.generation.stage_pipeline import busy_stage_threads
from python_backends.generation.wan.animate.checkpoint import load_animate_transformer, read_animate_config
from python_backends.generation.wan.animate.clip_vision import (
    CLIP_FILE,
    CLIP_VIT_H_14,
    load_clip_vision,
    meta_clip_vision,
    xlm_roberta_text_shapes,
)
from python_backends.generation.wan.animate.configs import (
    ANIMATE_14B,
    WanAnimateTransformerConfig,
    from_animate_config,
    to_animate_config,
)
from python_backends.generation.wan.animate.engine import (
    AnimateConditioning,
    WanAnimateEngine,
    WanAnimateOptions,
    conditioning_from_driving,
)
from python_backends.generation.wan.animate.face import Blur, Direction, FaceBlock
from python_backends.generation.wan.animate.model import (
    WanAnimateTransformer,
    build_animate_model,
    cfg_forward,
    count_animate_parameters,
    meta_animate_model,
)
from python_backends.generation.wan.animate.pose import (
    AAPOSE_COLORS,
    AAPOSE_KEYPOINTS,
    body_keypoints,
    crop_face,
    face_box,
    head_keypoints,
    i2v_mask,
    padding_resize,
    ping_pong_indices,
    render_pose,
    stick_width,
    valid_length,
)
from python_backends.generation.wan.common.checkpoint import CONFIG_FILE, INDEX_FILE, CheckpointError, shard_name
from python_backends.generation.wan.common.lora import merge_lora_, read_lora_file, relighting_targets

# What diffusers' ConfigMixin writes for WanAnimateModel built with wan/configs/wan_animate_14B.py's values
# (WanAnimateModel has no ignore_for_config, so every __init__ argument is a field).
OFFICIAL_14B_CONFIG_JSON = {
    "_class_name": "WanAnimateModel",
    "_diffusers_version": "0.35.1",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 36,
    "dim": 5120,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 40,
    "num_layers": 40,
    "window_size": [-1, -1],
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "motion_encoder_dim": 512,
    "use_context_parallel": False,
    "use_img_emb": True,
}
# DiffSynth-Studio identifies released files by the md5 of their sorted "key:shape" and "key" strings
# (diffsynth/configs/model_configs.py): Wan2.2-Animate-14B diffusion_pytorch_model*.safetensors, and the
# models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth shared with Wan2.1-I2V.
OFFICIAL_14B_KEYS_MD5 = "31fa352acb8a1b1d33cd8764273d80a2"
OFFICIAL_14B_TENSORS = 1441
PARAMS_14B = 17_274_816_884
OFFICIAL_CLIP_KEYS_MD5 = "5941c53e207d62f20f9025686193c40b"
CLIP_VISION_PARAMS = 632_076_800


def fingerprint(shapes: dict[str, tuple[int, ...]]) -> str:
    strings = sorted([f"{k}:{'_'.join(map(str, s))}" for k, s in shapes.items()] + list(shapes))
    return hashlib.md5(",".join(strings).encode()).hexdigest()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_animate_checkpoint(tmp_path_factory.mktemp("wan_animate_tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint: Path) -> WanAnimateTransformer:
    return load_animate_transformer(tiny_checkpoint, device="cpu", dtype=torch.float32)


def tiny_inputs(batch: int = 1, clip_frames: int = 1, h: int = 4, w: int = 6, seed: int = 1) -> dict:
    """Inputs for `clip_frames` latent frames (4 (n - 1) + 1 driving frames) plus the reference frame."""
    g = torch.Generator().manual_seed(seed)
    cfg = TINY_ANIMATE_CONFIG
    f = clip_frames + 1
    size = cfg.face_size
    return dict(
        latents=torch.randn(batch, 16, f, h, w, generator=g),
        timestep=torch.tensor([700.0]),
        context=[torch.randn(5 + i, cfg.text_dim, generator=g) for i in range(batch)],
        y=torch.randn(batch, 20, f, h, w, generator=g),
        pose_latents=torch.randn(batch, 16, f - 1, h, w, generator=g),
        clip_features=torch.randn(batch, TINY_CLIP_VISION.tokens, cfg.image_dim, generator=g),
        face_pixels=torch.rand(batch, 3, 4 * (clip_frames - 1) + 1, size, size, generator=g) * 2 - 1,
    )


def key_patterns(keys) -> set[str]:
    return {re.sub(r"\.\d+\.", ".N.", key) for key in keys}


def rewrite_shard_of(folder: Path, key: str, edit) -> Path:
    """Apply edit(tensors, weight_map) to the shard holding `key`; write shard and index back."""
    index = json.loads((folder / INDEX_FILE).read_text())
    shard = folder / index["weight_map"][key]
    tensors = load_file(shard)
    edit(tensors, index["weight_map"])
    save_file(tensors, shard, metadata={"format": "pt"})
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return shard


# -- layout and strict loading ------------------------------------------------------------------------------------


def test_tiny_checkpoint_has_the_official_layout(tiny_checkpoint: Path) -> None:
    names = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert names == sorted([CONFIG_FILE, INDEX_FILE, CLIP_FILE] + [shard_name(i, 4) for i in range(1, 5)])
    config = json.loads((tiny_checkpoint / CONFIG_FILE).read_text())
    assert config["_class_name"] == "WanAnimateModel"
    assert set(OFFICIAL_14B_CONFIG_JSON) <= set(config)  # every official field, plus the shrunk extensions
    index = json.loads((tiny_checkpoint / INDEX_FILE).read_text())
    shards = {tiny_checkpoint / name for name in index["weight_map"].values()}
    tensors = {k: v for s in shards for k, v in load_file(s).items()}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}  # released shards are bf16
    # every key name pattern of the real 14B model (blur kernels included), and nothing else
    real = meta_animate_model(WanAnimateTransformerConfig()).state_dict()
    assert key_patterns(index["weight_map"]) == key_patterns(real)
    assert sum(k.endswith(".kernel") for k in real) == 14  # conv2 and skip of each of the 7 residual blocks
    assert sum(k.endswith(".kernel") for k in tensors) == 2 * (len(TINY_ANIMATE_CONFIG.motion_channels) - 1)


def test_tiny_checkpoint_loads_strictly(tiny_checkpoint: Path, tiny_model: WanAnimateTransformer) -> None:
    assert read_animate_config(tiny_checkpoint) == TINY_ANIMATE_CONFIG
    assert all(not p.requires_grad for p in tiny_model.parameters())
    stored = load_file(tiny_checkpoint / shard_name(1, 4))
    state = tiny_model.state_dict()
    for key, tensor in stored.items():
        torch.testing.assert_close(state[key], tensor.float(), atol=0, rtol=0)
    kernel = tiny_model.motion_encoder.enc.net_app.convs[1].conv2[0].kernel
    torch.testing.assert_close(kernel, torch.outer(*[torch.tensor([1.0, 3, 3, 1])] * 2) / 64)


def test_missing_key_is_rejected_by_name(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    key = "face_adapter.fuser_blocks.0.linear1_kv.weight"
    rewrite_shard_of(folder, key, lambda t, m: (t.pop(key), m.pop(key)))
    with pytest.raises(CheckpointError, match=r"missing: face_adapter\.fuser_blocks\.0\.linear1_kv\.weight") as err:
        load_animate_transformer(folder)
    assert INDEX_FILE in str(err.value)


def test_missing_blur_kernel_is_rejected_by_name(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    key = "motion_encoder.enc.net_app.convs.3.skip.0.kernel"
    rewrite_shard_of(folder, key, lambda t, m: (t.pop(key), m.pop(key)))
    with pytest.raises(CheckpointError, match=re.escape(key)):
        load_animate_transformer(folder)


def test_misshaped_key_is_rejected_by_name(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    key = "blocks.2.cross_attn.k_img.weight"  # [64, 64] in the tiny model
    rewrite_shard_of(folder, key, lambda t, m: t.__setitem__(key, torch.zeros(64, 32, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=re.escape(f"{key} has shape [64, 32], the model needs [64, 64]")):
        load_animate_transformer(folder)


def test_unexpected_key_and_wrong_class_are_rejected(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    key = "blocks.0.self_attn.q.weight"
    extra = "blocks.0.self_attn.q.lora_A.weight"

    def add(tensors, weight_map):
        tensors[extra] = torch.zeros(4, 64, dtype=torch.bfloat16)
        weight_map[extra] = weight_map[key]

    rewrite_shard_of(folder, key, add)
    with pytest.raises(CheckpointError, match=r"does not have: blocks\.0\.self_attn\.q\.lora_A\.weight"):
        load_animate_transformer(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "_class_name": "WanModel_S2V"}))
    with pytest.raises(CheckpointError, match="WanAnimateModel"):
        load_animate_transformer(folder)


# -- forward -------------------------------------------------------------------------------------------------------


def test_forward_is_finite_with_the_right_shape(tiny_model: WanAnimateTransformer) -> None:
    inputs = tiny_inputs(clip_frames=2)  # 5 driving frames -> 2 latent frames, + the reference frame
    with torch.no_grad():
        tokens = tiny_model.encode_face(inputs["face_pixels"])
        out = tiny_model(**inputs)
    assert tokens.shape == (1, 3, TINY_ANIMATE_CONFIG.face_heads + 1, TINY_ANIMATE_CONFIG.dim)
    assert tokens[:, 0].abs().max() == 0  # the reference frame gets no face tokens (official zero pad)
    assert out.shape == (1, 16, 3, 4, 6) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0.1


def test_every_condition_changes_the_prediction(tiny_model: WanAnimateTransformer) -> None:
    inputs = tiny_inputs(seed=2)
    with torch.no_grad():
        out = tiny_model(**inputs)
        changed = {
            "pose": tiny_model(**{**inputs, "pose_latents": torch.zeros_like(inputs["pose_latents"])}),
            "face": tiny_model(**{**inputs, "face_pixels": -torch.ones_like(inputs["face_pixels"])}),
            "clip": tiny_model(**{**inputs, "clip_features": torch.zeros_like(inputs["clip_features"])}),
            "text": tiny_model(**{**inputs, "context": [torch.zeros(3, TINY_ANIMATE_CONFIG.text_dim)]}),
            "y": tiny_model(**{**inputs, "y": torch.zeros_like(inputs["y"])}),
        }
    for name, other in changed.items():
        assert (out - other).abs().max() > 1e-3, name


def test_precomputed_face_tokens_and_batching_match(tiny_model: WanAnimateTransformer) -> None:
    inputs = tiny_inputs(batch=2, seed=4)
    with torch.no_grad():
        both = tiny_model(**inputs)
        tokens = tiny_model.encode_face(inputs["face_pixels"])
        reused = tiny_model(**{**inputs, "face_pixels": None}, face_tokens=tokens)
        rows = [tiny_model(**{k: (v[i:i + 1] if k != "timestep" else v) for k, v in inputs.items()})
                for i in range(2)]
    torch.testing.assert_close(reused, both, atol=1e-5, rtol=0)
    torch.testing.assert_close(both, torch.cat(rows), atol=1e-4, rtol=0)


def test_cfg_batched_forward_equals_two_forwards(tiny_model: WanAnimateTransformer) -> None:
    inputs = tiny_inputs(seed=3)
    null = [torch.randn(4, TINY_ANIMATE_CONFIG.text_dim, generator=torch.Generator().manual_seed(9))]
    with torch.no_grad():
        cond, uncond = cfg_forward(tiny_model, context_null=null, **inputs)
        cond_alone = tiny_model(**inputs)
        uncond_alone = tiny_model(**{**inputs, "context": null, "face_pixels": inputs["face_pixels"] * 0 - 1})
    torch.testing.assert_close(cond, cond_alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(uncond, uncond_alone, atol=1e-4, rtol=0)
    assert (cond - uncond).abs().max() > 1e-3


def test_mismatched_face_and_pose_lengths_are_refused(tiny_model: WanAnimateTransformer) -> None:
    inputs = tiny_inputs(clip_frames=2, seed=5)
    with pytest.raises(ValueError, match="face crops give 1 latent frames"), torch.no_grad():
        tiny_model(**{**inputs, "face_pixels": inputs["face_pixels"][:, :, :1]})
    with pytest.raises(ValueError, match="pose_latents"), torch.no_grad():
        tiny_model(**{**inputs, "pose_latents": inputs["pose_latents"][:, :, :1]})


# -- the face path's pieces ---------------------------------------------------------------------------------------


def test_face_block_keeps_frames_apart() -> None:
    torch.manual_seed(0)
    block = FaceBlock(32, 2)
    for p in block.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    x = torch.randn(1, 3 * 6, 32)  # 3 latent frames of 6 tokens
    motion = torch.randn(1, 3, 5, 32)
    other = motion.clone()
    other[:, 1] = torch.randn(5, 32)  # change the face tokens of frame 1 only
    with torch.no_grad():
        a, b = block(x, motion), block(x, other)
    diff = (a - b).abs().reshape(3, 6, 32).amax(dim=(1, 2))
    assert diff[1] > 1e-3 and diff[0] == 0 and diff[2] == 0


def test_direction_is_the_official_diagonal_sum() -> None:
    torch.manual_seed(0)
    direction = Direction(16, 5)
    torch.nn.init.normal_(direction.weight)
    alpha = torch.randn(3, 5)
    q, _ = torch.linalg.qr(direction.weight + 1e-8)
    official = torch.sum(torch.matmul(torch.diag_embed(alpha), q.T), dim=1)  # motion_encoder.Direction.forward
    torch.testing.assert_close(direction(alpha), official, atol=1e-5, rtol=0)


def test_blur_is_a_normalised_fir_filter() -> None:
    blur = Blur(pad=(2, 2))
    impulse = torch.zeros(1, 2, 5, 5)
    impulse[:, :, 2, 2] = 1.0
    out = blur(impulse)
    assert out.shape == (1, 2, 6, 6)  # H + pad0 + pad1 - 3
    torch.testing.assert_close(out[0, 0, 1:5, 1:5], torch.flip(blur.kernel, [0, 1]))
    flat = blur(torch.ones(1, 1, 8, 8))
    torch.testing.assert_close(flat[..., 2:-2, 2:-2], torch.ones(1, 1, 5, 5))


# -- CLIP vision tower --------------------------------------------------------------------------------------------


def test_tiny_clip_loads_and_encodes(tiny_checkpoint: Path) -> None:
    clip = load_clip_vision(tiny_checkpoint / CLIP_FILE)
    assert clip.config == TINY_CLIP_VISION
    images = torch.rand(2, 3, 40, 30) * 2 - 1
    tokens = clip.encode_images(images)
    assert tokens.shape == (2, TINY_CLIP_VISION.tokens, TINY_CLIP_VISION.dim) and torch.isfinite(tokens).all()
    full = clip(clip.preprocess(images), use_31_block=False)
    assert (full - tokens).abs().max() > 1e-3  # the default skips the last block, as use_31_block=True
    # preprocessing: [-1, 1] -> [0, 1] -> CLIP mean/std at the model's input size
    pre = clip.preprocess(torch.zeros(1, 3, 50, 50))
    assert pre.shape == (1, 3, 28, 28)
    torch.testing.assert_close(pre[0, :, 0, 0], (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073]))
                               / torch.tensor([0.26862954, 0.26130258, 0.27577711]))


def test_clip_missing_misshaped_and_stray_keys_are_rejected(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(tiny_checkpoint / CLIP_FILE, weights_only=True)
    assert "log_scale" in state and any(k.startswith("textual.") for k in state)
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "visual.transformer.1.attn.proj.weight"},
                    r"missing: visual\.transformer\.1\.attn\.proj\.weight"),
        "shape": ({**state, "visual.transformer.1.norm2.weight": torch.zeros(100)},
                  r"visual\.transformer\.1\.norm2\.weight has shape \[100\], the model needs \[160\]"),
        "stray": ({**state, "proj.weight": torch.zeros(1)}, r"not part of Wan's CLIP: proj\.weight"),
    }
    for name, (broken, message) in cases.items():
        path = tmp_path / name / CLIP_FILE
        path.parent.mkdir()
        torch.save(broken, path)
        with pytest.raises(CheckpointError, match=message):
            load_clip_vision(path)


# -- the released 14B model ----------------------------------------------------------------------------------------


def test_official_14b_config_and_key_fingerprint() -> None:
    config = from_animate_config(OFFICIAL_14B_CONFIG_JSON)
    assert config == WanAnimateTransformerConfig() == ANIMATE_14B.transformer
    assert to_animate_config(config) == OFFICIAL_14B_CONFIG_JSON
    assert (config.dim, config.num_layers, config.num_heads, config.ffn_dim, config.in_dim) == (5120, 40, 40, 13824, 36)
    assert (config.num_face_blocks, config.face_size) == (8, 512)
    assert count_animate_parameters(config) == PARAMS_14B  # ~17.27 B
    state = meta_animate_model(config).state_dict()  # meta device: shapes only
    assert len(state) == OFFICIAL_14B_TENSORS
    assert fingerprint({k: tuple(v.shape) for k, v in state.items()}) == OFFICIAL_14B_KEYS_MD5


def test_official_clip_key_fingerprint() -> None:
    assert CLIP_VIT_H_14.tokens == 257  # the official cross-attention splits its context at 257
    vision = meta_clip_vision(CLIP_VIT_H_14)
    assert sum(p.numel() for p in vision.parameters()) == CLIP_VISION_PARAMS
    shapes = {f"visual.{k}": tuple(v.shape) for k, v in vision.state_dict().items()}
    shapes.update(xlm_roberta_text_shapes())
    assert fingerprint(shapes) == OFFICIAL_CLIP_KEYS_MD5


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="multiple of 5"):
        WanAnimateTransformerConfig(num_layers=6)
    with pytest.raises(ConfigError, match="expected 'WanAnimateModel'"):
        from_animate_config({**OFFICIAL_14B_CONFIG_JSON, "_class_name": "WanModel"})
    with pytest.raises(ConfigError, match="'dim': expected an integer"):
        from_animate_config({**OFFICIAL_14B_CONFIG_JSON, "dim": "5120"})
    partial = {"_class_name": "WanAnimateModel", "num_layers": 10}  # absent fields take __init__ defaults
    assert from_animate_config(partial) == WanAnimateTransformerConfig(num_layers=10)


def test_task_config_facts() -> None:
    task = ANIMATE_14B
    assert (task.sample_steps, task.sample_shift, task.sample_guide_scale, task.sample_fps) == (20, 5.0, 1.0, 30)
    assert (task.frame_num, task.latent_frames, task.refert_nums) == (77, 20, (1, 5))
    assert task.clip_checkpoint == CLIP_FILE and task.lora_checkpoint == "relighting_lora.ckpt"
    assert task.vae_stride == (4, 8, 8) and task.face_size == task.transformer.face_size


def test_random_build_matches_meta_shapes() -> None:
    model = build_animate_model(TINY_ANIMATE_CONFIG, seed=1)
    meta = meta_animate_model(TINY_ANIMATE_CONFIG).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in meta.items()}
    assert model.patch_embedding.weight.std() > 0 and model.face_encoder.padding_tokens.std() > 0


# -- relighting LoRA -----------------------------------------------------------------------------------------------


def lora_state(model: torch.nn.Module, rank: int = 4, prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    state = {}
    for name in sorted(relighting_targets(model)):
        out_dim, in_dim = modules[name].weight.shape
        state[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, in_dim, generator=g)
        state[f"{prefix}{name}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.01
    return state


def test_lora_targets_are_the_official_modules() -> None:
    targets = relighting_targets(meta_animate_model(WanAnimateTransformerConfig()))
    assert len(targets) == 40 * 12  # per block: self-attention q k v o, cross-attention q k v o k_img v_img, ffn 0 2
    assert "blocks.0.cross_attn.k_img" in targets and "blocks.39.ffn.2" in targets
    assert not any("face" in name or "modulation" in name for name in targets)


def test_lora_merge_adds_scaled_b_a(tmp_path: Path) -> None:
    model = build_animate_model(TINY_ANIMATE_CONFIG, seed=2)
    before = model.blocks[1].cross_attn.v_img.weight.clone()
    state = lora_state(model, prefix="base_model.model.")
    path = tmp_path / "relighting_lora.ckpt"
    torch.save({"state_dict": state}, path)
    merge_lora_(model, read_lora_file(path), alpha=8, targets=relighting_targets(model))
    a = state["base_model.model.blocks.1.cross_attn.v_img.lora_A.weight"]
    b = state["base_model.model.blocks.1.cross_attn.v_img.lora_B.weight"]
    torch.testing.assert_close(model.blocks[1].cross_attn.v_img.weight, before + 2.0 * b @ a)
    fresh = build_animate_model(TINY_ANIMATE_CONFIG, seed=2)
    targets = relighting_targets(fresh)
    partial = {k: v for k, v in lora_state(fresh).items() if not k.startswith("blocks.3.ffn.0.")}
    with pytest.raises(CheckpointError, match=r"no LoRA weights: blocks\.3\.ffn\.0"):
        merge_lora_(fresh, partial, targets=targets)
    stray = {**lora_state(fresh), "face_adapter.fuser_blocks.0.linear2.lora_A.weight": torch.zeros(4, 64),
             "face_adapter.fuser_blocks.0.linear2.lora_B.weight": torch.zeros(64, 4)}
    with pytest.raises(CheckpointError, match=r"does not target: face_adapter\.fuser_blocks\.0\.linear2"):
        merge_lora_(fresh, stray, targets=targets)
    bad = {**lora_state(fresh), "blocks.0.self_attn.q.lora_B.weight": torch.zeros(32, 4)}
    with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.q down \(A\) \[4, 64\] / up \(B\) \[32, 4\]"):
        merge_lora_(fresh, bad, targets=targets)
    assert torch.equal(fresh.blocks[0].self_attn.q.weight, build_animate_model(TINY_ANIMATE_CONFIG, seed=2)
                       .blocks[0].self_attn.q.weight)  # a refused file changes nothing


# -- conditioning geometry (official preprocessing rules) ---------------------------------------------------------


def test_clip_tiling_and_padding_follow_the_official_rules() -> None:
    # get_valid_len(real, 77, 1): clips of 77 overlapping by 1 tile the padded length
    assert valid_length(77, 77, 1) == 77 and valid_length(78, 77, 1) == 153 and valid_length(100, 77, 5) == 149
    assert ping_pong_indices(4, 9) == [0, 1, 2, 3, 2, 1, 0, 1, 2]  # inputs_padding bounces
    mask = i2v_mask(3, 2, 2, 1)  # first pixel frame marked: latent frame 0, all 4 channels
    assert mask.shape == (4, 3, 2, 2) and mask[:, 0].min() == 1 and mask[:, 1:].max() == 0
    mask5 = i2v_mask(3, 1, 1, 5)  # 5 pixel frames: latent 0 (frame 0 x4) and latent 1 (frames 1-4)
    assert mask5[:, :2].min() == 1 and mask5[:, 2].max() == 0


def test_face_box_and_letterbox_geometry() -> None:
    square = np.array([[100, 100], [200, 100], [100, 200], [200, 200]] * 17, np.float64)  # 68 points, 100x100
    x1, x2, y1, y2 = face_box(square, (1000, 1000))
    # area x1.3 at the same aspect: sides 100 sqrt(1.3); width split evenly, height 3/4 above, 1/4 below
    side = 100 * math.sqrt(1.3)
    assert (x1, x2) == (int(100 - (side - 100) / 2), int(200 + (side - 100) / 2))
    assert (y1, y2) == (int(100 - 3 * (side - 100) / 4), int(200 + (side - 100) / 4))
    tall = np.full((100, 50, 3), 200, np.uint8)
    boxed = padding_resize(tall, 64, 96)
    assert boxed.shape == (64, 96, 3) and boxed[:, :32].max() == 0 and boxed[:, 64:].max() == 0
    assert boxed[:, 33:63].min() == 200


def test_pose_rendering_draws_the_head_limbs_in_official_colours() -> None:
    landmarks = np.zeros((68, 2))
    landmarks[30] = (200, 220)  # nose
    landmarks[36:42] = (160, 180)  # subject's right eye (image left)
    landmarks[42:48] = (240, 180)
    landmarks[0], landmarks[16] = (110, 200), (290, 200)
    image = render_pose(400, 400, head_keypoints(landmarks))
    assert tuple(image[220, 200]) == AAPOSE_COLORS[0]  # the nose dot: keypoint 0's colour
    mid = ((200 + 160) // 2, (220 + 180) // 2)  # the nose -> right-eye limb (limb 13), at 60 %
    assert tuple(image[mid[1], mid[0]]) == tuple(int(c * 0.6) for c in AAPOSE_COLORS[13])
    assert image[:100].max() == 0 and image[300:].max() == 0  # nothing but the head is drawn
    assert stick_width(400, 400) == 1 and stick_width(1280, 720) == 2


def test_body_keypoints_map_blazepose_onto_aapose() -> None:
    points = np.arange(66, dtype=np.float64).reshape(33, 2)
    visibility = np.linspace(0.1, 0.9, 33)
    keypoints = body_keypoints(points, visibility)
    neck = keypoints[AAPOSE_KEYPOINTS.index("Neck")]
    assert np.allclose(neck, [*(points[11] + points[12]) / 2, visibility[11]])  # shoulders' midpoint, lower vis
    assert np.allclose(keypoints[AAPOSE_KEYPOINTS.index("RWrist")], [*points[16], visibility[16]])
    assert np.allclose(keypoints[AAPOSE_KEYPOINTS.index("LEar")], [*points[7], visibility[7]])
    with pytest.raises(ValueError, match="33"):
        body_keypoints(points[:17], visibility[:17])


def test_driving_video_conditioning_draws_the_body(samples: Path, tiny_engine) -> None:
    """With the body pose model (the engine's default), the skeleton reaches below the face: neck and shoulders."""
    photo = cv2.cvtColor(cv2.imread(str(samples / "astronaut.png")), cv2.COLOR_BGR2RGB)
    assert tiny_engine.body_pose is not None
    cond = conditioning_from_driving(photo[None], 25.0, tiny_engine.landmarker, tiny_engine.body_pose)
    x1, x2, y1, y2 = face_box(tiny_engine.landmarker(photo), photo.shape[:2])
    drawn = cond.pose_frames[0].copy()
    drawn[y1:y2, x1:x2] = 0
    assert drawn.max() > 0 and np.argwhere(drawn.any(axis=-1))[:, 0].max() > y2  # limbs below the face
    neck_limb = tuple(int(c * 0.6) for c in AAPOSE_COLORS[12])  # limb 13 (Neck -> Nose) at 60 %
    assert np.all(cond.pose_frames[0] == neck_limb, axis=-1).any()


def test_driving_video_conditioning_with_dlib(samples: Path, tiny_engine) -> None:
    photo = cv2.cvtColor(cv2.imread(str(samples / "astronaut.png")), cv2.COLOR_BGR2RGB)
    frames = np.stack([np.roll(photo, shift, axis=1) for shift in (0, 8, 16)])  # the face moves right
    cond = conditioning_from_driving(frames, 25.0, tiny_engine.landmarker)
    assert cond.face_crops.shape == (3, 512, 512, 3) and cond.pose_frames.shape == frames.shape
    landmarks = tiny_engine.landmarker(frames[0])
    np.testing.assert_array_equal(cond.face_crops[0], crop_face(frames[0], landmarks))
    x1, x2, y1, y2 = face_box(landmarks, frames.shape[1:3])
    head = cond.pose_frames[0][y1:y2, x1:x2]
    assert head.max() > 0 and cond.pose_frames[0].sum() == head.astype(np.int64).sum()  # only the head drawn
    nose_x = [np.argwhere(np.all(p == AAPOSE_COLORS[0], axis=-1))[:, 1].mean() for p in cond.pose_frames]
    assert nose_x[0] < nose_x[1] < nose_x[2]  # the skeleton follows the face
    with pytest.raises(InputError, match="no face was found"):
        conditioning_from_driving(np.zeros((2, 64, 64, 3), np.uint8), 25.0, tiny_engine.landmarker)


# -- the engine ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> WanAnimateEngine:
    folder = make_tiny_animate_checkpoint(tmp_path_factory.mktemp("wan_animate_release"), seed=0, with_aux=True)
    return WanAnimateEngine.from_folder(folder, options=WanAnimateOptions(clip_len=5, refert_num=1))


def engine_job(seed: int = 0, **params) -> GenerationJob:
    rng = np.random.default_rng(seed)
    settings = {"engine": "animate-14B", "steps": 2, "fps": 30.0, "chunk_frames": 3, "seed": seed, **params}
    return GenerationJob(photo=rng.integers(0, 255, (120, 80, 3), dtype=np.uint8), params=GenerationParams(**settings))


def engine_conditioning(frames: int = 7, seed: int = 0) -> AnimateConditioning:
    rng = np.random.default_rng(seed)
    return AnimateConditioning(rng.integers(0, 255, (frames, 32, 48, 3), dtype=np.uint8),
                               rng.integers(0, 255, (frames, 512, 512, 3), dtype=np.uint8), 30.0)


def test_engine_streams_clips_from_precomputed_conditioning(tiny_engine: WanAnimateEngine) -> None:
    cond = engine_conditioning()
    chunks = list(tiny_engine.generate_from(engine_job(), cond))
    single = [list(tiny_engine.generate_from(engine_job(steps=1), engine_conditioning(frames=1))) for _ in range(2)]
    assert [len(c.frames) for c in single[0]] == [1]  # one driving frame still makes one (padded) clip
    np.testing.assert_array_equal(single[0][0].frames, single[1][0].frames)  # a seed gives the same video
    assert tiny_engine.name == "wan2.2-animate-custom(dim=64,layers=5)"
    starts = [c.start_frame for c in chunks]
    assert starts == [0, 3, 5]  # clip 0: frames 0-4 in chunks of 3; clip 1: frames 5-6 (its first repeats 4)
    assert [c.clip for c in chunks] == [0, 0, 1] and {c.total_frames for c in chunks} == {7}
    video = np.concatenate([c.frames for c in chunks])
    assert video.shape == (7, 32, 48, 3) and video.dtype == np.uint8 and video.std() > 1
    assert all(c.timing["steps"] == 2 and c.timing["denoise_s"] > 0 for c in chunks)


def test_engine_fps_size_and_cfg(tiny_engine: WanAnimateEngine) -> None:
    cond = engine_conditioning(frames=5)
    job = engine_job(fps=15.0, width=32, height=32, guidance=2.0, steps=1, chunk_frames=8)
    chunks = list(tiny_engine.generate_from(job, cond))
    video = np.concatenate([c.frames for c in chunks])
    assert video.shape == (3, 32, 32, 3) and chunks[0].fps == 15.0  # 5 frames at 30 fps -> 3 at 15 fps
    no_cfg = np.concatenate([c.frames for c in tiny_engine.generate_from(engine_job(
        fps=15.0, width=32, height=32, guidance=1.0, steps=1, chunk_frames=8), cond)])
    assert np.abs(no_cfg.astype(int) - video).max() > 0  # guidance 2 runs the unconditional branch
    with pytest.raises(InputError, match="multiples of 16"):
        next(tiny_engine.generate_from(engine_job(width=40, height=32), cond))


def test_engine_generate_uses_the_driving_frames(tiny_engine: WanAnimateEngine) -> None:
    landmarks = np.array([[8 + (i % 17) * 2, 4 + (i // 17) * 8] for i in range(68)], np.float64)
    engine = WanAnimateEngine(tiny_engine.transformer, tiny_engine.vae, tiny_engine.text_encoder, tiny_engine.clip,
                              options=tiny_engine.options, landmarker=lambda frame: landmarks)
    frames = np.random.default_rng(3).integers(0, 255, (5, 32, 48, 3), dtype=np.uint8)
    job = GenerationJob(photo=frames[0], params=engine_job().params, driving_frames=frames, driving_fps=30.0)
    video = np.concatenate([c.frames for c in engine.generate(job)])
    assert video.shape == (5, 32, 48, 3)
    with pytest.raises(InputError, match="driving video"):
        engine.generate(GenerationJob(photo=frames[0], params=engine_job().params))


def test_engine_merges_a_lightx2v_step_distill_lora(tmp_path_factory: pytest.TempPathFactory,
                                                    tiny_engine: WanAnimateEngine) -> None:
    """LightX2V's Animate config merges the Wan2.1-I2V 4-step LoRA (lightx2v layout: diffusion_model.<module>
    .lora_down/.lora_up, .diff_b biases) and runs 4 UniPC steps without CFG; the served settings do that when
    the file is present."""
    from python_backends.generation.service import ANIMATE, VideoGeneratorSettings, _load_wan, choose_weights

    root = tmp_path_factory.mktemp("animate_weights")
    folder = make_tiny_animate_checkpoint(root / "video_generator" / "Wan2.2-Animate-14B", seed=0, with_aux=True)
    g = torch.Generator().manual_seed(4)
    state = {}
    for name in ("blocks.0.cross_attn.k_img", "blocks.1.self_attn.o", "blocks.2.ffn.2"):
        out_dim, in_dim = tiny_engine.transformer.get_submodule(name).weight.shape
        state[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(8, in_dim, generator=g)
        state[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(out_dim, 8, generator=g) * 0.01
    state["diffusion_model.blocks.1.self_attn.o.diff_b"] = torch.full((64,), 0.5)
    lora = root / "video_generator" / "Wan2.1-Distill-Loras" / "wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors"
    lora.parent.mkdir(parents=True)
    save_file(state, str(lora))
    settings = VideoGeneratorSettings()
    engine = _load_wan(ANIMATE, (folder,), "cpu", settings, root)
    assert engine.options.default_steps == 4 and engine.options.sampler == "unipc"
    base = tiny_engine.transformer
    torch.testing.assert_close(engine.transformer.blocks[1].self_attn.o.bias, base.blocks[1].self_attn.o.bias + 0.5)
    torch.testing.assert_close(engine.transformer.blocks[0].cross_attn.k_img.weight,
                               base.blocks[0].cross_attn.k_img.weight + state[
                                   "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] @ state[
                                   "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"])
    assert torch.equal(engine.transformer.blocks[3].ffn[0].weight, base.blocks[3].ffn[0].weight)
    assert "LightX2V 4-step LoRA" in choose_weights(settings, root).note
    bad = {**state, "diffusion_model.blocks.0.face_adapter.lora_down.weight": torch.zeros(8, 64),
           "diffusion_model.blocks.0.face_adapter.lora_up.weight": torch.zeros(64, 8)}
    save_file(bad, str(lora))
    with pytest.raises(CheckpointError, match=r"wan2\.1_i2v_lora_rank64_lightx2v_4step\.safetensors: .*blocks\.0\."
                                              r"face_adapter\.lora_down\.weight targets blocks\.0\.face_adapter"):
        _load_wan(ANIMATE, (folder,), "cpu", settings, root)


def test_engine_renders_segments_at_constant_cost_per_segment(tiny_engine: WanAnimateEngine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A job cut into segments (as talking_head asks for them) costs the same per segment: each segment continues
    from the accepted frames before it instead of generating the clip again from frame 0, so the work is linear in
    the number of segments (it was n(n+1)/2 segments' worth)."""
    denoised: list[int] = []
    denoise = tiny_engine._denoise
    monkeypatch.setattr(tiny_engine, "_denoise", lambda *a, **k: denoised.append(1) or denoise(*a, **k))
    assert tiny_engine.renders_segments
    cond, per_segment, segments = engine_conditioning(frames=32), 8, 4
    accepted: list[np.ndarray] = []
    clips = []
    for index in range(segments):
        before = len(denoised)
        motion = np.concatenate(accepted) if accepted else None
        job = GenerationJob(photo=engine_job().photo, motion_frames=motion, params=GenerationParams(
            **{**dataclasses.asdict(engine_job(seed=index).params), "start_frame": index * per_segment,
               "frame_count": per_segment}))
        chunks = list(tiny_engine.generate_from(job, cond))
        assert chunks[0].start_frame == index * per_segment and {c.total_frames for c in chunks} == {32}
        accepted.append(np.concatenate([c.frames for c in chunks]))
        clips.append(len(denoised) - before)
    assert clips == [2] * segments  # 5 frames, then 4 new per clip (1 carried over): 2 clips per 8 frames
    assert np.concatenate(accepted).shape == (32, 32, 48, 3)
    whole = list(tiny_engine.generate_from(engine_job(), cond))
    assert sum(len(c.frames) for c in whole) == 32
    # Segment 0 of a segmented job is the whole job's first frames (same seed, same conditioning).
    np.testing.assert_array_equal(accepted[0], np.concatenate([c.frames for c in whole])[:per_segment])


# -- the stage pipeline (wan_overlap) ------------------------------------------------------------------------------


def _chunk_infos(chunks: list) -> list[tuple]:
    """Everything a chunk says but its frames and the measured times (which differ run to run)."""
    return [(c.start_frame, len(c.frames), c.clip, c.total_frames, c.fps, sorted(c.timing), dict(c.sampling),
             c.timing["steps"]) for c in chunks]


@contextlib.contextmanager
def overlap_off(engine: WanAnimateEngine) -> Iterator[None]:
    """The engine's jobs with the stages one after another in the caller's thread (wan_overlap off)."""
    options = engine.options
    engine.options = dataclasses.replace(options, overlap=False)
    try:
        yield
    finally:
        engine.options = options


def test_overlapped_stages_stream_the_same_chunks_as_one_thread(tiny_engine: WanAnimateEngine) -> None:
    """The host copy, interpolation and chunking in a stage thread beside the DiT change no pixel, no chunk: two
    clips with 30 -> 45 fps interpolation, and a segment continued from the caller's frames."""
    assert tiny_engine.options.overlap  # the default
    cond = engine_conditioning(frames=9)
    accepted = np.random.default_rng(5).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
    jobs = [engine_job(fps=45.0, chunk_frames=4),
            GenerationJob(photo=engine_job().photo, motion_frames=accepted, params=dataclasses.replace(
                engine_job(seed=1).params, start_frame=4, frame_count=5))]

    def runs() -> list[list]:
        return [list(tiny_engine.generate_from(job, cond)) for job in jobs]

    overlapped = runs()
    stats = tiny_engine.last_stages.as_dict()
    with overlap_off(tiny_engine):
        plain = runs()
    assert {c.clip for c in overlapped[0]} == {0, 1} and overlapped[1][0].start_frame == 4
    for mine, theirs in zip(overlapped, plain, strict=True):
        assert _chunk_infos(mine) == _chunk_infos(theirs)
        np.testing.assert_array_equal(np.concatenate([c.frames for c in mine]),
                                      np.concatenate([c.frames for c in theirs]))
    assert all({"denoise_s", "encode_s", "decode_s", "host_s", "elapsed_s"} <= set(c.timing)
               for run in overlapped for c in run)
    assert set(stats["busy_s"]) == {"denoise+decode", "frames"} and stats["items"]["frames"] == len(overlapped[1])


def test_the_wan_overlap_setting_reaches_animate() -> None:
    from python_backends.generation.engines import ENGINES
    from python_backends.generation.service import ANIMATE, VideoGeneratorSettings

    for overlap in (True, False):
        assert ENGINES[ANIMATE].options(VideoGeneratorSettings(wan_overlap=overlap), None).overlap is overlap
    with pytest.raises(ValueError, match="overlap_depth"):
        WanAnimateOptions(overlap_depth=0)


def test_next_clip_denoises_while_the_first_chunk_waits(tiny_engine: WanAnimateEngine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With wan_overlap on, clip 1 denoises while the caller still holds clip 0's first chunk (the stages after
    the decoder run beside the DiT); with it off, nothing runs until the caller asks for more."""
    denoised: list[int] = []
    denoise = tiny_engine._denoise
    monkeypatch.setattr(tiny_engine, "_denoise", lambda *a, **k: denoised.append(1) or denoise(*a, **k))
    cond = engine_conditioning(frames=13)  # three clips of 5 (4 new frames each after the first)

    with overlap_off(tiny_engine):
        chunks = tiny_engine.generate_from(engine_job(), cond)
        next(chunks)
        assert len(denoised) == 1
        chunks.close()

    denoised.clear()
    chunks = tiny_engine.generate_from(engine_job(), cond)
    next(chunks)
    deadline = time.monotonic() + 60
    while len(denoised) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(denoised) >= 2
    chunks.close()


def test_an_error_in_a_stage_or_the_dit_reaches_the_caller(tiny_engine: WanAnimateEngine,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing stage (the host copy) or a failing clip (the DiT) raises its own exception in the caller, and
    every stage thread has stopped."""
    from python_backends.generation.wan.common import streaming

    cond = engine_conditioning(frames=13)
    copies = []
    to_uint8 = streaming.to_uint8

    def failing_copy(pixels: torch.Tensor) -> np.ndarray:
        copies.append(1)
        if len(copies) == 3:
            raise RuntimeError("host copy failed")
        return to_uint8(pixels)

    monkeypatch.setattr(streaming, "to_uint8", failing_copy)
    with pytest.raises(RuntimeError, match="host copy failed"):
        list(tiny_engine.generate_from(engine_job(), cond))
    assert not busy_stage_threads()
    monkeypatch.undo()

    denoise = tiny_engine._denoise
    clips: list[int] = []

    def failing_clip(*args, **kwargs) -> torch.Tensor:
        clips.append(1)
        if len(clips) == 2:
            raise RuntimeError("clip 1 failed")
        return denoise(*args, **kwargs)

    monkeypatch.setattr(tiny_engine, "_denoise", failing_clip)
    received = []
    with pytest.raises(RuntimeError, match="clip 1 failed"):
        for chunk in tiny_engine.generate_from(engine_job(), cond):
            received.append(chunk)
    # Only clip 0's chunks came before it (a failing run may drop chunks still queued: nobody will show them).
    assert {c.clip for c in received} <= {0}
    assert not busy_stage_threads()
