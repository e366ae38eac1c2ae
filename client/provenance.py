"""C2PA Content Credentials for our MP4s: build the manifest, sign it offline, verify it.

The manifest holds:
- `c2pa.actions.v2`: one `c2pa.created` action with the IPTC digitalSourceType, `softwareAgent` = talkinghead and
  its version, and the engine / model ids as parameters;
- the source photo as an `inputTo` ingredient, by SHA-256 only (no thumbnail, no pixels), or nothing at all with
  `omit_photo=True` for privacy;
- `talkinghead.ai_disclosure` (EU AI Act Art. 50), `talkinghead.generation` (engine, models and weight hashes,
  parameters, job id, credential kind, the invisible watermark's algorithm and payload, the deployment's policy
  profile) and `talkinghead.qa` (the QA verdict, `{"status": "not_run"}` without one);
- a development credential (client/signing.py) is named in the claim generator info as well.

Integrity vs trust: c2pa-rs reports `signingCredential.untrusted` for any signer whose root is not on the verifier's
trust list, our development CA included. That says nothing about tampering, so `verify_video` keeps it apart:
`valid` means the signature, the claim, every assertion and the BMFF hash of the video all check out; `trusted`
is the separate question of whether the signer chains to a configured trust anchor.

What C2PA covers, measured on our files (tests/unit/test_provenance.py): every byte of the video (mdat, moov,
our XMP box) and of the claim, assertions, signature and certificates. By the standard's design it does not cover
the ftyp/free boxes, the JUMBF box labels of the manifest store or the padding reserved in the signature; the
audit log's SHA-256 of the whole file covers those (`talkinghead verify --audit-log`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import c2pa

from python_backends import __version__

from .disclosure import SOFTWARE, Disclosure, parse_xmp, read_xmp
from .signing import SignerIdentity, SigningConfig, read_credential, signer_identity

DISCLOSURE_LABEL = "talkinghead.ai_disclosure"
GENERATION_LABEL = "talkinghead.generation"
QA_LABEL = "talkinghead.qa"
QA_NOT_RUN = {"status": "not_run"}
DEVELOPMENT_KEY = "talkinghead_credential"
DEVELOPMENT_NOTE = "development credential: not for production, trusted by no verifier"
# Failure codes that speak about trust in the signer, not about the integrity of the file or the manifest.
TRUST_CODES = frozenset({"signingCredential.untrusted"})
MIME = "video/mp4"


@dataclass(frozen=True)
class ModelRecord:
    """One model that touched the output: its role, the engine that ran and the weights it ran with."""

    role: str
    engine: str
    source: str | None = None  # official / shipped / generated (from the server's model_info)
    sha256: str | None = None  # of the weights file or folder; None when the engine has no weights
    licence: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Provenance:
    """Everything the manifest and the audit log say about how one video was made."""

    job_id: str
    engine_id: str  # the generator's engine key, e.g. "preview", "s2v-14B"
    engine: str  # its name, e.g. "preview-landmark-warp"
    models: tuple[ModelRecord, ...] = ()
    parameters: dict = field(default_factory=dict)
    photo_sha256: str | None = None
    photo_format: str = "image/png"  # MIME type of the photo as uploaded
    audio_sha256: str | None = None
    driving_video_sha256: str | None = None
    omit_photo: bool = False
    visible_label: bool = False
    watermark: dict | None = None  # the invisible watermark in the frames (client/watermark.py `describe`)
    policy_profile: str | None = None  # the deployment's policy profile (client/policy.py)

    @property
    def disclosure(self) -> Disclosure:
        return Disclosure(self.engine_id, self.engine, self.visible_label)

    def model_ids(self) -> dict[str, str]:
        return {model.role: model.engine for model in self.models}


@dataclass(frozen=True)
class SignSummary:
    manifest_label: str | None
    manifest_bytes: int
    signer: SignerIdentity
    algorithm: str
    development: bool
    photo_ingredient: bool

    def as_dict(self) -> dict:
        return {**asdict(self), "signer": self.signer.as_dict()}


def build_manifest(provenance: Provenance, qa_verdict: dict | None, development: bool,
                   title: str = "talkinghead.mp4") -> dict:
    disclosure = provenance.disclosure
    agent = {"name": SOFTWARE, "version": __version__}
    generation = {
        "software": agent,
        "job_id": provenance.job_id,
        "engine": provenance.engine,
        "engine_id": provenance.engine_id,
        "models": [model.as_dict() for model in provenance.models],
        "parameters": provenance.parameters,
        "source_photo": "omitted" if provenance.omit_photo else "ingredient",
        "credential": "development" if development else "configured",
        "watermark": provenance.watermark,  # algorithm + payload: a stripped copy's frames still lead back here
        "policy_profile": provenance.policy_profile,
    }
    # A development credential is also named where every C2PA reader shows the generator, not only in our assertion.
    generator = {**agent, DEVELOPMENT_KEY: DEVELOPMENT_NOTE} if development else agent
    manifest = {
        "claim_generator_info": [generator],
        "title": title,
        "format": MIME,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": disclosure.source_type,
                "softwareAgent": agent,
                "description": "talking-head video generated from a photo and speech",
                "parameters": {"engine": provenance.engine, "engine_id": provenance.engine_id,
                               "model_ids": provenance.model_ids()},
            }]}},
            {"label": DISCLOSURE_LABEL, "data": disclosure.assertion()},
            {"label": GENERATION_LABEL, "data": generation},
            {"label": QA_LABEL, "data": qa_verdict if qa_verdict is not None else QA_NOT_RUN},
        ],
    }
    if not provenance.omit_photo and provenance.photo_sha256:
        # By hash only: the ingredient carries no thumbnail and no pixels of the photo.
        manifest["ingredients"] = [{
            "title": "source photo", "format": provenance.photo_format, "relationship": "inputTo",
            "description": f"sha256:{provenance.photo_sha256}",
            "metadata": {"talkinghead:sha256": provenance.photo_sha256},
        }]
    return manifest


def _context(trust_anchors: Path | None = None) -> c2pa.Context:
    # Thumbnails off: c2pa-rs would otherwise embed a preview of image ingredients, i.e. of the person's photo.
    settings: dict = {"builder": {"thumbnail": {"enabled": False}}}
    if trust_anchors is not None:
        settings["trust"] = {"trust_anchors": Path(trust_anchors).read_text()}
    return c2pa.Context.from_dict(settings)


@contextlib.contextmanager
def _signer(config: SigningConfig) -> Iterator[c2pa.Signer]:
    chain, key = read_credential(config)
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(config.algorithm, chain, key, config.tsa_url))
    try:
        yield signer
    finally:
        signer.close()


def sign_video(
    source: Path, destination: Path, provenance: Provenance, config: SigningConfig, qa_verdict: dict | None = None,
) -> SignSummary:
    """Embed a signed manifest: `source` (unsigned MP4) -> `destination` (written whole, then renamed into place)."""
    destination = Path(destination)
    manifest = build_manifest(provenance, qa_verdict, config.development, title=destination.name)
    temp = destination.with_name(f".{destination.name}.signing")
    try:
        with _signer(config) as signer, c2pa.Builder(manifest, context=_context()) as builder, \
                open(source, "rb") as src, open(temp, "w+b") as dst:
            manifest_bytes = builder.sign(signer, MIME, src, dst)
        os.replace(temp, destination)
    except c2pa.C2paError as exc:
        raise SigningFailed(f"C2PA signing failed: {exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    with c2pa.Reader(str(destination)) as reader:
        label = (json.loads(reader.json()) or {}).get("active_manifest")
    return SignSummary(label, len(manifest_bytes), signer_identity(config), config.algorithm, config.development,
                       "ingredients" in manifest)


class SigningFailed(RuntimeError):
    pass


@dataclass
class VerifyResult:
    path: str
    status: str  # "valid" | "invalid" | "unsigned"
    trusted: bool = False
    development: bool = False
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validation_state: str | None = None
    manifest_label: str | None = None
    signer: dict | None = None
    digital_source_type: str | None = None
    disclosure: dict | None = None
    xmp: dict | None = None
    generation: dict | None = None
    qa_verdict: dict | None = None
    ingredients: list[dict] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.status == "valid"

    @property
    def credential(self) -> str:
        if not self.valid:
            return "n/a"
        kind = "development" if self.development else "configured"
        return f"{kind}, {'trusted' if self.trusted else 'untrusted'}"

    def as_dict(self) -> dict:
        return {**asdict(self), "valid": self.valid, "credential": self.credential}


def _assertion(manifest: dict, label: str) -> dict | None:
    for assertion in manifest.get("assertions", []):
        if assertion.get("label") == label:
            return assertion.get("data")
    return None


def verify_video(path: Path, trust_anchors: Path | None = None) -> VerifyResult:
    """Validate the embedded C2PA manifest and read the disclosure and QA verdict back."""
    result = VerifyResult(path=str(path), status="invalid")
    try:
        xmp = read_xmp(path)
        result.xmp = parse_xmp(xmp) if xmp else None
    except (OSError, ValueError) as exc:
        result.errors.append(f"not a readable MP4: {exc}")
        return result
    try:
        with open(path, "rb") as handle, c2pa.Reader(MIME, handle, context=_context(trust_anchors)) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        result.status = "unsigned"
        result.errors.append("no C2PA manifest: the file was never signed or its Content Credentials were stripped")
        return result
    except c2pa.C2paError as exc:
        result.errors.append(f"the C2PA manifest is damaged and cannot be read: {exc}")
        return result
    state, results = store.get("validation_state"), store.get("validation_results") or {}
    result.validation_state = state
    result.manifest_label = store.get("active_manifest")
    manifest = (store.get("manifests") or {}).get(result.manifest_label) or {}
    if not manifest:
        result.errors.append("the manifest store names no active manifest that it contains")
    failures = results.get("activeManifest", {}).get("failure", [])
    for failure in failures:
        text = f"{failure.get('code')}: {failure.get('explanation', '')}".rstrip(": ")
        (result.warnings if failure.get("code") in TRUST_CODES else result.errors).append(text)
    # c2pa-rs puts the state at Invalid for any failure, including the trust-only ones; decide on the codes.
    integrity = bool(manifest) and state in ("Valid", "Trusted", "Invalid") and not result.errors
    result.status = "valid" if integrity else "invalid"
    result.trusted = integrity and state == "Trusted"
    info = manifest.get("signature_info") or {}
    result.signer = {"common_name": info.get("common_name"), "issuer": info.get("issuer"),
                     "serial": info.get("cert_serial_number"), "algorithm": info.get("alg"), "time": info.get("time")}
    actions = (_assertion(manifest, "c2pa.actions.v2") or _assertion(manifest, "c2pa.actions") or {}).get("actions", [])
    created = next((a for a in actions if a.get("action") == "c2pa.created"), {})
    result.digital_source_type = created.get("digitalSourceType")
    result.disclosure = _assertion(manifest, DISCLOSURE_LABEL)
    result.generation = _assertion(manifest, GENERATION_LABEL)
    result.qa_verdict = _assertion(manifest, QA_LABEL)
    result.development = (result.generation or {}).get("credential") == "development"
    result.ingredients = [{k: v for k, v in ing.items() if k in ("title", "relationship", "description", "metadata")}
                          for ing in manifest.get("ingredients", [])]
    if result.valid and not result.disclosure:
        result.warnings.append("the manifest is valid but carries no talkinghead AI disclosure assertion")
    if result.valid and not result.trusted:
        result.warnings.append("the signer is not on this verifier's trust list"
                               + (" (a talkinghead development credential)" if result.development else ""))
    return result
