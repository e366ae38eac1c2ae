"""Speech engines at the released size with random weights built in memory: benchmarks of the served path.

Speed does not depend on weight values, so `video_generator`'s `benchmark_random_weights` parameter lets a GPU
measure what the release folders would cost through tritonserver without ~45 GB of files: the S2V DiT (16 B
parameters), the Wan2.1 VAE, the umT5-XXL encoder and wav2vec2 at their official shapes, randomly initialised on
the model's device, then the same speed options (FP8, attention, compile) as a loaded release. The video is noise.
Two stand-ins, both named in `STAND_INS` (the model's start-up log): umT5 reads prompts through the small stand-in
tokenizer (more tokens per prompt than the real one, never more than text_len), and wav2vec2 is written to a
scratch folder at XLSR-53's shape so that it goes through the real loader. perf/bench_e2e_gpu.py builds its engine
here too, without the two encoders (it gives their outputs).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from ..common.configs import S2V_14B, WanS2VTransformerConfig
from ..common.stand_ins import write_tokenizer, write_wav2vec2
from ..common.text_encoder import UMT5_XXL, UMT5Config, UMT5Encoder, UMT5Tokenizer, WanTextEncoder
from ..common.vae import WanVAE, configure_vae
from .engine import WanS2VEngine, WanS2VOptions, _apply_speed_options, text_encoder_placement
from .liveavatar_engine import LiveAvatarOptions, WanLiveAvatarEngine
from .model import build_s2v_model, init_random_weights_

RELEASE_VAE_DIM = 96  # Wan2.1_VAE.pth
SMALL_VAE_DIM = 4  # for a DiT smaller than the release's (tests): the VAE's per-frame work dominates on a CPU
# umT5 for a DiT smaller than the release's: its text width, narrow attention and feed-forward (tests)
SMALL_T5 = UMT5Config(vocab_size=128, dim_attn=32, dim_ffn=32, num_heads=4, num_layers=2, num_buckets=32)
STAND_INS = ("random weights built in memory (benchmark: the video is noise)",
             "umT5 reads prompts through the small test tokenizer",
             "wav2vec2 random at XLSR-53's shape")


def random_text_encoder(config: WanS2VTransformerConfig, release: bool, device: torch.device, on_cpu: bool,
                        scratch: Path) -> WanTextEncoder:
    """umT5-XXL for the release's DiT, a narrow encoder of the same width for a smaller (test) DiT; placed as a
    release's (text_encoder_placement)."""
    t5 = UMT5_XXL if release else replace(SMALL_T5, dim=config.text_dim)
    device, dtype = text_encoder_placement(device, on_cpu)
    with torch.device("meta"):
        model = UMT5Encoder(t5)
    model = init_random_weights_(model.to(dtype).to_empty(device=device)).eval().requires_grad_(False)
    tokenizer = UMT5Tokenizer(write_tokenizer(scratch), config.text_len)
    return WanTextEncoder(model, tokenizer)


def build_random_engine(options: WanS2VOptions, device: torch.device | str,
                        config: WanS2VTransformerConfig | None = None, scratch: Path | None = None,
                        encoders: bool = True) -> WanS2VEngine:
    """WanS2VEngine, or WanLiveAvatarEngine for LiveAvatarOptions, with every network random at `config`'s size;
    without `encoders` no umT5 and no wav2vec2 (the caller gives text contexts and audio features)."""
    device = torch.device(device)
    config = config or WanS2VTransformerConfig()
    release = config == WanS2VTransformerConfig()
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    transformer = build_s2v_model(config, device, dtype)
    _apply_speed_options(transformer, Path("."), options)
    vae = WanVAE(dim=RELEASE_VAE_DIM if release else SMALL_VAE_DIM).to(device, getattr(torch, options.vae_dtype))
    configure_vae(vae, options.vae_memory_format, options.vae_compile, options.vae_cudnn_benchmark)
    text_encoder = audio_encoder = None
    if encoders:
        from ....audio.wav2vec2 import Wav2Vec2Features

        scratch = Path(scratch or tempfile.mkdtemp(prefix="random-wan-"))
        text_encoder = random_text_encoder(config, release, device, options.text_encoder_cpu, scratch)
        wav2vec = write_wav2vec2(scratch / S2V_14B.wav2vec, config.audio_dim, config.audio_layers - 1,
                                 release_shape=release)
        audio_encoder = Wav2Vec2Features(wav2vec, device=str(device))
    engine_class = WanLiveAvatarEngine if isinstance(options, LiveAvatarOptions) else WanS2VEngine
    engine = engine_class(transformer, vae.eval().requires_grad_(False), text_encoder, audio_encoder,
                          options=options)
    engine.name += " (random weights)"
    return engine
