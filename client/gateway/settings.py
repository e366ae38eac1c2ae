"""The gateway's configuration: typed frozen dataclasses filled strictly from a TOML file and the environment.

Sections of the TOML file map to the nested dataclasses below (`[http]`, `[limits]`, `[webhooks]`,
`[tenant_defaults]`, `[storage]`, `[delivery]`, `[caches]`), top-level keys to `GatewaySettings` itself. An unknown
key, a value of the wrong type or an impossible value is a `SettingsError` naming the key, never a silent default.
A few environment variables override the file, for containers: `TALKINGHEAD_GATEWAY_DATA_DIR`, `..._TRITON_URL`,
`..._DATABASE_URL`, `..._INSTANCE_ID`, `..._POLICY_PROFILE` and `..._TRUSTED_PROXIES` (comma-separated, fills
`http.trusted_proxies`).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import os
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..policy import LOCAL_DEFAULT, PolicyProfile
from ..triton_client import IDLE_TIMEOUT_S

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "TALKINGHEAD_GATEWAY_"
MiB = 1 << 20
AUDIT_STORES = ("database", "file")


class SettingsError(Exception):
    """The configuration cannot be used; the message names the key and what is expected."""


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise SettingsError(f"{section}.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP server in front of the API (uvicorn): whom to believe about client addresses, and how long a
    client may take to send a request (the limits that cut off slow-loris clients)."""

    # Proxies (addresses or CIDR networks) whose X-Forwarded-For / X-Forwarded-Proto are believed: the address
    # they forward becomes the client address (access log, failed-authentication limit). Empty: no one's, and
    # the headers are ignored. Behind an ingress or load balancer, list its addresses, and only its.
    trusted_proxies: tuple[str, ...] = ()
    header_timeout_s: float = 15.0  # request line and headers, from the connection (or the previous response) on
    # A request body must keep coming: no pause longer than body_timeout_s, and after the first body_timeout_s
    # at least min_body_bytes_per_s on average (time the gateway itself stops reading does not count).
    body_timeout_s: float = 30.0
    min_body_bytes_per_s: float = 1024.0

    def __post_init__(self) -> None:
        _positive("http", header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
                  min_body_bytes_per_s=self.min_body_bytes_per_s)
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise SettingsError(f"http.trusted_proxies: {entry!r} is not an IP address or network (CIDR); list "
                                    "the addresses of your ingress or load balancer, e.g. [\"10.0.0.0/8\"]") from None


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 50 * MiB  # per file (photo, audio, driving video); larger uploads get 413
    max_fields_bytes: int = 64 * 1024  # all non-file form fields together (parameters JSON, webhook URL)
    max_queued_jobs: int = 100  # per tenant, jobs waiting to run; more get 429
    # API key guessing: failed authentications per client address and per presented key prefix (token buckets,
    # auth_limit.py); beyond, 429 for wrong keys from there. A valid key is never refused by this limit.
    failed_auth_burst: int = 10
    failed_auth_per_minute: float = 10.0

    def __post_init__(self) -> None:
        if min(self.max_upload_bytes, self.max_fields_bytes, self.max_queued_jobs, self.failed_auth_burst) < 1:
            raise SettingsError("limits: max_upload_bytes, max_fields_bytes, max_queued_jobs and failed_auth_burst "
                                "must be at least 1")
        _positive("limits", failed_auth_per_minute=self.failed_auth_per_minute)

    @property
    def max_request_bytes(self) -> int:
        """The largest body a submit can have: three files, the fields and multipart framing."""
        return 3 * self.max_upload_bytes + self.max_fields_bytes + 64 * 1024


@dataclass(frozen=True)
class TenantDefaults:
    """Applied to tenants created without their own numbers (`gateway add-tenant --jobs-per-day ...`)."""

    jobs_per_day: int = 500  # rolling 24 h window
    concurrent_jobs: int = 2  # running at once; the rest wait in the queue
    rate_per_s: float = 10.0  # API requests per second (token bucket refill) ...
    burst: int = 40  # ... and the bucket's size

    def __post_init__(self) -> None:
        problem = tenant_limits_problem(self.jobs_per_day, self.concurrent_jobs, self.rate_per_s, self.burst)
        if problem:
            raise SettingsError(f"tenant_defaults: {problem}")


def tenant_limits_problem(jobs_per_day: int, concurrent_jobs: int, rate_per_s: float, burst: int) -> str | None:
    """Why a tenant cannot have these limits (it could never submit or run a job), or None. The names are the
    settings' and, in brackets, `gateway add-tenant`'s flags."""
    if jobs_per_day < 1:
        return f"jobs_per_day (--jobs-per-day) must be at least 1, got {jobs_per_day}"
    if concurrent_jobs < 1:
        return f"concurrent_jobs (--concurrent) must be at least 1, got {concurrent_jobs}: with 0 jobs never run"
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        return f"rate_per_s (--rate) must be a positive number of requests per second, got {rate_per_s!r}"
    if burst < 1:
        return f"burst (--burst) must be at least 1, got {burst}"
    return None


@dataclass(frozen=True)
class WebhookSettings:
    # Hosts (exact names) or networks (CIDR) a webhook may target even though they resolve to loopback, private,
    # link-local or other non-public addresses. Everything else must resolve to globally routable addresses only.
    allow: tuple[str, ...] = ()
    timeout_s: float = 10.0  # the whole attempt (connect, send, the answer's head): a deadline, not per read
    # Deliveries in flight at once per gateway, and per tenant among them: one slow receiver holds up only its
    # own tenant's webhooks, never the others'.
    concurrency: int = 16
    per_tenant: int = 2
    max_response_bytes: int = 4096  # of a receiver's answer, read at most (the rest is never downloaded)
    # 16 attempts: the last one 53-107 min after the first (a receiver down for up to ~an hour still gets it).
    max_attempts: int = 16
    backoff_base_s: float = 2.0  # attempt n then waits uniform(c/2, c), c = min(backoff_max_s, base * 2**(n-1))
    backoff_max_s: float = 900.0
    tolerance_s: int = 300  # what receivers are told to accept as clock skew / replay window

    def __post_init__(self) -> None:
        _positive("webhooks", timeout_s=self.timeout_s, backoff_base_s=self.backoff_base_s,
                  backoff_max_s=self.backoff_max_s)
        if min(self.concurrency, self.per_tenant, self.max_attempts) < 1 or self.max_response_bytes < 0:
            raise SettingsError("webhooks: concurrency, per_tenant and max_attempts must be at least 1, "
                                "max_response_bytes not negative")

    def allowed_networks(self) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], set[str]]:
        networks, hosts = [], set()
        for entry in self.allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return networks, hosts


@dataclass(frozen=True)
class StorageSettings:
    kind: str = "local"  # local | s3
    path: Path | None = None  # local: default <data_dir>/objects
    bucket: str = ""  # s3
    prefix: str = ""  # s3: key prefix inside the bucket
    endpoint_url: str | None = None  # s3-compatible services (MinIO, Ceph, R2...); None: AWS
    region: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("local", "s3"):
            raise SettingsError(f"storage.kind must be 'local' or 's3', got {self.kind!r}")
        if self.kind == "s3" and not self.bucket:
            raise SettingsError("storage.bucket is required when storage.kind = 's3'")


@dataclass(frozen=True)
class DeliverySettings:
    """How finished videos are written: the issue-7 delivery step (encode, disclose, sign, audit)."""

    codec: str = "h264"
    crf: int | None = None
    preset: str = "veryfast"
    sign: bool = True  # C2PA; the credential comes from signing_home (see client/signing.py)
    signing_home: Path | None = None  # default: the data dir (its development CA is made there on first use)
    visible_label: bool = False
    omit_photo_ingredient: bool = False
    # Where audit records go. "database": the job store's database, so every replica sharing it appends to one hash
    # chain (`talkinghead gateway export-audit` writes it out for `talkinghead audit verify`). "file": audit_log
    # (default <data_dir>/audit.log), for a single gateway whose data dir is on a persistent volume.
    audit_store: str = "database"
    audit_log: Path | None = None

    def __post_init__(self) -> None:
        if self.audit_store not in AUDIT_STORES:
            raise SettingsError(f"delivery.audit_store must be one of {', '.join(AUDIT_STORES)}, "
                                f"got {self.audit_store!r}")
        if self.audit_log is not None and self.audit_store != "file":
            raise SettingsError("delivery.audit_log names the file of delivery.audit_store = \"file\"; set both, or "
                                "neither to keep the audit log in the database")


@dataclass(frozen=True)
class CacheSettings:
    embeddings: bool = True  # photo sha256 -> its pre-processing result (faces, identity embedding, or rejection)
    outputs: bool = True  # (photo, audio, parameters, seed, model + weight versions) -> the finished video
    # The folder tritonserver's --weights points at (the same files must be visible here): the weights part of
    # the model fingerprint, as `talkinghead weights` lists it. None: $TALKINGHEAD_WEIGHTS, as the server does.
    weights_root: Path | None = None
    fingerprint_refresh_s: float = 300.0


@dataclass(frozen=True)
class RetentionSettings:
    """How long a tenant's data is kept (days; 0: until erased). A tenant may have its own periods
    (`gateway tenant-settings NAME --retain-inputs-days ...`). Inputs are the uploaded photo, audio and driving
    video; embeddings the photo's face summary (identity embedding, landmarks) in the cache, the job row and the
    stored report; outputs the finished video and its report."""

    inputs_days: float = 30.0
    embeddings_days: float = 30.0
    outputs_days: float = 0.0
    sweep_s: float = 3600.0  # how often the gateway looks for data past its period

    def __post_init__(self) -> None:
        for name in ("inputs_days", "embeddings_days", "outputs_days"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SettingsError(f"retention.{name} must be a number of days >= 0 (0: keep until erased), "
                                    f"got {value!r}")
        _positive("retention", sweep_s=self.sweep_s)


@dataclass(frozen=True)
class GatewaySettings:
    # strict | standard | development: what the deployment requires (client/policy.py, where the default is
    # explained); strict and standard refuse to start without a configured signing credential and master key.
    policy_profile: PolicyProfile = LOCAL_DEFAULT
    data_dir: Path = Path("gateway-data")
    triton_url: str = "127.0.0.1:8001"  # gRPC host:port of tritonserver
    database_url: str | None = None  # None: sqlite at <data_dir>/gateway.db; postgresql://... for several replicas
    secrets_dir: Path | None = None  # webhook signing master key; default <data_dir>/secrets
    instance_id: str = ""  # names this replica in job leases; default hostname:pid
    workers: int = 2  # jobs this gateway streams from Triton at once
    lease_s: float = 30.0  # a job whose lease is not renewed for this long is taken back and re-run
    heartbeat_s: float = 5.0
    max_attempts: int = 5  # runs of one job when tritonserver is unavailable / the gateway dies mid-job
    retry_base_s: float = 2.0
    retry_max_s: float = 120.0
    # A stream silent this long, keep-alives included, lost its server process: the run fails and is retried.
    stream_idle_timeout_s: float = IDLE_TIMEOUT_S
    # Keep-alives show the server process lives, not that the job progresses: a run still streaming after this
    # long is stopped and retried.
    job_timeout_s: float = 7200.0
    drain_timeout_s: float = 60.0  # graceful shutdown: how long running jobs may finish before being handed back
    poll_s: float = 0.5  # how often idle workers look for queued jobs
    http: HttpSettings = field(default_factory=HttpSettings)
    limits: Limits = field(default_factory=Limits)
    tenant_defaults: TenantDefaults = field(default_factory=TenantDefaults)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    caches: CacheSettings = field(default_factory=CacheSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    def __post_init__(self) -> None:
        if self.heartbeat_s * 2 > self.lease_s:
            raise SettingsError(f"heartbeat_s ({self.heartbeat_s:g}) must be at most half of lease_s "
                                f"({self.lease_s:g}) so a live job never loses its lease")
        if self.workers < 1 or self.max_attempts < 1:
            raise SettingsError("workers and max_attempts must be at least 1")

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir or self.data_dir / "secrets"

    @property
    def objects_path(self) -> Path:
        return self.storage.path or self.data_dir / "objects"

    @property
    def staging_path(self) -> Path:
        """Uploads being received and videos being encoded; always local, even with S3 storage."""
        return self.data_dir / "staging"

    @property
    def audit_path(self) -> Path:
        """The audit log file where delivery.audit_store = "file"."""
        return self.delivery.audit_log or self.data_dir / "audit.log"


def _convert(raw: Any, target: Any, key: str) -> Any:
    origin = typing.get_origin(target)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if raw is None:
            return None
        (inner,) = [a for a in typing.get_args(target) if a is not type(None)]
        return _convert(raw, inner, key)
    if dataclasses.is_dataclass(target):
        if not isinstance(raw, Mapping):
            raise SettingsError(f"[{key}] must be a table of settings, got {raw!r}")
        return _build(target, raw, f"{key}.")
    if origin is tuple:
        if isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list | tuple):
            raise SettingsError(f"{key}: expected a list, got {raw!r}")
        return tuple(_convert(item, typing.get_args(target)[0], key) for item in raw)
    if target is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise SettingsError(f"{key}: expected true or false, got {raw!r}")
    if target is Path:
        return Path(str(raw)).expanduser()
    if isinstance(target, type) and issubclass(target, enum.Enum):
        try:
            return target(str(raw).strip().lower())
        except ValueError:
            choices = ", ".join(str(member.value) for member in target)
            raise SettingsError(f"{key}: expected one of {choices}, got {raw!r}") from None
    if target in (int, float, str):
        if target is int and isinstance(raw, float) and not raw.is_integer():
            raise SettingsError(f"{key}: expected a whole number, got {raw!r}")
        try:
            return target(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{key}: expected {target.__name__}, got {raw!r}") from None
    raise SettingsError(f"{key}: unsupported settings type {target!r}")  # pragma: no cover


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SettingsError(f"unknown setting {prefix}{unknown[0]}; known: {', '.join(sorted(names))}")
    try:
        return cls(**{name: _convert(value, hints[name], f"{prefix}{name}") for name, value in values.items()})
    except TypeError as exc:  # pragma: no cover - a dataclass without defaults
        raise SettingsError(f"{prefix.rstrip('.') or 'settings'}: {exc}") from None


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
    """Settings from a TOML file (optional), then the environment, then keyword overrides (the CLI's flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    for key in ("data_dir", "triton_url", "database_url", "instance_id", "policy_profile"):
        if env.get(ENV_PREFIX + key.upper()):
            values[key] = env[ENV_PREFIX + key.upper()]
    if env.get(ENV_PREFIX + "TRUSTED_PROXIES"):  # what a Kubernetes overlay sets for its ingress
        http = values.get("http")
        values["http"] = {**(http if isinstance(http, Mapping) else {}),
                          "trusted_proxies": env[ENV_PREFIX + "TRUSTED_PROXIES"]}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return _build(GatewaySettings, values)
