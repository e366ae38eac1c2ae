"""Two caches, both scoped to one tenant and both keyed by the versions of the models that produce their values.

- Embedding cache: photo SHA-256 -> what pre-processing found in it (faces, head pose, identity embedding) or why
  it was rejected. A resubmitted photo that was rejected gets its 422 at submit time, without a trip through the
  queue and Triton; an accepted one has its face summary in the job status from the start.
- Output cache: SHA-256 over (photo, audio, driving video, canonical parameters incl. seed, model fingerprint) ->
  the finished, signed video. Canonical parameters fill in the server's defaults, so `{}` and `{"seed": 0}` are one
  entry.

The model fingerprint (`Fingerprint`) is what makes "a model upgrade never serves a stale video" hold: it hashes
the talkinghead version, Triton's repository index (every model's name, version, state) with each model's served
config, and the weights each model loads as `talkinghead weights` lists them (file SHA-256s, from the same weights
folder tritonserver uses: `caches.weights_root`). Any of these changing changes every key. As a safety net a
finished job's own report (the weights the server says it used) is compared with the fingerprint before its video
is cached: if they disagree (the gateway sees other weight files than the server), nothing is cached and the log
says why. Without a fingerprint (no weights listing possible here) both caches stay off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_backends.contract import PUBLIC_PARAMETERS, InputError, parse_job_params

logger = logging.getLogger(__name__)

EMBEDDING, OUTPUT = "embedding", "output"
FACE_MODELS = ("face_detector", "face_landmarks", "face_embedder")
# Rejections that depend on the photo alone (image_io.py, photo_checks.py), safe to remember per photo hash.
PHOTO_CODES = frozenset({"photo_unreadable", "photo_empty", "photo_too_large", "photo_too_many_pixels",
                         "photo_too_small", "no_face", "multiple_faces", "face_too_small", "face_cut_off",
                         "face_in_profile", "face_tilted", "face_pose_unknown"})
# Request parameters a job may set (the contract's JobParams); start_frame / frame_count belong to the orchestrator.
PARAMETERS = PUBLIC_PARAMETERS


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(*parts: Any) -> str:
    return hashlib.sha256(canonical_json(list(parts))).hexdigest()


class ParameterError(ValueError):
    """A generation parameter is unknown or malformed; the message says which and what is allowed."""


def canonical_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Validate request parameters exactly as the server will (python_backends.contract) and return them with
    every default filled in."""
    try:
        return dataclasses.asdict(parse_job_params(parameters))
    except InputError as exc:
        raise ParameterError(str(exc)) from None


@dataclass(frozen=True)
class Fingerprint:
    digest: str
    triton: str  # hash of the repository index + served configs
    weights: dict[str, dict]  # model -> {"engine", "source", "sha256"}

    def face_models(self) -> str:
        return digest(self.triton, {name: self.weights.get(name) for name in FACE_MODELS})

    def mismatches(self, reported: dict[str, dict]) -> list[str]:
        """Models whose weights, as the server reported them for a job, differ from the fingerprint's."""
        problems = []
        for model, info in sorted(reported.items()):
            mine = self.weights.get(model)
            if mine is None:
                continue
            for key in ("engine", "sha256"):
                if info.get(key) != mine.get(key):
                    problems.append(f"{model}.{key}: server {info.get(key)!r}, gateway {mine.get(key)!r}")
        return problems


def _weights_listing(root: Path | None) -> dict[str, dict]:
    """`talkinghead weights` as data (imports the model packages: server extras needed)."""
    from python_backends.catalog import ROLES, config_model, weights_for

    from ..repository import config_path, load_config, parameters

    listing = {}
    for model in ROLES:
        choice = weights_for(model, parameters(load_config(config_path(config_model(model), None))), root).as_dict()
        listing[model] = {key: choice[key] for key in ("engine", "source", "sha256")}
    return listing


def _model_index(grpc_client: Any) -> list[dict]:
    """Triton's model index. Where the repository API is locked (`talkinghead serve` opens it only to its stub
    watchdog, client/server.py), the project's models one by one through the open health and metadata APIs."""
    from tritonclient.utils import InferenceServerException

    try:
        return grpc_client.get_model_repository_index(as_json=True).get("models", [])
    except InferenceServerException:
        from python_backends.spec import ALL_MODELS

        models = []
        for name in ALL_MODELS:
            if grpc_client.is_model_ready(name):  # a server that went away raises here, as the index would
                versions = grpc_client.get_model_metadata(name, as_json=True).get("versions", [])
                models += [{"name": name, "version": version, "state": "READY"} for version in versions]
            else:
                models.append({"name": name, "version": "", "state": "UNAVAILABLE"})
        return models


def triton_state(grpc_client: Any) -> str:
    """Hash of what Triton serves: every model's name, version and state, and each ready model's config."""
    index = _model_index(grpc_client)
    entries = []
    for model in sorted(index, key=lambda m: (m.get("name", ""), m.get("version", ""))):
        config = None
        if model.get("state") == "READY":
            config = grpc_client.get_model_config(model["name"], model.get("version", ""), as_json=True)
        entries.append({"name": model.get("name"), "version": model.get("version"), "state": model.get("state"),
                        "config": config})
    return digest(entries)


class FingerprintSource:
    """Keeps the current fingerprint: Triton's part on every call (cheap), the weights part refreshed every
    `refresh_s` (file hashes are cached by size and mtime, so a refresh re-hashes only changed files)."""

    def __init__(self, weights_root: Path | None, refresh_s: float = 300.0) -> None:
        self.weights_root, self.refresh_s = weights_root, refresh_s
        self._lock = threading.Lock()
        self._weights: dict[str, dict] | None = None
        self._weights_at = 0.0
        self._unavailable: str | None = None
        self.latest: Fingerprint | None = None

    def weights(self, wait: bool = True) -> dict[str, dict] | None:
        """The weights listing, refreshed when older than `refresh_s`. With wait=False a listing being made by
        another thread (the first one imports the model packages and hashes every file) is not waited for: the
        caller gets the previous listing, or None."""
        if not self._lock.acquire(blocking=wait):
            return self._weights if self._weights_fresh() else None
        try:
            if self._unavailable is None and not self._weights_fresh():
                try:
                    self._weights = _weights_listing(self.weights_root)
                    self._weights_at = time.monotonic()
                except ImportError as exc:
                    self._unavailable = f"the weights cannot be listed here ({exc}); caches are off"
                    logger.warning("model fingerprint: %s", self._unavailable)
            return self._weights
        finally:
            self._lock.release()

    @property
    def status(self) -> str:
        """ready (caches in use), pending (the first weights listing is still being made) or off: why."""
        if self._unavailable is not None:
            return f"off: {self._unavailable}"
        return "ready" if self._weights is not None else "pending"

    def _weights_fresh(self) -> bool:
        return self._weights is not None and time.monotonic() - self._weights_at <= self.refresh_s

    def current(self, grpc_client: Any, wait: bool = True) -> Fingerprint | None:
        weights = self.weights(wait)
        if weights is None:
            return None
        from python_backends import __version__

        triton = triton_state(grpc_client)
        fingerprint = Fingerprint(digest(__version__, triton, weights), triton, weights)
        self.latest = fingerprint
        return fingerprint


def output_key(tenant_id: str, inputs: dict[str, dict], parameters: dict, fingerprint: Fingerprint) -> str:
    hashes = {name: (inputs.get(name) or {}).get("sha256") for name in ("photo", "audio", "driving_video")}
    return digest("output", tenant_id, hashes, canonical_parameters(parameters), fingerprint.digest)


def embedding_key(tenant_id: str, photo_sha256: str, fingerprint: Fingerprint) -> str:
    return digest("embedding", tenant_id, photo_sha256, fingerprint.face_models())


def photo_summary(job_report: dict) -> dict:
    """The photo's part of a pre-processing report, as the embedding cache keeps it."""
    faces = job_report.get("faces") or []
    embedding = job_report.get("embedding") or {}
    return {
        "status": "accepted",
        "photo": job_report.get("photo"),
        "faces": len(faces),
        "selected_face": faces[job_report["selected_face"]] if faces and "selected_face" in job_report else None,
        "head_pose": job_report.get("head_pose"),
        "embedding": {"dim": embedding.get("dim"), "vector": embedding.get("vector")},
        "models": {name: (job_report.get("models") or {}).get(name) for name in FACE_MODELS},
    }


def public_photo_summary(summary: dict | None) -> dict | None:
    """What the API shows: no embedding vector (biometric data stays inside the gateway)."""
    if not summary:
        return None
    return {key: value for key, value in summary.items() if key not in ("embedding", "models")}
