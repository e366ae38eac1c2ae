"""FP8 linear layers (torch._scaled_mm, e4m3): accuracy against float64 and bf16, scale layout, model swap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from wan_fixtures.tiny import TINY_S2V_CONFIG

from python_backends.generation.wan import build_s2v_model
from python_backends.generation.wan.common.fp8 import FP8_DTYPE, FP8Linear, convert_to_fp8, quantize

# e4m3 rounds each operand to 3 mantissa bits (<= 2^-4 relative); measured ~3.6 % relative RMS error on
# Gaussian data (bf16: ~0.2 %). The bound leaves room for other data without admitting a wrong scale.
FP8_TOLERANCE = 0.06


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def reference(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x.double(), layer.weight.double(), layer.bias.double())


@pytest.mark.parametrize("scaling", ["rowwise", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_is_within_tolerance_of_float64(scaling: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(256, 384).to(dtype).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(384, 256, generator=g) / 16)
        layer.bias.copy_(torch.randn(384, generator=g) / 4)
    x = torch.randn(3, 41, 256, generator=g).to(dtype)  # 123 tokens: not a multiple of 16
    fp8 = FP8Linear.from_linear(layer, scaling)
    assert fp8.weight.dtype == FP8_DTYPE and fp8.weight.shape == (384, 256)
    y = fp8(x)
    assert y.shape == (3, 41, 384) and y.dtype == dtype
    err = rel_error(y, reference(x, layer))
    bf16_err = rel_error(F.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16()), reference(x, layer))
    assert err < FP8_TOLERANCE
    assert err > 2 * bf16_err  # really computed in 8 bits


@pytest.mark.parametrize("scaling", ["rowwise", "tensor"])
def test_scales_are_applied_where_they_belong(scaling: str) -> None:
    """The product equals the float32 product of the dequantised operands (scale orientation, bias)."""
    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(64, 48).requires_grad_(False)
    x = torch.randn(20, 64, generator=g) * torch.logspace(-2, 2, 20).unsqueeze(1)  # rows of very different size
    fp8 = FP8Linear.from_linear(layer, scaling)
    q, scale = quantize(x, scaling)
    expected = (q.float() * scale) @ fp8.dequantized_weight().t() + layer.bias
    torch.testing.assert_close(fp8(x), expected, rtol=1e-5, atol=1e-5)


def test_rowwise_scaling_keeps_small_rows_accurate() -> None:
    g = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(128, 64, bias=False).requires_grad_(False)
    x = torch.randn(32, 128, generator=g)
    x[1::2] *= 1e-6  # half the tokens are tiny: one tensor scale flushes them below e4m3's smallest subnormal
    small = slice(1, None, 2)
    ref = F.linear(x.double(), layer.weight.double())
    rowwise = FP8Linear.from_linear(layer, "rowwise")(x)
    tensor = FP8Linear.from_linear(layer, "tensor")(x)
    assert rel_error(rowwise[small], ref[small]) < FP8_TOLERANCE
    assert rel_error(tensor[small], ref[small]) > 0.5
    assert rel_error(tensor, ref) < FP8_TOLERANCE  # the large rows carry the tensor's norm


def test_quantize_rejects_unknown_scaling_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="scaling must be one of"):
        quantize(torch.ones(4, 16), "blockwise")
    with pytest.raises(ValueError, match="divisible by 16"):
        FP8Linear.from_linear(torch.nn.Linear(20, 32))


def test_convert_to_fp8_swaps_the_block_projections_and_the_model_still_predicts() -> None:
    model = build_s2v_model(TINY_S2V_CONFIG, device="cpu", dtype=torch.float32, seed=0)
    g = torch.Generator().manual_seed(3)
    inputs = dict(
        latents=torch.randn(1, 16, 2, 16, 16, generator=g), timestep=torch.tensor([500.0]),
        context=[torch.randn(6, TINY_S2V_CONFIG.text_dim, generator=g)],
        ref_latents=torch.randn(1, 16, 1, 16, 16, generator=g),
        motion_latents=torch.randn(1, 16, 19, 16, 16, generator=g),
        audio=torch.randn(1, 25, TINY_S2V_CONFIG.audio_dim, 8, generator=g),
    )
    with torch.no_grad():
        ref = model(**inputs)
        converted = convert_to_fp8(model, "rowwise")
        out = model(**inputs)
    assert converted == 8 * TINY_S2V_CONFIG.num_layers
    fp8_layers = {name for name, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert "blocks.0.ffn.0" in fp8_layers and "blocks.1.self_attn.q" in fp8_layers
    assert "blocks.0.cross_attn.k" not in fp8_layers and not any("audio_injector" in n for n in fp8_layers)
    assert torch.isfinite(out).all()
    assert 0 < rel_error(out, ref) < 0.15  # eight FP8 products per block, two blocks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 tensor cores need CUDA compute capability 8.9+")
@pytest.mark.parametrize("scaling", ["rowwise", "tensor"])
@pytest.mark.parametrize("fast_accum", [False, True])
def test_cuda_scaled_mm_matches_the_dequantised_product(scaling: str, fast_accum: bool) -> None:
    g = torch.Generator(device="cuda").manual_seed(4)
    layer = torch.nn.Linear(5120, 1024).cuda().bfloat16().requires_grad_(False)
    x = torch.randn(1000, 5120, device="cuda", generator=g, dtype=torch.bfloat16)
    fp8 = FP8Linear.from_linear(layer, scaling, use_fast_accum=fast_accum)
    y = fp8(x)
    assert y.dtype == torch.bfloat16
    q, scale = quantize(x, scaling)
    expected = (q.float() * scale) @ fp8.dequantized_weight().t() + layer.bias.float()
    assert rel_error(y, expected) < 1e-2  # bf16 output rounding (+ fast accumulation)
    assert rel_error(y, reference(x, layer)) < FP8_TOLERANCE
