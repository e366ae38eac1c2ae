"""Per-tenant overrides of the deployment's settings: the content policy profile and the retention periods.

One row per tenant that has any override (`talkinghead gateway tenant-settings NAME ...`); a missing row or a NULL
column means "the deployment's value". The content policy profile of a tenant governs its content rules (hold on
unavailable checks, hold on needs_review, the visible label: client/policy.py); the credential rules stay the
deployment's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..policy import Policy, PolicyProfile, parse_profile, policy_of
from .db import Database

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tenant_settings (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
        policy_profile TEXT,
        retain_inputs_days DOUBLE PRECISION,
        retain_embeddings_days DOUBLE PRECISION,
        retain_outputs_days DOUBLE PRECISION)""",
)
RETENTION_FIELDS = ("retain_inputs_days", "retain_embeddings_days", "retain_outputs_days")


@dataclass(frozen=True)
class TenantOverrides:
    policy_profile: PolicyProfile | None = None
    retain_inputs_days: float | None = None  # 0: kept until erased
    retain_embeddings_days: float | None = None
    retain_outputs_days: float | None = None

    def __post_init__(self) -> None:
        for name in RETENTION_FIELDS:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of days >= 0 (0: keep until erased), got {value!r}")


class TenantSettingsStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.script(SCHEMA)

    def get(self, tenant_id: str) -> TenantOverrides:
        rows = self.db.read("SELECT * FROM tenant_settings WHERE tenant_id = ?", (tenant_id,))
        if not rows:
            return TenantOverrides()
        row = rows[0]
        profile = row["policy_profile"]
        return TenantOverrides(parse_profile(profile) if profile else None,
                               *(None if row[name] is None else float(row[name]) for name in RETENTION_FIELDS))

    def update(self, tenant_id: str, **changes: object) -> TenantOverrides:
        """Set the given overrides (a value of "default" clears one); the others stay."""
        current = self.get(tenant_id)
        values = {}
        for name, value in changes.items():
            if value is None:
                continue
            if value == "default":
                values[name] = None
            elif name == "policy_profile":
                values[name] = parse_profile(str(value))
            else:
                try:
                    values[name] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{name}: expected a number of days or `default`, got {value!r}") from None
        merged = replace(current, **values)
        columns = [f.name for f in fields(TenantOverrides)]
        row = [None if merged.policy_profile is None else merged.policy_profile.value,
               *(getattr(merged, name) for name in RETENTION_FIELDS)]
        with self.db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO tenant_settings (tenant_id, {', '.join(columns)}) VALUES (?, ?, ?, ?, ?) "
                f"ON CONFLICT (tenant_id) DO UPDATE SET "
                + ", ".join(f"{name} = excluded.{name}" for name in columns), (tenant_id, *row))
        return merged

    def policy(self, tenant_id: str, deployment: PolicyProfile) -> Policy:
        """The content policy of a tenant: its own profile, else the deployment's."""
        return policy_of(self.get(tenant_id).policy_profile or deployment)
