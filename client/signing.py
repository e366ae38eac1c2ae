"""Where the C2PA signing credential comes from: configuration, or a development CA made on first run.

Configuration, first match wins:
1. environment: `TALKINGHEAD_SIGNING_CERT` (PEM chain, signer first, then intermediates) and
   `TALKINGHEAD_SIGNING_KEY` (PEM private key), optional `TALKINGHEAD_SIGNING_ALG`, `TALKINGHEAD_TSA_URL`;
2. `<home>/signing.json` with the keys `cert_chain`, `private_key` and optional `algorithm`, `tsa_url`;
3. otherwise, in the `development` policy profile only (client/policy.py), a development credential under
   `<home>/signing/dev/`, generated on first use; `strict` and `standard` refuse to sign without 1. or 2.
`<home>` is `$TALKINGHEAD_HOME`, else `~/.config/talkinghead`. `TALKINGHEAD_TRUST_ANCHORS` (or `trust_anchors` in
signing.json) names PEM roots a verifier should trust.

The development credential is a real two-level chain, because c2pa-rs refuses self-signed signers: a CA
(basicConstraints cA, keyUsage keyCertSign + cRLSign) and a leaf that meets the C2PA signer profile (X.509 v3,
keyUsage critical with digitalSignature, an EKU that is neither empty nor anyExtendedKeyUsage: emailProtection and
documentSigning, SKI/AKI present), P-256 / ES256. The CA's private key is thrown away once the leaf is issued, so
the folder can never mint another signer. No CA key, no network: signing works offline. It is on no trust list, so
verifiers report it as valid but untrusted, and our manifests say "development" in a signed assertion.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOME_ENV = "TALKINGHEAD_HOME"
CERT_ENV, KEY_ENV, ALG_ENV, TSA_ENV = ("TALKINGHEAD_SIGNING_CERT", "TALKINGHEAD_SIGNING_KEY",
                                       "TALKINGHEAD_SIGNING_ALG", "TALKINGHEAD_TSA_URL")
TRUST_ENV = "TALKINGHEAD_TRUST_ANCHORS"
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
DEV_ORGANIZATION = "talkinghead development credential (not trusted)"
DEV_CA_NAME = "talkinghead development CA - NOT FOR PRODUCTION"
DEV_SIGNER_NAME = "talkinghead development signer - NOT FOR PRODUCTION"
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # id-kp-documentSigning (RFC 9336)
_SIGNER_EKUS = {ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING,
                x509.ObjectIdentifier("1.3.6.1.4.1.62558.2.1")}  # c2pa-kp-claimSigning
DEV_LEAF_DAYS, DEV_CA_DAYS = 730, 3650


class SigningError(Exception):
    """The signing configuration cannot be used; the message names the file and what to fix."""


def talkinghead_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env[HOME_ENV]).expanduser() if env.get(HOME_ENV) else Path.home() / ".config" / "talkinghead"


@dataclass(frozen=True)
class SigningConfig:
    cert_chain: Path  # PEM: the signer certificate first, then its intermediates (the root may follow)
    private_key: Path  # PEM, unencrypted PKCS#8 / SEC1 / PKCS#1
    algorithm: str = "es256"
    tsa_url: str | None = None  # RFC 3161 time-stamp authority; None signs offline without a time-stamp
    trust_anchors: Path | None = None  # PEM roots that verifiers of our files should trust
    development: bool = False  # True for the generated development credential

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise SigningError(
                f"signing algorithm {self.algorithm!r} is not supported; use one of {', '.join(ALGORITHMS)}")


@dataclass(frozen=True)
class SignerIdentity:
    """What a signature can be traced back to; safe to print and to log (no key material)."""

    subject: str
    issuer: str
    serial: str
    sha256: str  # of the signer certificate (DER)
    not_after: str
    development: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def missing_credential_help(home: Path) -> str:
    """How to supply a signing credential: the message of every refusal to run without one."""
    return (f"set {CERT_ENV} (PEM certificate chain, signer first) and {KEY_ENV} (its PEM private key), or write "
            f"{home / 'signing.json'} naming both (\"cert_chain\", \"private_key\"); the signer certificate must "
            "meet the C2PA signer profile (docs/deployment.md, Secrets)")


def load_signing_config(home: Path | None = None, env: Mapping[str, str] | None = None,
                        allow_development: bool = True) -> SigningConfig:
    """The configured credential, or the development one (created on first call) where `allow_development`
    (the `development` policy profile, client/policy.py); otherwise no credential is a SigningError."""
    env = os.environ if env is None else env
    home = talkinghead_home(env) if home is None else home
    anchors = Path(env[TRUST_ENV]).expanduser() if env.get(TRUST_ENV) else None
    if env.get(CERT_ENV) or env.get(KEY_ENV):
        if not (env.get(CERT_ENV) and env.get(KEY_ENV)):
            raise SigningError(f"set both {CERT_ENV} and {KEY_ENV} (or neither, to use the development credential)")
        config = SigningConfig(Path(env[CERT_ENV]).expanduser(), Path(env[KEY_ENV]).expanduser(),
                               env.get(ALG_ENV) or "es256", env.get(TSA_ENV) or None, anchors)
    elif (home / "signing.json").is_file():
        config = _from_file(home / "signing.json", anchors)
    elif not allow_development:
        raise SigningError(f"no C2PA signing credential is configured: {missing_credential_help(home)}")
    else:
        config = ensure_development_credential(home / "signing" / "dev")
        if anchors is not None:
            config = SigningConfig(config.cert_chain, config.private_key, config.algorithm, None, anchors, True)
    check_credential(config)
    return config


def _from_file(path: Path, anchors: Path | None) -> SigningConfig:
    try:
        data = json.loads(path.read_text())
        base = path.parent

        def resolve(value: str) -> Path:
            return (base / Path(value).expanduser()).resolve()

        return SigningConfig(
            resolve(data["cert_chain"]), resolve(data["private_key"]), data.get("algorithm", "es256"),
            data.get("tsa_url"), anchors or (resolve(data["trust_anchors"]) if data.get("trust_anchors") else None),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SigningError(f"{path} must be JSON with \"cert_chain\" and \"private_key\" paths ({exc})") from None


def read_credential(config: SigningConfig) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM)."""
    try:
        return config.cert_chain.read_bytes(), config.private_key.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the signing credential {exc.filename}: {exc.strerror}") from None


def load_chain(pem: bytes, where: str = "certificate chain") -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        chain = []
    if not chain:
        raise SigningError(f"the {where} holds no PEM certificate")
    return chain


def check_credential(config: SigningConfig, now: dt.datetime | None = None) -> SignerIdentity:
    """Fail early, with a reason, on what c2pa-rs would otherwise reject mid-signing."""
    chain_pem, key_pem = read_credential(config)
    chain = load_chain(chain_pem, f"certificate chain {config.cert_chain}")
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{config.private_key} is not an unencrypted PEM private key ({exc})") from None
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise SigningError(f"{config.private_key} does not belong to the first certificate in {config.cert_chain}")
    expected = _algorithm_family(key)
    if not config.algorithm.startswith(expected):
        raise SigningError(f"the key is {expected.upper()}-type but the algorithm is {config.algorithm}")
    now = now or dt.datetime.now(dt.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise SigningError(f"the signing certificate in {config.cert_chain} is not valid now "
                           f"({leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d})")
    usage = _extension(leaf, x509.KeyUsage, "keyUsage")
    if not (usage.critical and usage.value.digital_signature):
        raise SigningError("C2PA needs the signer's keyUsage to be critical and to include digitalSignature")
    if not set(_extension(leaf, x509.ExtendedKeyUsage, "extendedKeyUsage").value) & _SIGNER_EKUS:
        raise SigningError("C2PA needs the signer's extendedKeyUsage to include emailProtection or documentSigning")
    return identity_of(leaf, config.development)


def _extension(cert: x509.Certificate, kind: type, name: str) -> x509.Extension:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        raise SigningError(f"the signing certificate has no {name} extension; C2PA requires one") from None


def _algorithm_family(key) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "es"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise SigningError(f"unsupported key type {type(key).__name__}; use EC P-256/384/521, RSA (PSS) or Ed25519")


def identity_of(leaf: x509.Certificate, development: bool) -> SignerIdentity:
    return SignerIdentity(
        subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
        serial=str(leaf.serial_number),  # decimal, as C2PA readers print it
        sha256=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_after=leaf.not_valid_after_utc.isoformat(), development=development,
    )


def signer_identity(config: SigningConfig) -> SignerIdentity:
    return identity_of(load_chain(read_credential(config)[0])[0], config.development)


# -- development credential ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first runs at once must not write two different credentials
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_development_credential(folder: Path, now: dt.datetime | None = None) -> SigningConfig:
    """The development chain and key in `folder`, made now if missing or expiring within a day."""
    config = SigningConfig(folder / "chain.pem", folder / "signer.key", "es256", development=True)
    with _locked(folder):
        now = now or dt.datetime.now(dt.timezone.utc)
        if config.cert_chain.is_file() and config.private_key.is_file():
            leaf = load_chain(config.cert_chain.read_bytes())[0]
            if leaf.not_valid_after_utc > now + dt.timedelta(days=1):
                return config
        chain, key, ca = _issue_development_chain(now)
        _write(folder / "ca.pem", ca, 0o644)
        _write(config.private_key, key, 0o600)
        _write(config.cert_chain, chain, 0o644)
        _write(folder / "README.txt", (
            b"Development C2PA signing credential made by talkinghead on first run.\n"
            b"chain.pem: signer certificate then CA; signer.key: its private key; ca.pem: the CA alone, which you\n"
            b"may pass to `talkinghead verify --trust-anchors` to test a trust list. The CA key was discarded.\n"
            b"Verifiers show files signed with it as valid but UNTRUSTED. For production set TALKINGHEAD_SIGNING_CERT\n"
            b"and TALKINGHEAD_SIGNING_KEY (or signing.json in the talkinghead home) to a credential from a CA.\n"
        ), 0o644)
    return config


def _write(path: Path, data: bytes, mode: int) -> None:
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temp, mode)
    os.replace(temp, path)


def _issue_development_chain(now: dt.datetime) -> tuple[bytes, bytes, bytes]:
    """(chain PEM: leaf then CA, leaf key PEM, CA PEM)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEV_CA_NAME),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION)])
    start = now - dt.timedelta(minutes=5)  # tolerate small clock differences between signer and verifier
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=DEV_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEV_SIGNER_NAME),
                                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=DEV_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return leaf.public_bytes(pem) + ca.public_bytes(pem), key_pem, ca.public_bytes(pem)


def _key_usage(digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=crl_sign,
        encipher_only=False, decipher_only=False,
    )
