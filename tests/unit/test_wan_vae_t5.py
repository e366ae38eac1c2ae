"""Wan 2.1 VAE and umT5 text encoder: official checkpoint layouts, strict loading, causal streaming, masking."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from wan_fixtures.tiny_aux import TINY_T5, TINY_VAE_DIM, make_tiny_wan_aux

from python_backends.errors import WeightsUnavailable
from python_backends.generation.wan.common.text_encoder import (
    T5_FILE,
    TEXT_LEN,
    UMT5_XXL,
    T5RelativeEmbedding,
    UMT5Encoder,
    UMT5Tokenizer,
    WanTextEncoder,
    clean_prompt,
    load_text_encoder,
    load_umt5_encoder,
)
from python_backends.generation.wan.common.vae import (
    VAE_FILE,
    FixedPointMemo,
    LatentDecoder,
    LatentEncoder,
    NearestUpsample2x,
    StreamState,
    WanVAE,
    _compiled_norm_silu,
    _fused_norm_silu,
    _norm_silu,
    configure_vae,
    decoder_memory,
    decoder_steps,
    encoder_memory,
    latent_shape,
    load_vae,
    still_frames,
)

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def aux(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_wan_aux(tmp_path_factory.mktemp("wan_aux"))


@pytest.fixture(scope="module")
def vae(aux: dict[str, Path]) -> WanVAE:
    return load_vae(aux["vae"], dim=TINY_VAE_DIM)


@pytest.fixture(scope="module")
def text_encoder(aux: dict[str, Path]) -> WanTextEncoder:
    return load_text_encoder(aux["t5"], aux["tokenizer"], device="cpu", dtype=torch.float32, cfg=TINY_T5)


def _rewrite(src: Path, dst_folder: Path, name: str, edit) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=True)
    edit(state)
    path = dst_folder / name
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- VAE


def test_vae_checkpoint_is_a_bare_state_dict_loaded_strictly(aux: dict[str, Path], vae: WanVAE) -> None:
    assert aux["vae"].name == VAE_FILE
    state = torch.load(aux["vae"], map_location="cpu", weights_only=True)
    loaded = vae.state_dict()
    assert list(state) == list(loaded)
    assert all(torch.equal(state[k], loaded[k]) for k in state)
    # The official WanVAE_ key patterns (attention only in the middle blocks; 3-D resampling where Wan puts it).
    for key in (
        "encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma", "encoder.downsamples.0.residual.6.weight",
        "encoder.downsamples.2.resample.1.weight", "encoder.downsamples.3.shortcut.weight",
        "encoder.downsamples.5.time_conv.weight", "encoder.downsamples.8.time_conv.bias",
        "encoder.middle.1.norm.gamma", "encoder.middle.1.to_qkv.weight", "encoder.middle.1.proj.bias",
        "encoder.head.0.gamma", "encoder.head.2.weight", "conv1.weight", "conv2.bias", "decoder.conv1.weight",
        "decoder.upsamples.3.time_conv.weight", "decoder.upsamples.7.time_conv.weight",
        "decoder.upsamples.11.resample.1.weight", "decoder.upsamples.4.shortcut.weight", "decoder.head.2.bias",
    ):  # fmt: skip
        assert key in state, key
    assert "encoder.downsamples.2.time_conv.weight" not in state  # the first downsampling is spatial only
    assert "decoder.upsamples.11.time_conv.weight" not in state  # and so is the last upsampling
    assert state["encoder.middle.1.norm.gamma"].shape == (4 * TINY_VAE_DIM, 1, 1)
    assert state["decoder.head.0.gamma"].shape == (TINY_VAE_DIM, 1, 1, 1)
    assert len(state) == 194


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("decoder.upsamples.7.time_conv.weight"), "decoder.upsamples.7.time_conv.weight"),
        (lambda s: s.__setitem__("encoder.head.2.weight", torch.zeros(32, 16, 3, 3, 3)), "encoder.head.2.weight"),
        (lambda s: s.__setitem__("encoder.extra.weight", torch.zeros(1)), "encoder.extra.weight"),
    ],
    ids=["missing", "mis-shaped", "unexpected"],
)
def test_vae_rejects_a_wrong_checkpoint_naming_the_key(aux: dict[str, Path], tmp_path: Path, edit, named) -> None:
    path = _rewrite(aux["vae"], tmp_path, VAE_FILE, edit)
    with pytest.raises(WeightsUnavailable, match=named.replace(".", r"\.")):
        load_vae(path, dim=TINY_VAE_DIM)


def test_vae_rejects_other_widths_and_missing_files(aux: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match=r"mis-shaped 'encoder\.conv1\.weight'"):
        load_vae(aux["vae"], dim=2 * TINY_VAE_DIM)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_vae(tmp_path / VAE_FILE, dim=TINY_VAE_DIM)
    (tmp_path / VAE_FILE).write_text("<html>not found</html>")
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        load_vae(tmp_path / VAE_FILE, dim=TINY_VAE_DIM)


def _video(frames: int = 9, height: int = 16, width: int = 24, batch: int = 2) -> torch.Tensor:
    # A smooth moving pattern rather than noise: closer to what the VAE sees.
    t = torch.arange(frames).view(frames, 1, 1) / frames
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    channels = [torch.sin(6 * x + 3 * t + c) * torch.cos(4 * y - 2 * t * c) for c in range(3)]
    video = torch.stack(channels)  # [3, T, H, W]
    return torch.stack([video * (0.9 - 0.2 * b) for b in range(batch)])


def test_vae_shapes_follow_the_stride(vae: WanVAE) -> None:
    video = _video()
    latents = vae.encode(video)
    assert latents.shape == (2, 16, 3, 2, 3) and latents.dtype == torch.float32
    assert latents.shape[1:] == latent_shape(9, 16, 24)
    assert latent_shape(81, 480, 832) == (16, 21, 60, 104)
    frames = vae.decode(latents)
    assert frames.shape == video.shape and frames.dtype == torch.float32
    assert torch.isfinite(frames).all() and frames.abs().max() <= 1.0
    single = vae.encode(video[1:])  # the official code encodes one video at a time; a batch must agree
    torch.testing.assert_close(latents[1:], single, atol=1e-5, rtol=1e-5)


def test_vae_rejects_shapes_off_the_stride(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        vae.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 12, 16))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 4, 2, 2, 2))


def test_streaming_decode_equals_full_decode(vae: WanVAE) -> None:
    torch.manual_seed(1)
    latents = torch.randn(1, 16, 4, 2, 3)
    chunks = list(vae.decode_chunks(latents))
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4]  # the first latent frame is one pixel frame
    full = vae.decode(latents)
    assert torch.equal(torch.cat(chunks, dim=2), full)
    # Causal: the frames of a prefix of the latents do not depend on what follows.
    torch.testing.assert_close(vae.decode(latents[:, :, :2]), full[:, :, :5], atol=1e-6, rtol=0)


def test_cached_chunks_equal_one_pass_over_the_whole_clip(vae: WanVAE) -> None:
    """The feature caches carry exactly the history each causal layer needs, for any chunking."""
    torch.manual_seed(2)
    with torch.no_grad():
        x = vae.conv2(torch.randn(1, 16, 4, 2, 2))
        whole = vae.decoder(x, StreamState())
        state = StreamState()
        per_frame = torch.cat([vae.decoder(x[:, :, i : i + 1], state) for i in range(4)], dim=2)
        state = StreamState()
        uneven = torch.cat([vae.decoder(x[:, :, :1], state), vae.decoder(x[:, :, 1:3], state),
                            vae.decoder(x[:, :, 3:], state)], dim=2)  # fmt: skip
        video = _video(batch=1, height=16, width=16)
        enc_whole = vae.encoder(video, StreamState())
        state = StreamState()
        enc_chunks = torch.cat([vae.encoder(c, state) for c in (video[:, :, :1], video[:, :, 1:5], video[:, :, 5:])], 2)
    assert whole.shape[2] == 13 and enc_whole.shape[2] == 3
    torch.testing.assert_close(per_frame, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uneven, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc_chunks, enc_whole, atol=1e-5, rtol=1e-5)
    # Causal encoding: the latents of the first 5 frames are those of the first 2 latent frames of all 9.
    torch.testing.assert_close(vae.encode(video[:, :, :5]), vae.encode(video)[:, :, :2], atol=1e-5, rtol=1e-5)


def test_vae_runs_in_bfloat16(aux: dict[str, Path], vae: WanVAE) -> None:
    vae_bf16 = load_vae(aux["vae"], dtype=torch.bfloat16, dim=TINY_VAE_DIM)
    assert vae_bf16.dtype == torch.bfloat16
    video = _video(batch=1, frames=5, height=16, width=16)
    latents = vae.encode(video)
    latents_bf16 = vae_bf16.encode(video)
    assert latents_bf16.dtype == torch.float32
    assert (latents_bf16 - latents).abs().max() < 0.1 * latents.abs().max()
    frames = vae.decode(latents)
    frames_bf16 = vae_bf16.decode(latents)
    assert (frames_bf16 - frames).abs().max() < 0.1  # bf16 rounding through ~40 layers of a random net


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _speed_variant_matches_default(aux: dict[str, Path], dtype: torch.dtype, memory_format: str, compile: bool,
                                   tolerance: float) -> None:
    default = load_vae(aux["vae"], dtype=dtype, dim=TINY_VAE_DIM)
    fast = configure_vae(load_vae(aux["vae"], dtype=dtype, dim=TINY_VAE_DIM), memory_format, compile)
    video = _video(batch=1)
    torch.manual_seed(3)
    latents = torch.randn(1, 16, 4, 2, 3)
    encoded = fast.encode(video)
    assert _rel(encoded, default.encode(video)) < tolerance
    chunks = list(fast.decode_chunks(latents))
    whole = fast.decode(latents)
    assert all(c.is_contiguous() for c in chunks) and encoded.is_contiguous()
    assert _rel(whole, default.decode(latents)) < tolerance
    assert torch.equal(torch.cat(chunks, dim=2), whole)  # streamed = whole clip, as in the default layout
    # A stream split unevenly reaches the same latents and pixels (the carried tails in the variant's layout).
    stream = LatentEncoder(fast)
    parts = torch.cat([stream.feed(video[:, :, :5]), stream.feed(video[:, :, 5:])], dim=2)
    torch.testing.assert_close(parts, encoded, atol=1e-5, rtol=1e-5)
    decoder = LatentDecoder(fast)
    pieces = [*decoder.feed(latents[:, :, :1]), *decoder.fork().feed(latents[:, :, 1:])]
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_channels_last_vae_gives_the_default_results(aux: dict[str, Path], dtype: torch.dtype,
                                                     tolerance: float) -> None:
    _speed_variant_matches_default(aux, dtype, "channels_last_3d", False, tolerance)


def test_compiled_channels_last_vae_gives_the_default_results(aux: dict[str, Path]) -> None:
    """Inductor on the CPU (its C++ compile is the time this takes); the fused norm in bf16 is checked below."""
    _speed_variant_matches_default(aux, torch.float32, "channels_last_3d", True, 1e-5)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_fused_norm_silu_is_the_norm_then_silu(dtype: torch.dtype, tolerance: float) -> None:
    torch.manual_seed(4)
    x = (torch.randn(1, 16, 3, 4, 5) * 3).to(dtype)
    gamma = (1 + 0.1 * torch.randn(16, 1, 1, 1)).to(dtype)
    fused = _fused_norm_silu(x, gamma)
    assert fused.dtype == dtype and _rel(fused.float(), _norm_silu(x, gamma, 16**0.5).float()) < tolerance
    assert torch.equal(_fused_norm_silu(torch.zeros_like(x), gamma), torch.zeros_like(x))  # no 0 / 0


def test_compiled_norms_run_while_another_thread_compiles() -> None:
    """On the H200 the VAE's compiled norms, called on a stage thread while the DiT's blocks compiled on another,
    raised: Inductor FX-traces while it compiles, and dynamo reads that from a process-wide flag. Here another
    thread holds an FX trace open (its module's forward waits) while this one calls the compiled norm."""
    import threading

    import torch.fx

    tracing, release = threading.Event(), threading.Event()

    class Waits(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tracing.set()
            release.wait(timeout=60)
            return x + 1

    tracer = threading.Thread(target=torch.fx.symbolic_trace, args=(Waits(),))
    tracer.start()
    try:
        assert tracing.wait(timeout=60)
        x, gamma = torch.randn(1, 8, 2, 3, 4), 1 + 0.1 * torch.randn(8, 1, 1, 1)
        out = _compiled_norm_silu()(x, gamma, 8**0.5)
    finally:
        release.set()
        tracer.join(timeout=60)
    torch.testing.assert_close(out, _fused_norm_silu(x, gamma))


def test_nearest_upsampling_in_bfloat16_copies_pixels_exactly() -> None:
    x = torch.randn(2, 4, 5, 6).bfloat16()
    up = NearestUpsample2x()(x)
    assert up.dtype == torch.bfloat16
    assert torch.equal(up, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_vae_speed_options_reject_an_unknown_layout(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="channels_last_3d"):
        configure_vae(vae, "channels_last")


def test_real_vae_size_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = WanVAE()
    params = sum(p.numel() for p in model.parameters())
    log.info("Wan2.1 VAE: %d parameters, %d tensors", params, len(model.state_dict()))
    assert 126_000_000 < params < 128_000_000  # Wan2.1_VAE.pth is ~508 MB of float32
    assert len(model.state_dict()) == 194
    assert model.state_dict()["encoder.conv1.weight"].shape == (96, 3, 3, 3, 3)
    assert model.state_dict()["decoder.upsamples.3.time_conv.weight"].shape == (768, 384, 3, 1, 1)


# ---------------------------------------------------------------- umT5


def test_t5_checkpoint_loads_strictly(aux: dict[str, Path], text_encoder: WanTextEncoder) -> None:
    assert aux["t5"].name == T5_FILE
    state = torch.load(aux["t5"], map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in state.values())  # like the official "-enc-bf16" file
    loaded = text_encoder.model.state_dict()
    assert list(state) == list(loaded)
    assert all(torch.equal(state[k].float(), loaded[k]) for k in state)
    assert loaded["blocks.1.pos_embedding.embedding.weight"].shape == (TINY_T5.num_buckets, TINY_T5.num_heads)
    assert "pos_embedding.embedding.weight" not in loaded  # umT5 has no shared table
    assert len(state) == 1 + 10 * TINY_T5.num_layers + 1


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("blocks.1.pos_embedding.embedding.weight"), "blocks.1.pos_embedding.embedding.weight"),
        (lambda s: s.__setitem__("blocks.0.ffn.fc1.weight", torch.zeros(8, 32)), "blocks.0.ffn.fc1.weight"),
    ],
    ids=["missing", "mis-shaped"],
)
def test_t5_rejects_a_wrong_checkpoint_naming_the_key(aux: dict[str, Path], tmp_path: Path, edit, named) -> None:
    path = _rewrite(aux["t5"], tmp_path, T5_FILE, edit)
    with pytest.raises(WeightsUnavailable, match=named.replace(".", r"\.")):
        load_umt5_encoder(path, dtype=torch.float32, cfg=TINY_T5)


def test_relative_position_buckets() -> None:
    """T5's bidirectional buckets: exact up to 7 positions each way, log-spaced to 128, keys after in 16..31."""
    rel = T5RelativeEmbedding(32, 4)
    distances = torch.tensor([0, -1, -7, -8, -12, -127, -1000, 1, 7, 8, 1000])
    assert rel._bucket(distances).tolist() == [0, 1, 7, 8, 9, 15, 15, 17, 23, 24, 31]
    assert rel(5, 7).shape == (1, 4, 5, 7)


def test_t5_output_shape_and_padding_masking(text_encoder: WanTextEncoder) -> None:
    model = text_encoder.model
    torch.manual_seed(3)
    real = torch.randint(3, TINY_T5.vocab_size, (2, 9))
    with torch.no_grad():
        alone = model(real, torch.ones_like(real))
        assert alone.shape == (2, 9, TINY_T5.dim)
        padded = torch.cat([real, torch.randint(3, TINY_T5.vocab_size, (2, 20))], dim=1)
        mask = torch.cat([torch.ones(2, 9), torch.zeros(2, 20)], dim=1).long()
        out = model(padded, mask)
        assert out.shape == (2, 29, TINY_T5.dim)
        torch.testing.assert_close(out[:, :9], alone, atol=1e-5, rtol=1e-5)  # padding is invisible
        unmasked = model(padded)
    assert (unmasked[:, :9] - alone).abs().max() > 1e-2  # ... only because of the mask


def test_prompt_cleaning_and_tokenizer(aux: dict[str, Path]) -> None:
    assert clean_prompt("  a \u201cman\u201d\n\n talking &amp;amp; \t") == 'a "man" talking &'
    tokenizer = UMT5Tokenizer(aux["tokenizer"])
    ids, mask = tokenizer(["a man talking", "the woman speaks to the camera, smiling!", "x" * 2000])
    assert ids.shape == mask.shape == (3, TEXT_LEN)
    lengths = mask.sum(dim=1).tolist()
    assert lengths[0] == 4 and lengths[2] == TEXT_LEN  # three words + EOS; the long one truncated
    for row, n in zip(ids.tolist(), lengths):
        assert row[n - 1] == 1 and set(row[n:]) <= {0}  # EOS (id 1) ends the text, padding is id 0
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        UMT5Tokenizer(aux["tokenizer"].parent / "umt5-missing")


def test_text_encoder_matches_the_official_full_length_path(text_encoder: WanTextEncoder) -> None:
    prompts = ["a man talking", "the woman speaks to the camera, smiling!"]
    contexts = text_encoder(prompts)
    ids, mask = text_encoder.tokenizer(prompts)
    lengths = mask.sum(dim=1).tolist()
    assert [c.shape for c in contexts] == [(n, TINY_T5.dim) for n in lengths]
    with torch.no_grad():
        official = text_encoder.model(ids, mask)  # all 512 positions, as Wan's T5EncoderModel runs it
    for context, reference, n in zip(contexts, official, lengths):
        torch.testing.assert_close(context, reference[:n], atol=1e-5, rtol=1e-5)
    padded = text_encoder.padded(prompts)
    assert padded.shape == (2, TEXT_LEN, TINY_T5.dim)
    assert torch.equal(padded[1, : lengths[1]], contexts[1]) and not padded[1, lengths[1] :].any()


def test_text_encoder_bf16_and_vocab_check(aux: dict[str, Path], text_encoder: WanTextEncoder) -> None:
    bf16 = load_text_encoder(aux["t5"], aux["tokenizer"], dtype=torch.bfloat16, cfg=TINY_T5)
    prompt = ["a person smiling in front of the camera"]
    reference, context = text_encoder(prompt)[0], bf16(prompt)[0]
    assert context.dtype == torch.bfloat16
    assert (context.float() - reference).abs().max() < 0.1 * reference.abs().max()
    with torch.device("meta"):
        small = UMT5Encoder(TINY_T5.__class__(vocab_size=16, dim=8, dim_attn=8, dim_ffn=8, num_heads=2, num_layers=1))
    with pytest.raises(WeightsUnavailable, match="not a pair"):
        WanTextEncoder(small, text_encoder.tokenizer)


def test_real_umt5_xxl_size_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = UMT5Encoder(UMT5_XXL)
    state = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    log.info("umT5-XXL encoder: %d parameters, %d tensors", params, len(state))
    assert 5_600_000_000 < params < 5_800_000_000  # the bf16 file is ~11.4 GB
    assert len(state) == 242
    assert state["token_embedding.weight"].shape == (256384, 4096)
    assert state["blocks.23.ffn.gate.0.weight"].shape == (10240, 4096)
    assert state["blocks.23.pos_embedding.embedding.weight"].shape == (32, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_matches_cpu_float32(aux: dict[str, Path], vae: WanVAE, text_encoder: WanTextEncoder) -> None:
    vae_gpu = load_vae(aux["vae"], device="cuda", dtype=torch.bfloat16, dim=TINY_VAE_DIM)
    video = _video(batch=1, frames=5, height=16, width=16)
    latents = vae.encode(video)
    assert (vae_gpu.encode(video.cuda()).cpu() - latents).abs().max() < 0.1 * latents.abs().max()
    assert (vae_gpu.decode(latents.cuda()).cpu() - vae.decode(latents)).abs().max() < 0.1
    t5_gpu = load_text_encoder(aux["t5"], aux["tokenizer"], device="cuda", dtype=torch.bfloat16, cfg=TINY_T5)
    prompt = ["a man talking to the camera"]
    reference, context = text_encoder(prompt)[0], t5_gpu(prompt)[0]
    assert context.device.type == "cuda"
    assert (context.float().cpu() - reference).abs().max() < 0.1 * reference.abs().max()


def test_single_image_encodes_like_the_first_frame_of_a_clip(tmp_path):
    from wan_fixtures.tiny_aux import make_tiny_vae_checkpoint

    from python_backends.generation.wan.common.vae import load_vae

    vae = load_vae(make_tiny_vae_checkpoint(tmp_path), dim=8)
    clip = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        image_latent = vae.encode(clip[:, :, :1])
        clip_latents = vae.encode(clip)
    assert image_latent.shape == (1, 16, 1, 4, 4)
    # The encoder is causal: the first latent frame depends on the first frame only.
    torch.testing.assert_close(image_latent, clip_latents[:, :, :1])


@pytest.mark.usefixtures("one_torch_thread")
def test_the_decoder_state_depends_on_its_last_r_latent_frames(aux: dict[str, Path]) -> None:
    """Priming a decoder with the last R = decoder_memory latent frames leaves it in the state that all of them
    do (the next block decodes identically); R - 1 does not. float64 so that R - 1's small effect is not lost."""
    vae = load_vae(aux["vae"], dim=TINY_VAE_DIM, dtype=torch.float64)
    with torch.device("meta"):
        real = WanVAE()
    r = decoder_memory(vae)
    assert r == decoder_memory(real) == 38  # the tiny VAE has the release's depth, only fewer channels
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 16, r + 2, 1, 1, generator=generator)
    following = vae.conv2(torch.randn(1, 16, 2, 1, 1, generator=generator).double())

    def primed(prefix: torch.Tensor) -> LatentDecoder:
        decoder = LatentDecoder(vae)
        for _ in decoder.feed(prefix):
            pass
        return decoder

    def next_block(decoder: LatentDecoder) -> torch.Tensor:
        with torch.no_grad():  # the decoder's raw output: feed's float32 cast would hide R - 1's difference
            return torch.cat([vae.decoder(following[:, :, i : i + 1], decoder.state) for i in range(2)], dim=2)

    every = primed(latents)
    whole = next_block(every.fork())
    assert torch.equal(next_block(every.fork()), whole)  # a fork goes on without disturbing the original
    assert torch.equal(next_block(primed(latents[:, :, -r:])), whole)
    assert not torch.allclose(next_block(primed(latents[:, :, -(r - 1) :])), whole, rtol=0, atol=1e-12)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_last_latents_depend_on_the_last_frames_only(aux: dict[str, Path]) -> None:
    """The last K latent frames of encoding 1 + 4k frames are those of its last 4 (K - 1) + encoder_memory + 1
    frames (112 for the release's depth), and not of 4 frames fewer; a stream fed 4 frames at a time gives the
    latents of encoding everything at once."""
    vae = load_vae(aux["vae"], dim=TINY_VAE_DIM, dtype=torch.float64)
    memory = encoder_memory(vae)
    with torch.device("meta"):
        assert memory == encoder_memory(WanVAE()) == 112
    k = 3
    frames = 4 * (k - 1) + memory + 1
    video = _video(frames=frames + 4, height=8, width=8, batch=1).double()
    whole = LatentEncoder(vae).features(video)
    tail = LatentEncoder(vae).features(video[:, :, -frames:])
    assert torch.equal(tail[:, :, -k:], whole[:, :, -k:])
    shorter = LatentEncoder(vae).features(video[:, :, -(frames - 4) :])
    assert not torch.allclose(shorter[:, :, -k:], whole[:, :, -k:], rtol=0, atol=1e-12)
    video = video[:, :, :25].float()
    stream = LatentEncoder(vae.float())
    pieces = [stream.feed(video[:, :, :9])] + [stream.feed(piece) for piece in video[:, :, 9:].split(8, dim=2)]
    assert torch.equal(torch.cat(pieces, dim=2), vae.encode(video))
    with pytest.raises(ValueError, match="4k > 0 frames"):
        stream.feed(video[:, :, :3])


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_still_start_is_encoded_only_to_the_encoders_fixed_point(
        aux: dict[str, Path], monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """LiveAvatar's history starts as the photo repeated: past the encoder's fixed point (29 chunks at the
    release's depth) its chunks are not run, and the latents and the state the stream goes on from are bitwise
    those of running every chunk, also when the video moves on after the still run and in a later call."""
    vae = load_vae(aux["vae"], dim=TINY_VAE_DIM, dtype=dtype)
    moving = _video(frames=9, height=8, width=8, batch=1).to(dtype)
    video = torch.cat([moving[:, :, :1].expand(-1, -1, 261, -1, -1), moving[:, :, 1:]], dim=2)  # 261 still + 8

    def encode(skip: bool) -> tuple[LatentEncoder, torch.Tensor]:
        monkeypatch.setattr(LatentEncoder, "skip_still_start", skip)
        stream = LatentEncoder(vae)
        latents = [stream.feed(video[:, :, :265]), stream.feed(video[:, :, 265:])]
        return stream, torch.cat(latents, dim=2)

    (every, expected), (fast, latents) = encode(False), encode(True)
    assert (every.encoded_frames, fast.encoded_frames) == (269, 269 - (261 - 1 - 4 * 29))  # 144 frames not run
    assert latents.shape == expected.shape == (1, 16, 68, 1, 1)
    assert torch.equal(latents, expected)
    assert every.state.tails.keys() == fast.state.tails.keys() and every.state.started == fast.state.started
    assert all(torch.equal(fast.state.tails[layer], tail) for layer, tail in every.state.tails.items())
    # 117 still frames reach the fixed point and skip nothing; one chunk more is the first one skipped
    for frames in (117, 121):
        short = LatentEncoder(vae)
        assert torch.equal(short.feed(video[:, :, :frames]), expected[:, :, : 1 + (frames - 1) // 4])
        assert short.encoded_frames == 117
    # with a memo, the next stream that starts with the same picture starts at the fixed point
    memo = FixedPointMemo()
    assert LatentEncoder(vae, memo).feed(video[:, :, :265]).shape[2] == 67
    assert memo.holds(video[:, :, :1], vae.encoder)
    again = LatentEncoder(vae, memo)
    assert torch.equal(again.feed(video[:, :, :265]), expected[:, :, :67]) and again.encoded_frames == 4
    assert torch.equal(again.feed(video[:, :, 265:]), expected[:, :, 67:])  # and goes on from the same state
    other = torch.flip(video, dims=[3])  # another picture: encoded in full, and the memo now holds it
    fresh = LatentEncoder(vae, memo)
    fresh.feed(other[:, :, :265])
    assert fresh.encoded_frames == 121 and memo.holds(other[:, :, :1], vae.encoder)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_still_starts_units_stop_running_once_settled_with_the_same_latents_and_state(
        aux: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to the fixed point the still chunks are the same 4 frames: each unit of the encoder runs only until its
    state stops changing (_SettlingChain), and the latents and the state are bitwise those of running every unit."""
    vae = load_vae(aux["vae"], dim=TINY_VAE_DIM, dtype=torch.float64)
    moving = _video(frames=9, height=8, width=8, batch=1).double()
    video = torch.cat([moving[:, :, :1].expand(-1, -1, 261, -1, -1), moving[:, :, 1:]], dim=2)
    calls = {"conv1": 0, "head": 0}  # the first layer and the last (the head's causal conv)
    for name, layer in (("conv1", vae.encoder.conv1), ("head", vae.encoder.head[-1])):
        layer.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))

    def encode(settle: bool) -> tuple[LatentEncoder, torch.Tensor, dict[str, int]]:
        monkeypatch.setattr(LatentEncoder, "settle_still_start", settle)
        calls.update(conv1=0, head=0)
        stream = LatentEncoder(vae)
        latents = torch.cat([stream.feed(video[:, :, :265]), stream.feed(video[:, :, 265:])], dim=2)
        return stream, latents, dict(calls)

    (every, expected, every_calls), (settled, latents, settled_calls) = encode(False), encode(True)
    assert torch.equal(latents, expected)
    assert every.state.tails.keys() == settled.state.tails.keys() and every.state.started == settled.state.started
    assert all(torch.equal(settled.state.tails[layer], tail) for layer, tail in every.state.tails.items())
    # 1 + 29 chunks to the fixed point, then the 2 moving ones: the first layer settles on the second still chunk,
    # the last one on the 28th
    assert every_calls == {"conv1": 32, "head": 32}
    assert settled_calls == {"conv1": 1 + 2 + 2, "head": 1 + 28 + 2}


@pytest.mark.usefixtures("one_torch_thread")
def test_advancing_over_identical_latents_runs_each_part_until_it_settles(
        aux: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A still photo's history gives a run of identical latent frames: LatentDecoder.advance runs each part over
    them only until its state stops changing (_SettlingChain), and leaves bitwise the state that running every
    active part leaves, so the next frames decode the same."""
    vae = load_vae(aux["vae"], dim=TINY_VAE_DIM, dtype=torch.float64)
    generator = torch.Generator().manual_seed(7)
    moving = torch.randn(1, 16, 6, 1, 1, generator=generator, dtype=torch.float64)
    # two frames, a still run of 40 (longer than the decoder's memory of 38), then two more: two calls of advance
    latents = torch.cat([moving[:, :, :2], moving[:, :, 2:3].expand(-1, -1, 40, -1, -1), moving[:, :, 3:5]], dim=2)
    calls = {"conv1": 0}
    vae.decoder.conv1.register_forward_hook(lambda *_: calls.__setitem__("conv1", calls["conv1"] + 1))

    def advanced(settle: bool) -> tuple[LatentDecoder, int]:
        monkeypatch.setattr(LatentDecoder, "settle_still_latents", settle)
        calls["conv1"] = 0
        decoder = LatentDecoder(vae)
        decoder.advance(latents[:, :, :30])
        decoder.advance(latents[:, :, 30:])
        return decoder, calls["conv1"]

    (every, every_calls), (settled, settled_calls) = advanced(False), advanced(True)
    assert every.state.tails.keys() == settled.state.tails.keys() and every.state.started == settled.state.started
    assert all(torch.equal(settled.state.tails[layer], tail) for layer, tail in every.state.tails.items())
    following = moving[:, :, 5:]
    assert torch.equal(torch.cat(list(settled.feed(following)), 2), torch.cat(list(every.feed(following)), 2))
    # the first part (a causal conv with two frames of past) runs on every frame of both calls (all within its 38
    # frames of memory), and settling on the 2 moving frames before the run, 3 of the run (its tail holds the run
    # after 2, unchanged by the third), 2 in the second call (a run restarts with each call: its first frame runs
    # plainly and its second finds the tail unchanged) and the 2 moving frames after
    assert every_calls == 30 + 14
    assert settled_calls == 2 + 3 + 2 + 2


def test_still_frames_counts_the_frames_equal_to_the_first() -> None:
    video = torch.zeros(2, 3, 40, 4, 4)
    video[1, 2, 37, 3, 3] = 1.0  # one value in one frame of one clip of the batch differs
    assert still_frames(video, limit=40) == 37
    assert still_frames(video, limit=20) == 20 and still_frames(video[:, :, :1], limit=1) == 1
    assert still_frames(_video(frames=5), limit=5) == 1


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_advancing_a_decoder_leaves_the_state_that_decoding_does(aux: dict[str, Path], dtype: torch.dtype) -> None:
    """LatentDecoder.advance (priming: only the parts whose work the state depends on, per latent frame) leaves
    bitwise the state that decoding every latent frame in full leaves, from a fresh decoder past its memory and
    then going on, so the next frames decode the same; and it ran far fewer full-resolution parts."""
    vae = load_vae(aux["vae"], dim=TINY_VAE_DIM, dtype=dtype)
    steps = decoder_steps(vae)
    assert steps[0] == decoder_memory(vae) == 38 and steps[-1] == 1 and steps == sorted(steps, reverse=True)
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 16, 45 + 12 + 3, 1, 1, generator=generator)
    decoded, advanced = LatentDecoder(vae), LatentDecoder(vae)
    calls: list[int] = []
    head = vae.decoder.head[-1]
    hook = head.register_forward_hook(lambda *_: calls.append(1))
    for piece in (latents[:, :, :45], latents[:, :, 45:57]):
        for _ in decoded.feed(piece):
            pass
        decoded_heads, calls[:] = len(calls), []
        advanced.advance(piece)
        assert (decoded_heads, len(calls)) == (piece.shape[2], 1)  # the full-resolution head: the last frame only
        calls.clear()
        assert advanced.latent_frames == decoded.latent_frames
        assert advanced.state.started == decoded.state.started
        assert advanced.state.tails.keys() == decoded.state.tails.keys()
        assert all(torch.equal(advanced.state.tails[layer], tail) for layer, tail in decoded.state.tails.items())
    hook.remove()
    following = latents[:, :, 57:]
    assert torch.equal(torch.cat(list(advanced.feed(following)), 2), torch.cat(list(decoded.feed(following)), 2))


def test_cudnn_benchmark_is_switched_on_only_when_asked(aux: dict[str, Path], monkeypatch) -> None:
    """Process-wide, so configure_vae only ever switches it on: a second engine without it must not switch it off
    under the first."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    vae = load_vae(aux["vae"], dim=TINY_VAE_DIM)
    configure_vae(vae)
    assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    configure_vae(vae, cudnn_benchmark=True)  # deterministic: the settling shortcuts need repeatable kernels
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    configure_vae(vae)
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
