"""SyncNet loader, MFCC front end, LSE-D / LSE-C offset search and the lip-sync gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from python_backends.errors import ConfigError, InputError, WeightsUnavailable
from python_backends.lipsync_scorer import lipsync
from python_backends.lipsync_scorer.lipsync import (
    LipSyncGateSettings,
    SyncScore,
    calc_pdist,
    embed_clip,
    lipsync_gate,
    score_sync,
    sync_from_embeddings,
)
from python_backends.lipsync_scorer.syncnet import SyncNet, choose_weights, load_default_syncnet, load_syncnet, mfcc
from python_backends.settings import from_mapping


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """A random state dict in syncnet_v2.model's layout: S's keys, no BatchNorm step counters (pre-1.0 torch)."""
    torch.manual_seed(0)
    model = SyncNet()
    return {k: torch.randn_like(v.float()) * 0.05 if "running_var" not in k else torch.rand_like(v) + 0.5
            for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def random_model(official_state) -> SyncNet:
    model = SyncNet()
    model.load_state_dict(official_state, strict=False)
    return model.eval()


def test_official_layout_loads_strictly(tmp_path, official_state):
    path = tmp_path / "lipsync_scorer" / "syncnet_v2.model"
    path.parent.mkdir()
    torch.save(official_state, path)
    model = load_syncnet(path)
    assert not model.training
    assert torch.equal(model.netcnnlip[0].weight, official_state["netcnnlip.0.weight"])
    assert tuple(official_state["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(official_state["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(official_state["netfclip.3.weight"].shape) == (1024, 512)
    choice = choose_weights(tmp_path)
    assert choice.available and choice.path == path
    assert isinstance(load_default_syncnet(tmp_path), SyncNet)
    # The published file predates torch 1.6's zip format: the legacy serialisation must load too.
    torch.save(official_state, tmp_path / "legacy.model", _use_new_zipfile_serialization=False)
    assert torch.equal(load_syncnet(tmp_path / "legacy.model").netfcaud[3].bias, official_state["netfcaud.3.bias"])


def test_missing_and_misshaped_keys_are_named(tmp_path, official_state):
    missing = {k: v for k, v in official_state.items() if k != "netcnnlip.0.weight"}
    torch.save(missing, tmp_path / "a.model")
    with pytest.raises(WeightsUnavailable, match="netcnnlip.0.weight"):
        load_syncnet(tmp_path / "a.model")
    misshaped = dict(official_state, **{"netfcaud.3.weight": torch.zeros(512, 512)})
    torch.save(misshaped, tmp_path / "b.model")
    with pytest.raises(WeightsUnavailable, match=r"'netfcaud.3.weight' has shape \(512, 512\)"):
        load_syncnet(tmp_path / "b.model")
    prefixed = {"__S__." + k: v for k, v in official_state.items()}
    torch.save(prefixed, tmp_path / "c.model")
    with pytest.raises(WeightsUnavailable, match="unexpected key"):
        load_syncnet(tmp_path / "c.model")


def test_no_weights_means_unavailable_gate(tmp_path):
    assert not choose_weights(tmp_path).available
    assert load_default_syncnet(tmp_path) is None
    result = lipsync_gate(None, np.zeros((30, 224, 224, 3), np.uint8), np.zeros(30 * 640, np.float32))
    assert result.status == "unavailable" and not result.passed
    assert "syncnet_v2.model" in result.reason
    assert result.as_dict()["score"] is None


# The MFCC against python_speech_features itself, live: tests/parity/test_speech_features.py.


def test_mfcc_rate_is_100_hz():
    assert mfcc(np.ones(16000)).shape == (99, 13)
    assert mfcc(np.ones(32000)).shape == (199, 13)
    assert mfcc(np.ones(100)).shape == (1, 13)  # shorter than one window: one zero-padded frame
    silent = mfcc(np.zeros(1600))
    assert np.all(np.isfinite(silent))


def _official_calc_pdist(feat1, feat2, vshift):
    """SyncNetInstance.calc_pdist as published (a per-frame loop), to check the vectorised version."""
    win = vshift * 2 + 1
    feat2p = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
    return [torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win, 1), feat2p[i:i + win, :])
            for i in range(len(feat1))]


def test_calc_pdist_matches_official_loop():
    gen = torch.Generator().manual_seed(1)
    video, audio = torch.randn(12, 32, generator=gen), torch.randn(12, 32, generator=gen)
    ours = calc_pdist(video, audio, 15)
    official = torch.stack(_official_calc_pdist(video, audio, 15))
    torch.testing.assert_close(ours, official)
    mdist = torch.mean(torch.stack(_official_calc_pdist(video, audio, 15), 1), 1)
    score = sync_from_embeddings(video, audio, 15)
    minval, minidx = torch.min(mdist, 0)
    assert score.offset_frames == 15 - int(minidx)
    assert score.lse_d == pytest.approx(float(minval), abs=1e-6)
    assert score.lse_c == pytest.approx(float(torch.median(mdist) - minval), abs=1e-6)


@pytest.mark.parametrize("k", [0, 4, -3, 10])
def test_offset_search_finds_shift(k):
    gen = torch.Generator().manual_seed(2)
    frames = 60
    audio = torch.randn(frames, 64, generator=gen)
    video = torch.randn(frames, 64, generator=gen)
    for i in range(frames):
        if 0 <= i - k < frames:
            video[i] = audio[i - k]  # the mouth shows, at frame i, the sound of frame i - k
    score = sync_from_embeddings(video, audio)
    assert score.offset_frames == k
    assert score.lse_c > 0
    assert score.per_offset_dist.shape == (31,)
    assert score.lse_d == pytest.approx(float(score.per_offset_dist.min()))
    assert int(np.argmin(score.per_offset_dist)) == 15 - k


def test_score_sync_end_to_end_on_random_model(random_model):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(9, 96, 96, 3), dtype=np.uint8)  # resized to 224 as the official crops
    wave = (0.1 * rng.standard_normal(9 * 640 + 100)).astype(np.float32)
    video, audio = embed_clip(random_model, frames, wave)
    assert video.shape == audio.shape == (4, 1024)  # official: min(frames, samples // 640) - 5 windows
    score = score_sync(frames, wave, 25, random_model)
    assert -15 <= score.offset_frames <= 15
    assert score.lse_c >= 0 and np.isfinite(score.lse_d)
    expected = sync_from_embeddings(video, audio)
    assert score.offset_frames == expected.offset_frames
    assert score.lse_d == pytest.approx(expected.lse_d, rel=1e-5)
    # RGB input is flipped to the official BGR order: giving BGR with rgb=False embeds the same thing.
    bgr_video, _ = embed_clip(random_model, frames[..., ::-1], wave, rgb=False)
    torch.testing.assert_close(bgr_video, video)


def test_score_sync_rejects_bad_input(random_model):
    with pytest.raises(InputError, match="25 fps"):
        score_sync(np.zeros((30, 224, 224, 3), np.uint8), np.zeros(30 * 640), 30, random_model)
    with pytest.raises(InputError, match="at least 6 frames"):
        score_sync(np.zeros((5, 224, 224, 3), np.uint8), np.zeros(5 * 640), 25, random_model)
    short = lipsync_gate(random_model, np.zeros((5, 224, 224, 3), np.uint8), np.zeros(5 * 640))
    assert short.status == "unavailable"


def _fake_score(offset: int, lse_d: float, lse_c: float) -> SyncScore:
    return SyncScore(offset, lse_d, lse_c, np.full(31, lse_d + lse_c))


@pytest.mark.parametrize(("score", "status", "why"), [
    (_fake_score(0, 6.7, 7.8), "pass", "LSE-D 6.70"),
    (_fake_score(1, 10.3, 3.2), "fail", "LSE-D 10.30 > 8"),
    (_fake_score(0, 7.0, 4.0), "fail", "LSE-C 4.00 < 5"),
    (_fake_score(10, 6.7, 7.8), "fail", "AV offset +10"),
])
def test_gate_thresholds(monkeypatch, random_model, score, status, why):
    monkeypatch.setattr(lipsync, "score_sync", lambda *args, **kwargs: score)
    result = lipsync_gate(random_model, np.zeros((30, 224, 224, 3), np.uint8), np.zeros(30 * 640))
    assert result.status == status and why in result.reason
    assert result.as_dict()["thresholds"]["max_lse_d"] == 8.0


def test_gate_settings_parse_and_validate():
    settings = from_mapping(LipSyncGateSettings, {"max_lse_d": "7.5", "max_abs_offset_frames": "1"})
    assert settings.max_lse_d == 7.5 and settings.max_abs_offset_frames == 1 and settings.min_lse_c == 5.0
    with pytest.raises(ConfigError):
        from_mapping(LipSyncGateSettings, {"max_abs_offset_frames": "20"})


def test_the_served_scorer_loads_the_official_file_and_reports(tmp_path, official_state):
    """lipsync_scorer's predictor: syncnet_v2.model under the weights root -> a JSON report per clip."""
    import json

    from python_backends import spec
    from python_backends.lipsync_scorer.scorer import LipSyncScorerSettings, build_lipsync_scorer

    with pytest.raises(WeightsUnavailable, match="syncnet_v2.model"):
        build_lipsync_scorer(LipSyncScorerSettings(), "cpu", tmp_path)
    (tmp_path / "lipsync_scorer").mkdir()
    torch.save(official_state, tmp_path / "lipsync_scorer" / "syncnet_v2.model")
    scorer = build_lipsync_scorer(LipSyncScorerSettings(), "cpu", tmp_path)
    assert scorer.weights.engine == "syncnet-v2" and scorer.weights.available
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (1, 40, 64, 64, 3), dtype=np.uint8)
    waveform = (0.1 * rng.standard_normal((1, 40 * 640))).astype(np.float32)
    (out,) = scorer.predict({spec.FACE_CROPS: crops, spec.WAVEFORM: waveform, spec.FPS: np.array([[25.0]], np.float32)})
    report = json.loads(out[spec.SYNC_REPORT][0])
    assert report["status"] in ("pass", "fail") and len(report["score"]["per_offset_dist"]) == 31
