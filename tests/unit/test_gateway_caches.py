"""Cache keys: every input, parameter, seed and model/weights version is in them; defaults are canonical."""

from __future__ import annotations

import pytest

from client.gateway.caches import (
    Fingerprint,
    FingerprintSource,
    ParameterError,
    canonical_parameters,
    digest,
    embedding_key,
    output_key,
    photo_summary,
    public_photo_summary,
    triton_state,
)

WEIGHTS = {
    "face_detector": {"engine": "mtcnn", "source": "shipped", "sha256": "aa"},
    "face_embedder": {"engine": "dlib-resnet-v1-128", "source": "shipped", "sha256": "bb"},
    "video_generator": {"engine": "preview-landmark-warp", "source": "shipped", "sha256": None},
}
INPUTS = {"photo": {"sha256": "p1"}, "audio": {"sha256": "a1"}}


def _fingerprint(weights=WEIGHTS, triton="t1") -> Fingerprint:
    return Fingerprint(digest("0.1.0", triton, weights), triton, weights)


def test_canonical_parameters_fill_the_servers_defaults():
    assert canonical_parameters({}) == canonical_parameters({"seed": 0, "engine": "auto", "fps": 25.0})
    values = canonical_parameters({"width": "256", "height": 256, "fps": 10})
    assert values["width"] == 256 and values["fps"] == 10.0 and "start_frame" not in values
    with pytest.raises(ParameterError, match="unknown parameter 'start_frame'"):
        canonical_parameters({"start_frame": 3})
    with pytest.raises(ParameterError, match="fps must be between 1 and 60"):
        canonical_parameters({"fps": 500})
    with pytest.raises(ParameterError, match="expected int"):
        canonical_parameters({"seed": "x"})


def test_output_key_covers_inputs_parameters_seed_and_models():
    base = output_key("ten_a", INPUTS, {"fps": 10}, _fingerprint())
    assert base == output_key("ten_a", INPUTS, {"fps": 10.0, "seed": 0}, _fingerprint())
    changed = {
        "tenant": output_key("ten_b", INPUTS, {"fps": 10}, _fingerprint()),
        "photo": output_key("ten_a", {**INPUTS, "photo": {"sha256": "p2"}}, {"fps": 10}, _fingerprint()),
        "audio": output_key("ten_a", {**INPUTS, "audio": {"sha256": "a2"}}, {"fps": 10}, _fingerprint()),
        "driving video": output_key("ten_a", {**INPUTS, "driving_video": {"sha256": "v"}}, {"fps": 10},
                                    _fingerprint()),
        "parameters": output_key("ten_a", INPUTS, {"fps": 12}, _fingerprint()),
        "seed": output_key("ten_a", INPUTS, {"fps": 10, "seed": 1}, _fingerprint()),
        "weights": output_key("ten_a", INPUTS, {"fps": 10}, _fingerprint(
            {**WEIGHTS, "face_embedder": {**WEIGHTS["face_embedder"], "sha256": "cc"}})),
        "engine": output_key("ten_a", INPUTS, {"fps": 10}, _fingerprint(
            {**WEIGHTS, "video_generator": {"engine": "wan2.2-s2v-14B", "source": "official", "sha256": "dd"}})),
        "triton config": output_key("ten_a", INPUTS, {"fps": 10}, _fingerprint(triton="t2")),
    }
    assert len(set(changed.values()) | {base}) == len(changed) + 1, "every change must give a new key"


def test_embedding_key_depends_on_the_face_models_only():
    fp = _fingerprint()
    key = embedding_key("ten_a", "p1", fp)
    new_generator = _fingerprint({**WEIGHTS, "video_generator": {"engine": "x", "source": "y", "sha256": "z"}})
    assert embedding_key("ten_a", "p1", new_generator) == key  # the photo's faces do not depend on the generator
    new_detector = _fingerprint({**WEIGHTS, "face_detector": {"engine": "retinaface", "source": "o", "sha256": "r"}})
    assert embedding_key("ten_a", "p1", new_detector) != key
    assert embedding_key("ten_b", "p1", fp) != key and embedding_key("ten_a", "p2", fp) != key


def test_mismatch_between_server_report_and_gateway_view():
    fp = _fingerprint()
    assert fp.mismatches({"face_detector": {"engine": "mtcnn", "sha256": "aa", "path": "/x"}}) == []
    problems = fp.mismatches({"face_detector": {"engine": "retinaface-resnet50", "sha256": "ff"},
                              "unknown_model": {"engine": "?"}})
    assert problems == ["face_detector.engine: server 'retinaface-resnet50', gateway 'mtcnn'",
                        "face_detector.sha256: server 'ff', gateway 'aa'"]


class _FakeTriton:
    def __init__(self, version="1", config=None):
        self.version, self.config = version, config or {"max_batch_size": 4}

    def get_model_repository_index(self, as_json=True):
        return {"models": [{"name": "b", "version": self.version, "state": "READY"},
                           {"name": "a", "version": "1", "state": "UNAVAILABLE"}]}

    def get_model_config(self, name, version, as_json=True):
        assert name == "b"
        return {"config": self.config}


def test_triton_state_changes_with_versions_and_configs():
    base = triton_state(_FakeTriton())
    assert base == triton_state(_FakeTriton())
    assert triton_state(_FakeTriton(version="2")) != base
    assert triton_state(_FakeTriton(config={"max_batch_size": 8})) != base


def test_fingerprint_source_refreshes_the_weights_listing(monkeypatch):
    from client.gateway import caches

    listings = iter([WEIGHTS, {**WEIGHTS, "face_detector": {"engine": "mtcnn", "source": "s", "sha256": "new"}}])
    monkeypatch.setattr(caches, "_weights_listing", lambda root: next(listings))
    source = FingerprintSource(None, refresh_s=0.0)
    first = source.current(_FakeTriton())
    second = source.current(_FakeTriton())
    assert first.digest != second.digest and source.latest == second

    def missing(root):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(caches, "_weights_listing", missing)
    off = FingerprintSource(None)
    assert off.current(_FakeTriton()) is None and off.latest is None  # caches stay off


def test_photo_summary_keeps_the_embedding_inside():
    report = {"faces": [{"box": [1, 2, 3, 4], "score": 0.99}], "selected_face": 0, "photo": {"width": 512},
              "head_pose": {"yaw": 1.0}, "embedding": {"dim": 3, "vector": [0.1, 0.2, 0.3], "norm": 1.0},
              "models": {"face_detector": {"engine": "mtcnn"}}}
    summary = photo_summary(report)
    assert summary["embedding"]["vector"] == [0.1, 0.2, 0.3] and summary["faces"] == 1
    shown = public_photo_summary(summary)
    assert "embedding" not in shown and shown["selected_face"]["score"] == 0.99


def test_a_job_never_waits_for_a_weights_listing_in_progress(monkeypatch):
    import threading

    from client.gateway import caches

    started, release = threading.Event(), threading.Event()

    def slow_listing(root):
        started.set()
        release.wait(10)
        return WEIGHTS

    monkeypatch.setattr(caches, "_weights_listing", slow_listing)
    source = FingerprintSource(None)
    background = threading.Thread(target=source.weights)
    background.start()
    assert started.wait(10)
    assert source.current(_FakeTriton(), wait=False) is None  # skips the caches rather than block the run
    release.set()
    background.join()
    assert source.current(_FakeTriton(), wait=False).weights == WEIGHTS
