"""An in-process gateway (uvicorn on loopback, in a thread) whose workers stream from a stand-in for tritonserver
that ends every job with a QA report: fast enough to drive the review queue from unit, reliability and browser
tests without a real server. The QA report's content checks are chosen per test (`FakeTriton.photo_minor`...).
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from gateway_harness import TritonClientStandIn

from client.cli import SAMPLE_AUDIO, SAMPLE_PHOTO
from client.gateway import worker as worker_module
from client.gateway.app import create_app
from client.gateway.review import ReviewQueue
from client.gateway.settings import load_settings
from client.gateway.tenant_settings import TenantSettingsStore
from client.gateway.tenants import MasterKey, Tenants
from client.server import free_port
from client.triton_client import StreamedChunk

FRAMES, SIZE, FPS = 12, 64, 12.0
# The photo's face data as pre-processing reports it; distinctive numbers, so a test can look for them on disk.
EMBEDDING = [0.918273, -0.564738, 0.291847, -0.737261]
JOB_REPORT = {"photo": {"width": 512, "height": 512}, "faces": [{"box": [101.25, 87.5, 301.75, 322.5], "score": 0.99,
                                                                "keypoints": [[151.5, 170.25]] * 5}],
              "selected_face": 0, "landmarks": [[173.125, 201.375]] * 68,
              "head_pose": {"yaw": 1.5, "pitch": -2.0, "roll": 0.5},
              "embedding": {"dim": 4, "norm": 1.0, "vector": EMBEDDING}, "models": {}}


def qa_report(minor: str = "unavailable", verdict: str = "pass_with_unavailable", segments: int = 1) -> dict:
    """A QA report shaped as talking_head streams it: one segment, every gate passing but the content checks."""
    gates = {name: {"status": "pass", "reasons": []} for name in
             ("face_presence", "identity", "lipsync", "flicker", "jaw", "eyes", "edge", "content_safety")}
    photo_safety = {"status": "unavailable" if minor == "unavailable" else "pass",
                    "nsfw": {"status": "pass", "score": 0.01, "threshold": 0.5, "reason": "highest explicit 0.01"},
                    "minor": {"status": minor, "score": None, "threshold": 23.0,
                              "reason": "no age model: put genderage.onnx at <weights root>/content_safety"},
                    "public_figure": {"status": "not_applicable", "score": None, "threshold": None,
                                      "reason": "no embedding sent"}}
    per_segment = FRAMES // segments
    return {
        "schema_version": 1, "verdict": verdict, "segments_for_review": [0] if verdict == "needs_review" else [],
        "gates": gates, "rerolls": 0, "engine": "fake", "frames": FRAMES, "fps": FPS,
        "identity": {"embedder": "fake", "threshold": 0.5, "window_s": 1.0,
                     "windows": [{"window": 0, "start_s": 0.0, "end_s": 1.0, "samples": 2, "mean_cosine": 0.9,
                                  "min_cosine": 0.88, "status": "pass"}]},
        "lipsync_clip": None,
        "segments": [{"segment": i, "start_frame": i * per_segment, "frames": per_segment, "attempt": 0,
                      "verdict": "pass", "failed": [],
                      "gates": [{"gate": "lipsync", "status": "pass"}, {"gate": "content_safety", "status": "pass",
                                                                         "max_nsfw_score": 0.01}]}
                     for i in range(segments)],
        "post_processing": {"photo_safety": photo_safety, "driving_video_safety": None},
    }


class FakeTriton(TritonClientStandIn):
    """Replaces TalkingHeadClient in the worker: a moving gradient, then the QA report `FakeTriton.report`."""

    report: dict = qa_report()

    def generate(self, photo, audio, video, parameters, idle_timeout_s=0.0, deadline_s=None):
        ramp = np.linspace(0, 255, SIZE, dtype=np.float32)

        def stream():
            for start in range(0, FRAMES, 4):
                frames = np.stack([np.stack([np.roll(ramp, 5 * (start + i))[None, :].repeat(SIZE, 0)] * 3, -1)
                                   for i in range(4)]).astype(np.uint8)
                info = {"engine": "fake", "engine_id": "preview", "segment": 0}
                if start == 0:
                    info["job_report"] = json.loads(json.dumps(JOB_REPORT))
                yield StreamedChunk(frames, start, FRAMES, FPS, info)
            yield StreamedChunk(np.zeros((0, SIZE, SIZE, 3), np.uint8), FRAMES, FRAMES, FPS,
                                {"qa_report": json.loads(json.dumps(type(self).report))})  # a fresh copy per job

        return stream()


class LiveGateway:
    def __init__(self, app, settings, port: int) -> None:
        self.app, self.settings, self.port = app, settings, port
        self.gateway = app.state.gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tenant(self, name: str, profile: str | None = None) -> tuple[str, str]:
        """(tenant id, API key) of a new tenant, with its own content policy profile if given."""
        created = Tenants(self.gateway.store, self.gateway.master, self.settings.tenant_defaults).create(name)
        if profile:
            TenantSettingsStore(self.gateway.store.db).update(created.tenant.id, policy_profile=profile)
        return created.tenant.id, created.api_key

    def operator(self, name: str, tenant_id: str | None = None) -> str:
        return ReviewQueue(self.gateway.store).add_operator(name, tenant_id)

    def submit(self, key: str, webhook_url: str | None = None) -> str:
        files = {"photo": ("photo.png", SAMPLE_PHOTO.read_bytes(), "image/png"),
                 "audio": ("speech.wav", SAMPLE_AUDIO.read_bytes(), "audio/wav")}
        data = {"parameters": '{"fps": 12}', **({"webhook_url": webhook_url} if webhook_url else {})}
        response = httpx.post(f"{self.url}/v1/videos", files=files, data=data,
                              headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def held_job(self, tenant: str = "acme", operator: str = "alice") -> tuple[str, str, str]:
        """(tenant API key, operator key, job id) of a strict tenant's job, held for review."""
        _, key = self.tenant(tenant, profile="strict")
        operator_key = self.operator(operator)
        job_id = self.submit(key)
        self.wait(key, job_id, ("held",))
        return key, operator_key, job_id

    def wait(self, key: str, job_id: str, states: tuple[str, ...], timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = httpx.get(f"{self.url}/v1/videos/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
            if job["status"] in states:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never reached {states}: {job}")


@contextmanager
def live_gateway(data_dir: Path, monkeypatch, **settings_overrides):
    """The gateway app on a free loopback port, workers streaming from FakeTriton; development deployment."""
    settings_overrides.setdefault("webhooks", {"allow": ["127.0.0.1"]})  # receivers on loopback (none listens)
    monkeypatch.setattr(worker_module, "TalkingHeadClient", FakeTriton)
    monkeypatch.setattr("client.gateway.app.TalkingHeadClient", FakeTriton)
    settings = load_settings(None, env={}, data_dir=str(data_dir), poll_s=0.05, **settings_overrides,
                             caches={"embeddings": False, "outputs": False}, lease_s=10, heartbeat_s=1)
    MasterKey(settings.secrets_path)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the gateway did not start"
        time.sleep(0.05)
    try:
        yield LiveGateway(app, settings, port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
