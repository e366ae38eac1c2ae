"""audio_features: decoding, BS.1770 loudness, denoising, Wav2Lip mel, wav2vec2 (Wan2.2-S2V), the report."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from audio_files import wav_bytes

from python_backends import spec
from python_backends.audio import (
    AudioFeaturesSettings,
    build_audio_features,
    choose_weights,
    decode_audio,
    levels,
    loudness,
    mel,
)
from python_backends.audio import denoise as denoise_mod
from python_backends.audio.decode import ffmpeg_exe, layout_channels, parse_stream_info
from python_backends.audio.features import WAV2VEC2_FOLDER
from python_backends.audio.wav2vec2 import cudnn_heuristics
from python_backends.errors import ConfigError, InputError, WeightsUnavailable
from python_backends.settings import from_mapping
from python_backends.weights import OFFICIAL, UNAVAILABLE

log = logging.getLogger(__name__)

SR = 16000
ROOT = Path(__file__).resolve().parents[2]
SPEECH = ROOT / "client" / "samples" / "speech.wav"
REPORT_KEYS = {
    "duration_s", "input_format", "input_codec", "input_sample_rate_hz", "input_channels", "loudness_lufs_in",
    "loudness_lufs_out", "gain_db", "peak_dbfs_in", "clipped_fraction", "active_fraction",
    "noise_floor_dbfs", "snr_db_estimate_in", "snr_db_estimate_out", "denoised", "mel_frames", "mel_fps",
    "wav2vec2", "wav2vec2_fps",
    "wav2vec2_frames",  # not in the contract's list: lets a client trim a zero-padded multi-clip response
}


# ---------------------------------------------------------------- helpers



def encode(data: bytes, suffix: str, tmp_path: Path, *args: str) -> bytes:
    source, target = tmp_path / "in.wav", tmp_path / f"out{suffix}"
    source.write_bytes(data)
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), *args,
                    str(target)], check=True, timeout=60)
    return target.read_bytes()


def speech_like(seconds: float, rate: int = SR) -> np.ndarray:
    """Voiced harmonic source with a gliding pitch under a ~5 syllables/s envelope with pauses."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120.0 + 30.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 25))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0.0, None) ** 2
    signal = voiced * envelope
    return signal * (0.1 / np.sqrt(np.mean(signal**2)))


def load_speech() -> tuple[np.ndarray, str]:
    if SPEECH.exists():
        return decode_audio(SPEECH.read_bytes()).samples.astype(np.float64)[: 8 * SR], SPEECH.name
    return speech_like(6.0), "synthetic harmonic speech-like signal"


def si_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SNR: the denoiser may change the level, only what is not speech counts as error."""
    scale = np.dot(estimate, reference) / np.dot(reference, reference)
    error = estimate - scale * reference
    return 10 * math.log10(np.sum((scale * reference) ** 2) / np.sum(error**2))


def sine(freq: float, seconds: float, amplitude: float = 1.0, rate: int = SR) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


# ---------------------------------------------------------------- decoding


def test_decode_wav_and_stereo_mp3(tmp_path):
    clip = sine(440.0, 1.5, 0.5)
    decoded = decode_audio(wav_bytes(clip))
    assert (decoded.input_format, decoded.input_codec) == ("wav", "pcm_s16le")
    assert (decoded.input_sample_rate_hz, decoded.input_channels) == (SR, 1)
    assert decoded.duration_s == pytest.approx(1.5)
    np.testing.assert_allclose(decoded.samples, clip, atol=1e-4)
    assert decoded.peak == pytest.approx(0.5, abs=1e-3)

    stereo = np.stack([sine(440.0, 2.0, 0.5, 44100), sine(440.0, 2.0, 0.5, 44100)], axis=1)
    mp3 = encode(wav_bytes(stereo, 44100), ".mp3", tmp_path, "-b:a", "320k")
    decoded = decode_audio(mp3)
    assert (decoded.input_format, decoded.input_codec) == ("mp3", "mp3")
    assert (decoded.input_sample_rate_hz, decoded.input_channels) == (44100, 2)
    assert decoded.duration_s == pytest.approx(2.0, abs=0.06)
    # Resampled to 16 kHz and still a 440 Hz tone of the same level.
    spectrum = np.abs(np.fft.rfft(decoded.samples[SR // 4 : SR // 4 + SR]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=1)
    rms = np.sqrt(np.mean(decoded.samples[SR // 4 : -SR // 4] ** 2))
    assert rms == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


def test_decode_other_containers(tmp_path):
    clip = wav_bytes(sine(300.0, 1.0, 0.3, 48000), 48000)
    for suffix, args, codec in ((".m4a", ("-c:a", "aac"), "aac"), (".ogg", ("-c:a", "libopus"), "opus"),
                                (".flac", (), "flac")):
        decoded = decode_audio(encode(clip, suffix, tmp_path, *args))
        assert decoded.input_codec == codec
        assert decoded.duration_s == pytest.approx(1.0, abs=0.03)


def test_decode_rejects_non_audio_and_empty_and_too_long():
    png = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
           b"\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84"
           b"\x00\x00\x00\x00IEND\xaeB`\x82")
    with pytest.raises(InputError, match=r"could not decode the audio \(.+\): upload a WAV, MP3"):
        decode_audio(png)
    with pytest.raises(InputError, match="could not decode the audio"):
        decode_audio(b"this is not an audio file at all" * 20)
    with pytest.raises(InputError, match="empty"):
        decode_audio(b"")
    started = time.perf_counter()
    with pytest.raises(InputError, match="audio is longer than 2 s; split it or raise max_duration_s"):
        decode_audio(wav_bytes(sine(200.0, 30.0, 0.1)), max_duration_s=2.0)
    assert time.perf_counter() - started < 5.0
    with pytest.raises(InputError, match="too short"):
        decode_audio(wav_bytes(np.zeros(400)))


def test_stream_banner_parsing():
    banner = (
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'input':\n"
        "  Duration: 00:01:02.50, start: 0.000000, bitrate: 132 kb/s\n"
        "  Stream #0:0[0x1](und): Video: h264 (High), yuv420p, 640x480, 25 fps\n"
        "  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, 5.1(side), fltp, 128 kb/s\n"
        "Stream mapping:\n"
        "  Stream #0:1 -> #0:0 (aac (native) -> pcm_f32le (native))\n"
    )
    info = parse_stream_info(banner)
    assert (info.input_format, info.codec, info.sample_rate, info.channels) == (
        "mov,mp4,m4a,3gp,3g2,mj2", "aac", 44100, 6)
    assert info.duration_s == pytest.approx(62.5)
    layouts = ("mono", "stereo", "7.1.4", "22.2", "quad(side)", "3 channels (FL+FR+LFE)", "weird")
    assert [layout_channels(x) for x in layouts] == [1, 2, 12, 24, 4, 3, 0]


# ---------------------------------------------------------------- loudness


def test_k_weighting_matches_published_48k_coefficients():
    (b1, a1), (b2, a2) = loudness.k_weighting(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-10)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-10)
    np.testing.assert_allclose(b2, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-10)


def test_integrated_loudness_of_known_sines_and_gating():
    # BS.1770: a full-scale 1 kHz sine reads -3.01 LUFS; the 16 kHz re-derivation stays within 0.1 dB.
    full_scale_48k = loudness.integrated_loudness(sine(1000.0, 5.0, 1.0, 48000), 48000)
    assert full_scale_48k == pytest.approx(-3.01, abs=0.02)
    assert loudness.integrated_loudness(sine(1000.0, 5.0), SR) == pytest.approx(-3.01, abs=0.1)
    assert loudness.integrated_loudness(sine(1000.0, 5.0, 0.1), SR) == pytest.approx(-23.01, abs=0.1)
    # Absolute gate: however much silence follows, the reading stays (only the blocks straddling the end
    # of the tone, partly silent, pull it down a little); ungated, 50 s of silence would cost 12 dB.
    short_pad = loudness.integrated_loudness(np.concatenate([sine(1000.0, 3.0, 0.1), np.zeros(5 * SR)]), SR)
    long_pad = loudness.integrated_loudness(np.concatenate([sine(1000.0, 3.0, 0.1), np.zeros(50 * SR)]), SR)
    assert short_pad == pytest.approx(long_pad, abs=1e-9) and short_pad == pytest.approx(-23.01, abs=0.3)
    # Relative gate: a passage 20 dB quieter is gated out (ungated it would read about -25.6 LUFS).
    mixed = np.concatenate([sine(1000.0, 10.0, 0.1), sine(1000.0, 10.0, 0.01)])
    assert loudness.integrated_loudness(mixed, SR) == pytest.approx(-23.01, abs=0.15)
    assert loudness.integrated_loudness(np.zeros(3 * SR), SR) is None


def test_normalise_to_target_with_true_peak_ceiling():
    speech = speech_like(4.0) * 0.05
    out, gain = loudness.normalise(speech, SR, -23.0, -1.0, 40.0)
    assert loudness.integrated_loudness(out, SR) == pytest.approx(-23.0, abs=0.05)
    assert gain == pytest.approx(-23.0 - loudness.integrated_loudness(speech, SR), abs=1e-6)
    # Sparse clicks: reaching -10 LUFS would push the peaks far over the ceiling, so the ceiling wins.
    clicks = np.zeros(4 * SR)
    clicks[::4000] = 0.05
    out, gain = loudness.normalise(clicks, SR, -10.0, -1.0, 60.0)
    assert 20 * math.log10(loudness.true_peak(out)) == pytest.approx(-1.0, abs=0.01)
    assert loudness.integrated_loudness(out, SR) < -10.0
    # The gain cap keeps a whisper of hiss from being amplified to programme level.
    hiss = np.random.default_rng(0).standard_normal(2 * SR) * 1e-3  # about -60 LUFS
    _, gain = loudness.normalise(hiss, SR, -23.0, -1.0, 30.0)
    assert gain == pytest.approx(30.0)


# ---------------------------------------------------------------- denoising


def test_denoise_raises_snr_of_noisy_speech():
    clean, source = load_speech()
    noise = np.random.default_rng(7).standard_normal(len(clean))
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10.0)  # 10 dB SNR
    noisy = clean + noise
    before = si_snr(noisy, clean)
    started = time.perf_counter()
    cleaned = denoise_mod.denoise(noisy, SR, 20.0)
    elapsed = time.perf_counter() - started
    after = si_snr(cleaned.astype(np.float64), clean)
    log.warning("denoise on %s: SI-SNR %.1f dB -> %.1f dB (+%.1f dB), %.0f ms per s of audio", source, before,
                after, after - before, 1000 * elapsed / (len(clean) / SR))
    assert before == pytest.approx(10.0, abs=0.2)
    assert after - before > 4.0
    # The report's blind estimate sees the improvement too.
    assert levels.measure(cleaned, SR).snr_db > levels.measure(noisy, SR).snr_db + 6.0
    # Clean speech passes nearly untouched.
    assert si_snr(denoise_mod.denoise(clean, SR, 20.0).astype(np.float64), clean) > 25.0


def test_stft_round_trip_is_exact():
    x = np.random.default_rng(1).standard_normal(12345)
    np.testing.assert_allclose(denoise_mod.istft(denoise_mod.stft(x), len(x)), x, atol=1e-10)


# ---------------------------------------------------------------- mel


# The filterbank and STFT against librosa itself, live: tests/parity/test_mel.py. Wav2Lip's wrapper around them
# (not installable) is anchored by reference values computed with Wav2Lip's audio.py:


def test_melspectrogram_matches_wav2lip_reference():
    t = np.arange(8000) / SR
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1800 * t + 3000 * t * t)
    spectrogram = mel.melspectrogram(wav)
    assert spectrogram.shape == (80, 41) and spectrogram.dtype == np.float32
    # Reference: Wav2Lip audio.melspectrogram with librosa (stft pad_mode="reflect", as librosa 0.7 did).
    reference = [[1.180703, 1.005585, 1.005585, 0.755213], [-0.01792, -0.731589, -0.731585, 0.362419],
                 [-1.055988, -4.0, -4.0, -0.515282], [-1.61262, -4.0, -4.0, -0.747984]]
    np.testing.assert_allclose(spectrogram[[3, 5, 8, 12]][:, [0, 5, 20, 40]], reference, atol=2e-5)
    np.testing.assert_allclose(spectrogram[[3, 4, 5, 44, 45], 20], [1.005585, 1.10741, -0.731585, 1.39517,
                                                                     1.369958], atol=2e-5)
    assert float(spectrogram.mean()) == pytest.approx(-3.3797505, abs=1e-5)
    assert mel.melspectrogram(np.zeros(SR)).shape == (80, 81)  # 80 frames per second, plus one
    assert np.all(mel.melspectrogram(np.zeros(SR)) == -4.0)


# ---------------------------------------------------------------- wav2vec2


def tiny_wav2vec2(folder: Path, *, old_names: bool = False, layer_norm: bool = True, drop: str | None = None,
                  reshape: str | None = None) -> None:
    """A random wav2vec2 in the official Hugging Face folder layout (config.json, weights,
    preprocessor_config.json). old_names: a pytorch_model.bin with weight_g / weight_v names, as the 2021
    checkpoints (wav2vec2-large-xlsr-53-english) were saved."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=12,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer" if layer_norm else "group", do_stable_layer_norm=layer_norm,
    )
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=layer_norm).save_pretrained(folder)
    if old_names or drop or reshape:
        from safetensors.torch import load_file

        state = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        state = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
        if drop:
            del state[drop]
        if reshape:
            state[reshape] = torch.zeros(5, 5)
        torch.save(state, folder / "pytorch_model.bin")


def wan_reference(folder: Path, audio: np.ndarray) -> np.ndarray:
    """Wan2.2 AudioEncoder.extract_audio_feat(return_all_layers=True) before its frame-rate interpolation."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    processor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
    model = Wav2Vec2ForCTC.from_pretrained(folder, local_files_only=True).eval()
    input_values = processor(audio, sampling_rate=SR, return_tensors="pt").input_values
    with torch.no_grad():
        return torch.cat(model(input_values, output_hidden_states=True).hidden_states).numpy()


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    tiny_wav2vec2(root / "audio_features" / WAV2VEC2_FOLDER, old_names=True)
    return root


def test_wav2vec2_features_match_wan_and_batch_padding(weights_root, tmp_path):
    settings = AudioFeaturesSettings(denoise=False)
    assert choose_weights(settings, weights_root).source == OFFICIAL
    predictor = build_audio_features(settings, "cpu", root=weights_root)
    assert predictor.encoder is not None and predictor.encoder.batched
    clips = [speech_like(1.0) + 0.01 * sine(3000.0, 1.0), speech_like(0.55)]
    encoded = predictor.encoder.encode(clips)
    folder = weights_root / "audio_features" / WAV2VEC2_FOLDER
    for clip, features in zip(clips, encoded):
        reference = wan_reference(folder, clip.astype(np.float32))
        assert features.shape == reference.shape == (3, reference.shape[1], 32)
        assert features.shape[1] == (49 if len(clip) == SR else 27)  # 50 frames/s (stride 320, receptive 400)
        # Run in a padded batch with an attention mask, each clip equals running it alone, as Wan does.
        np.testing.assert_allclose(features, reference, atol=2e-4)
    # A group-normalised model (wav2vec2-base style) has no attention mask: clips run one at a time.
    group_folder = tmp_path / "base"
    tiny_wav2vec2(group_folder, layer_norm=False)
    from python_backends.audio.wav2vec2 import Wav2Vec2Features

    encoder = Wav2Vec2Features(group_folder)
    assert not encoder.batched
    for clip, features in zip(clips, encoder.encode(clips)):
        np.testing.assert_allclose(features, wan_reference(group_folder, clip.astype(np.float32)), atol=2e-4)


def test_wav2vec2_accepts_checkpoint_without_training_only_mask(tmp_path):
    tiny_wav2vec2(tmp_path / "audio_features" / WAV2VEC2_FOLDER, drop="wav2vec2.masked_spec_embed")
    predictor = build_audio_features(AudioFeaturesSettings(), "cpu", root=tmp_path)
    assert predictor.encoder.encode([speech_like(0.5)])[0].shape == (3, 24, 32)


@pytest.mark.parametrize("before", [True, False])
def test_wav2vec2_on_cuda_plans_by_heuristics_and_restores_the_process_flag(before):
    # The VAE's wan_vae_cudnn_benchmark switches benchmark mode on for the process; each new recording length would
    # then be timed per thread (0.31-0.37 s a request on an H100, perf/results/wav2vec2_h100.json).
    torch = pytest.importorskip("torch")
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = before
        with cudnn_heuristics("cuda:0"):
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is before
        with pytest.raises(RuntimeError), cudnn_heuristics("cuda"):
            raise RuntimeError("a failed forward")
        assert torch.backends.cudnn.benchmark is before
        with cudnn_heuristics("cpu"):  # cuDNN plays no part
            assert torch.backends.cudnn.benchmark is before
    finally:
        torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize("fault", ["drop", "reshape", "no_preprocessor"])
def test_wav2vec2_rejects_incomplete_checkpoints(tmp_path, fault):
    key = "wav2vec2.encoder.layers.1.attention.k_proj.weight"
    folder = tmp_path / "audio_features" / WAV2VEC2_FOLDER
    tiny_wav2vec2(folder, drop=key if fault == "drop" else None, reshape=key if fault == "reshape" else None)
    if fault == "no_preprocessor":
        (folder / "preprocessor_config.json").unlink()
        with pytest.raises(WeightsUnavailable, match="lacks preprocessor_config.json"):
            choose_weights(AudioFeaturesSettings(), tmp_path)
        return
    shape = r"wrong shape .*\(checkpoint \(5, 5\), model \(32, 32\)\)"
    expected = "missing 1 weight" if fault == "drop" else shape
    with pytest.raises(WeightsUnavailable, match=expected) as caught:
        build_audio_features(AudioFeaturesSettings(), "cpu", root=tmp_path)
    assert key in str(caught.value)


# ---------------------------------------------------------------- the predictor and its report


def _predict(predictor, payloads: list[bytes]) -> list[dict]:
    batch = {spec.AUDIO_BYTES: np.array([[p] for p in payloads], dtype=np.object_)}
    return predictor.predict(batch)


def test_predictor_without_wav2vec2_weights(tmp_path):
    settings = AudioFeaturesSettings()
    assert choose_weights(settings, tmp_path).source == UNAVAILABLE
    predictor = build_audio_features(settings, "cpu", root=tmp_path)
    clean, _ = load_speech()
    noisy = clean + np.random.default_rng(3).standard_normal(len(clean)) * 0.01
    started = time.perf_counter()
    (result,) = _predict(predictor, [wav_bytes(noisy)])
    elapsed = time.perf_counter() - started
    log.warning("audio_features without wav2vec2: %.0f ms CPU per s of audio",
                1000 * elapsed / (len(noisy) / SR))
    names = {t.name for t in spec.AUDIO_FEATURES.outputs} - {spec.MODEL_INFO}
    assert set(result) == names
    report = json.loads(result[spec.AUDIO_REPORT][0])
    assert set(report) == REPORT_KEYS
    assert report["wav2vec2"].startswith("unavailable: no wav2vec2 weights") and report["wav2vec2_fps"] == 50
    assert result[spec.WAV2VEC2_FEATURES].shape == (0, 0, 0) and report["wav2vec2_frames"] == 0
    waveform = result[spec.WAVEFORM]
    assert waveform.dtype == np.float32 and len(waveform) == len(noisy)
    assert report["loudness_lufs_out"] == pytest.approx(-23.0, abs=0.3)
    # The denoiser removes some energy before normalisation, so the gain is a little above target - input.
    assert report["gain_db"] == pytest.approx(-23.0 - report["loudness_lufs_in"], abs=0.6)
    assert report["snr_db_estimate_out"] > report["snr_db_estimate_in"] + 3
    assert report["denoised"] is True and 0.2 < report["active_fraction"] < 0.95
    assert result[spec.MEL].shape == (80, report["mel_frames"]) and report["mel_fps"] == 80.0
    assert report["mel_frames"] == 1 + len(noisy) // 200
    assert report["input_format"] == "wav"
    assert (report["input_sample_rate_hz"], report["input_channels"]) == (SR, 1)


def test_report_for_silent_and_clipped_inputs(tmp_path):
    predictor = build_audio_features(AudioFeaturesSettings(), "cpu", root=tmp_path)
    silent = np.zeros(2 * SR)
    clipped = np.clip(speech_like(2.0, 22050) * 12.0, -1.0, 1.0)  # a recording driven far past full scale
    silent_result, clipped_result = _predict(predictor, [wav_bytes(silent), wav_bytes(clipped, 22050)])
    report = json.loads(silent_result[spec.AUDIO_REPORT][0])
    assert report["loudness_lufs_in"] is None and report["loudness_lufs_out"] is None
    assert report["gain_db"] == 0.0 and report["peak_dbfs_in"] == -120.0 and report["clipped_fraction"] == 0.0
    assert report["active_fraction"] == 0.0 and report["noise_floor_dbfs"] == -120.0
    assert not np.any(silent_result[spec.WAVEFORM]) and np.all(silent_result[spec.MEL] == -4.0)
    report = json.loads(clipped_result[spec.AUDIO_REPORT][0])
    expected = np.mean(np.abs(clipped) >= 0.999)
    assert 0.05 < expected < 0.5 and report["clipped_fraction"] == pytest.approx(expected, abs=1e-4)
    assert report["peak_dbfs_in"] == pytest.approx(0.0, abs=0.01)
    assert report["input_sample_rate_hz"] == 22050 and report["duration_s"] == pytest.approx(2.0, abs=1e-3)
    assert 0.3 < report["active_fraction"] < 0.9
    assert report["loudness_lufs_out"] <= -23.0 + 0.3


def test_predictor_batches_clips_of_different_lengths(weights_root):
    predictor = build_audio_features(AudioFeaturesSettings(), "cpu", root=weights_root)
    assert predictor.weights.source == OFFICIAL and predictor.weights.path.name == WAV2VEC2_FOLDER
    results = _predict(predictor, [wav_bytes(speech_like(1.0)), wav_bytes(speech_like(2.5))])
    for result, seconds in zip(results, (1.0, 2.5)):
        report = json.loads(result[spec.AUDIO_REPORT][0])
        assert report["wav2vec2"] == "available"
        features = result[spec.WAV2VEC2_FEATURES]
        assert features.shape[0] == 3 and features.shape[2] == 32
        assert abs(features.shape[1] - 50 * seconds) <= 1 and report["wav2vec2_frames"] == features.shape[1]
        assert np.isfinite(features).all()


def test_predictor_rejects_non_bytes_and_settings_are_strict(tmp_path):
    predictor = build_audio_features(AudioFeaturesSettings(wav2vec2=False), "cpu", root=tmp_path)
    assert "disabled" in predictor.weights.note
    with pytest.raises(InputError, match="must hold the encoded audio file as bytes"):
        predictor.predict({spec.AUDIO_BYTES: np.array([[12]], dtype=np.object_)})
    with pytest.raises(WeightsUnavailable, match="no wav2vec2 weights"):
        build_audio_features(AudioFeaturesSettings(require_wav2vec2=True), "cpu", root=tmp_path)
    settings = from_mapping(AudioFeaturesSettings, {"target_lufs": "-16", "denoise": "false"})
    assert settings.target_lufs == -16.0 and settings.denoise is False
    with pytest.raises(ConfigError, match="target_lufs"):
        from_mapping(AudioFeaturesSettings, {"target_lufs": "5"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        from_mapping(AudioFeaturesSettings, {"loudness": "-23"})


def test_config_pbtxt_parameters_match_settings():
    import re

    from python_backends.settings import _known_keys

    text = (ROOT / "model_repository" / "audio_features" / "config.pbtxt").read_text()
    keys = re.findall(r'key: "([^"]+)"\s*value: \{ string_value: "([^"]*)" \}', text)
    # nested settings (the licence policy's `commercial`) are keys of their own
    assert {k for k, _ in keys} == _known_keys(AudioFeaturesSettings)
    assert from_mapping(AudioFeaturesSettings, dict(keys)) == AudioFeaturesSettings()
    assert f"max_batch_size: {spec.AUDIO_FEATURES.max_batch_size}" in text
