"""The deployment's policy profile: how strictly one deployment treats credentials, provenance and content checks.

One typed setting (`PolicyProfile`) chosen per deployment, and one table (`POLICIES`) of what each profile
requires. Code asks `policy_of(profile)` for a rule; no other module compares profile names.

| profile       | C2PA signing credential                        | webhook master key                   |
|---------------|------------------------------------------------|--------------------------------------|
| `strict`      | configured; the gateway refuses to start       | configured (a file in the secrets    |
| `standard`    | without one, naming what is missing            | folder); never generated             |
| `development` | configured, else a development CA made on the  | made on first use in the secrets     |
|               | first run: announced in the startup log, and   | folder                               |
|               | every manifest says "development"              |                                      |

Issue 20's content policy builds on the same profiles (not implemented yet): in `strict` a content check that is
`unavailable` holds the job for review instead of delivering it, and the visible "AI-generated" label is on. Add
such rules as fields of `Policy`, so that every profile states its value in `POLICIES`.

Where it is set:
- gateway: `policy_profile` in gateway.toml, or `TALKINGHEAD_GATEWAY_POLICY_PROFILE`. The gateway image
  (deploy/docker/gateway.Dockerfile) and every Kubernetes overlay set `strict`.
- CLI `generate` / `demo`: `--policy-profile`.

Default, for a bare local `talkinghead gateway`, `make gateway` or `make demo`: `development`. A fresh checkout has
no certificate authority and no secret store, and these commands must work there out of the box; what is built
for production (the image, the overlays) is `strict`, so a production deployment only gets the development CA
when someone writes `development` into its configuration, and then its startup log and each manifest say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class PolicyProfile(str, Enum):
    STRICT = "strict"
    STANDARD = "standard"
    DEVELOPMENT = "development"

    def __str__(self) -> str:
        return self.value


LOCAL_DEFAULT = PolicyProfile.DEVELOPMENT  # why: see the module docstring
PROFILE_NAMES = tuple(profile.value for profile in PolicyProfile)


@dataclass(frozen=True)
class Policy:
    profile: PolicyProfile
    # Signing key + certificate chain and the webhook master key must be supplied by the operator; nothing is
    # generated, and the gateway refuses to start without them.
    configured_credentials: bool


POLICIES = {
    PolicyProfile.STRICT: Policy(PolicyProfile.STRICT, configured_credentials=True),
    PolicyProfile.STANDARD: Policy(PolicyProfile.STANDARD, configured_credentials=True),
    PolicyProfile.DEVELOPMENT: Policy(PolicyProfile.DEVELOPMENT, configured_credentials=False),
}


def parse_profile(value: str | PolicyProfile) -> PolicyProfile:
    try:
        return PolicyProfile(str(value).strip().lower())
    except ValueError:
        raise ValueError(f"policy profile must be one of {', '.join(PROFILE_NAMES)}, got {value!r}") from None


def policy_of(profile: str | PolicyProfile) -> Policy:
    return POLICIES[parse_profile(profile)]
