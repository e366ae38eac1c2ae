"""The delivery step: encode chunks as they arrive, then disclose, sign, self-verify and audit, in that order.

`CompliantVideoWriter` is what a job writes its frames into; no MP4 leaves it without the AI disclosure, and
(unless signing was switched off) without a C2PA manifest that verifies and an audit record. The QA verdict enters
in exactly one place, `finish(qa_verdict=...)`, so the orchestrator's verdict can be passed in when it exists;
until then it is recorded as `{"status": "not_run"}`.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .audit import AuditAppender, AuditLog, check_no_secrets
from .disclosure import LABEL_TEXT, append_xmp
from .encoding import EncodeOptions, StreamingEncoder
from .provenance import QA_NOT_RUN, ModelRecord, Provenance, SigningFailed, sign_video, verify_video
from .signing import SigningConfig, signer_identity, talkinghead_home
from .watermark import describe as describe_watermark
from .watermark import payload_for_job

TENANT_ENV = "TALKINGHEAD_TENANT"


def sha256_bytes(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_mime(data: bytes) -> str:
    try:
        return Image.MIME.get(Image.open(io.BytesIO(data)).format or "", "application/octet-stream")
    except UnidentifiedImageError:
        return "application/octet-stream"


@dataclass(frozen=True)
class JobInputs:
    photo: bytes
    audio: bytes | None = None
    driving_video: bytes | None = None
    parameters: dict = field(default_factory=dict)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class ComplianceOptions:
    signing: SigningConfig | None  # None: deliver unsigned (the disclosure and the audit record are still written)
    omit_photo_ingredient: bool = False
    visible_label: bool = False
    audit_log: Path | None = None  # None: <talkinghead home>/audit.log
    tenant: str = field(default_factory=lambda: os.environ.get(TENANT_ENV, "local"))
    watermark: bool = True  # embed the job's invisible watermark in every frame (client/watermark.py)
    policy_profile: str | None = None  # the deployment's (client/policy.py): into the manifest and the audit record

    audit_store: AuditAppender | None = None  # None: the file audit_path; the gateway may keep it in its database

    @property
    def audit_path(self) -> Path:
        return self.audit_log or talkinghead_home() / "audit.log"

    def auditor(self) -> AuditAppender:
        return self.audit_store or AuditLog(self.audit_path)


def models_from_job(chunk_info: dict, job_report: dict) -> tuple[ModelRecord, ...]:
    """The models named by the server: pre-processing's `models` report, then the generator of the chunks.

    Server-side paths are dropped (they say nothing about the weights that the hash does not, and leak layout).
    """
    records = [
        ModelRecord(role, info.get("engine", "unknown"), info.get("source"), info.get("sha256"), info.get("licence"))
        for role, info in sorted((job_report or {}).get("models", {}).items())
    ]
    generator = chunk_info.get("model_info") or {}
    records.append(ModelRecord("video_generator", generator.get("engine") or chunk_info.get("engine", "unknown"),
                               generator.get("source"), generator.get("sha256"), generator.get("licence")))
    return tuple(records)


class CompliantVideoWriter:
    def __init__(
        self, path: Path, fps: float, job: JobInputs, chunk_info: dict, job_report: dict,
        encode: EncodeOptions, compliance: ComplianceOptions, t0: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.job, self.compliance = job, compliance
        check_no_secrets(job.parameters, "parameters")  # they go into the manifest and the log: refuse now
        watermark = payload_for_job(job.job_id) if compliance.watermark else None
        self.provenance = Provenance(
            job_id=job.job_id, engine_id=chunk_info.get("engine_id", chunk_info.get("engine", "unknown")),
            engine=chunk_info.get("engine", "unknown"), models=models_from_job(chunk_info, job_report),
            parameters=dict(job.parameters), photo_sha256=sha256_bytes(job.photo), photo_format=image_mime(job.photo),
            audio_sha256=sha256_bytes(job.audio), driving_video_sha256=sha256_bytes(job.driving_video),
            omit_photo=compliance.omit_photo_ingredient, visible_label=compliance.visible_label,
            watermark=describe_watermark(watermark) if watermark is not None else None,
            policy_profile=compliance.policy_profile,
        )
        self._unsigned = self.path.with_name(f".{self.path.name}.unsigned")
        self._encoder = StreamingEncoder(self._unsigned, fps, audio=job.audio, options=encode,
                                         metadata=self.provenance.disclosure.mp4_tags(), t0=t0, watermark=watermark,
                                         label=LABEL_TEXT if compliance.visible_label else None)

    @property
    def frames_written(self) -> int:
        return self._encoder.frames_written

    @property
    def frame_size(self) -> tuple[int, int] | None:
        return self._encoder.frame_size

    def write(self, frames: np.ndarray) -> None:
        self._encoder.write(frames)

    def abort(self) -> None:
        self._encoder.abort()
        self._unsigned.unlink(missing_ok=True)

    def finish(self, qa_verdict: dict | None = None) -> dict:
        """Close the encoder, disclose, sign, verify what was written, append the audit record; the job's report."""
        verdict = dict(qa_verdict) if qa_verdict is not None else dict(QA_NOT_RUN)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        try:
            encoded = self._encoder.close()
            append_xmp(self._unsigned, self.provenance.disclosure.xmp())
            timings["encode_close_s"] = time.perf_counter() - started
            signing, summary = self.compliance.signing, None
            mark = time.perf_counter()
            if signing is not None:
                summary = sign_video(self._unsigned, self.path, self.provenance, signing, verdict)
            else:
                os.replace(self._unsigned, self.path)
            timings["sign_s"] = time.perf_counter() - mark
        except BaseException:
            self.abort()
            raise
        finally:
            self._unsigned.unlink(missing_ok=True)
        mark = time.perf_counter()
        verified = verify_video(self.path, signing.trust_anchors if signing else None)
        timings["verify_s"] = time.perf_counter() - mark
        if signing is not None and not verified.valid:
            self.path.unlink(missing_ok=True)  # never deliver a file whose own signature does not verify
            raise SigningFailed(f"the signed file did not verify: {'; '.join(verified.errors)}")
        output_sha256 = sha256_file(self.path)
        mark = time.perf_counter()
        try:
            auditor = self.compliance.auditor()
            record = self._audit(auditor, verdict, encoded, output_sha256, summary)
        except BaseException:
            self.path.unlink(missing_ok=True)  # no video leaves without its audit record
            raise
        timings["audit_s"] = time.perf_counter() - mark
        timings["finish_s"] = time.perf_counter() - started
        return {
            "job_id": self.job.job_id,
            "video": str(self.path),
            "sha256": output_sha256,
            "encode": {**encoded.as_dict(), "path": str(self.path), "options": encoded_options(self._encoder.options)},
            "signed": summary is not None,
            "signature": summary.as_dict() if summary else None,
            "verify": verified.as_dict(),
            "qa_verdict": verdict,
            "audit": {"log": auditor.location, "seq": record["seq"], "hash": record["hash"]},
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }

    def _audit(self, auditor: AuditAppender, verdict: dict, encoded, output_sha256: str, summary) -> dict:
        signing = self.compliance.signing
        held = (verdict.get("content_policy") or {}).get("action") == "hold"  # client/content_policy.py
        return auditor.append({
            "event": "video.held" if held else "video.delivered",
            "job_id": self.job.job_id,
            "tenant": self.compliance.tenant,
            "policy_profile": self.compliance.policy_profile,
            "inputs": {"photo_sha256": self.provenance.photo_sha256, "audio_sha256": self.provenance.audio_sha256,
                       "driving_video_sha256": self.provenance.driving_video_sha256},
            "engine": {"id": self.provenance.engine_id, "name": self.provenance.engine},
            "models": [model.as_dict() for model in self.provenance.models],
            "parameters": self.provenance.parameters,
            "qa_verdict": verdict,
            "disclosure": {"digital_source_type": self.provenance.disclosure.source_type,
                           "visible_label": self.compliance.visible_label},
            "output": {"file": str(self.path), "sha256": output_sha256, "bytes": self.path.stat().st_size,
                       "codec": encoded.codec, "frames": encoded.frames, "fps": encoded.fps,
                       "audio_duration_s": encoded.audio_duration_s},
            "watermark": self.provenance.watermark,
            "signer": signer_identity(signing).as_dict() if signing else None,
            "manifest": summary.manifest_label if summary else None,
        })


def encoded_options(options: EncodeOptions) -> dict:
    return {"codec": options.codec, "crf": options.effective_crf, "preset": options.preset,
            "faststart": options.faststart}
