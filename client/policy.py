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

Content rules (issue 20; applied by client/content_policy.py to the QA report of every job, photo, driving video
and output frames alike):

| profile       | a content check `unavailable` | QA verdict `needs_review` | visible "AI-generated" label  |
|---------------|-------------------------------|---------------------------|-------------------------------|
| `strict`      | held for an operator's review | held for review           | on                            |
| `standard`    | delivered; the decision names | held for review           | on                            |
|               | the checks that did not run   |                           |                               |
| `development` | delivered, recorded           | delivered, recorded       | as delivery.visible_label     |

A content check that fails stops the job on the server in every profile (content_policy error). A tenant may get
another profile for these content rules (`talkinghead gateway tenant-settings NAME --policy-profile ...`); the
credential rules stay the deployment's. Add rules as fields of `Policy`, so that every profile states its value.

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
    # A content check (NSFW, minor face, public figure; photo, driving video or output) that could not run holds
    # the job for an operator instead of delivering it.
    hold_unavailable_checks: bool = False
    # A QA verdict of `needs_review` (segments that failed their gates after every re-roll) holds the job.
    hold_needs_review: bool = False
    # The burnt-in "AI-generated" label is always on (else delivery.visible_label decides).
    visible_label: bool = False


POLICIES = {
    PolicyProfile.STRICT: Policy(PolicyProfile.STRICT, configured_credentials=True, hold_unavailable_checks=True,
                                 hold_needs_review=True, visible_label=True),
    PolicyProfile.STANDARD: Policy(PolicyProfile.STANDARD, configured_credentials=True, hold_needs_review=True,
                                   visible_label=True),
    PolicyProfile.DEVELOPMENT: Policy(PolicyProfile.DEVELOPMENT, configured_credentials=False),
}


def parse_profile(value: str | PolicyProfile) -> PolicyProfile:
    try:
        return PolicyProfile(str(value).strip().lower())
    except ValueError:
        raise ValueError(f"policy profile must be one of {', '.join(PROFILE_NAMES)}, got {value!r}") from None


def policy_of(profile: str | PolicyProfile) -> Policy:
    return POLICIES[parse_profile(profile)]
