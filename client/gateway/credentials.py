"""The credentials the gateway needs before it may start, by policy profile (client/policy.py).

`strict` and `standard`: a configured C2PA signing credential (key + certificate chain) and a supplied webhook
master key, or no start, with one message listing everything missing and how to supply it. `development`: the
configured ones when present, else a development CA and a master key made on first use, announced in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..policy import Policy, policy_of
from ..signing import SigningConfig, SigningError, load_signing_config, signer_identity
from .settings import ENV_PREFIX, GatewaySettings
from .tenants import MasterKey, MasterKeyError

logger = logging.getLogger("talkinghead.gateway")


class StartupError(Exception):
    """The gateway must not start with these settings; the message lists what is missing and how to supply it."""


@dataclass(frozen=True)
class Credentials:
    policy: Policy
    signing: SigningConfig | None  # None: delivery.sign = false (development only)
    master: MasterKey


def load_credentials(settings: GatewaySettings) -> Credentials:
    policy = policy_of(settings.policy_profile)
    configured = policy.configured_credentials
    problems: list[str] = []
    signing = None
    if settings.delivery.sign:
        try:
            signing = load_signing_config(home=settings.delivery.signing_home or settings.data_dir,
                                          allow_development=not configured)
        except SigningError as exc:
            problems.append(f"C2PA signing: {exc}")
    elif configured:
        problems.append("delivery.sign = false: this profile delivers signed videos only; set delivery.sign = true "
                        "and configure a signing credential")
    try:
        master = MasterKey(settings.secrets_path, create=not configured)
    except MasterKeyError as exc:
        problems.append(f"webhook master key: {exc}")
    if problems:
        raise StartupError(
            f"policy profile {policy.profile}: the gateway does not start without configured credentials:\n  - "
            + "\n  - ".join(problems)
            + f'\nOnly for a local trial: policy_profile = "development" (or {ENV_PREFIX}POLICY_PROFILE=development) '
              "makes a development signing CA and master key, and says so in every manifest.")
    _announce(policy, signing, master)
    return Credentials(policy, signing, master)


def _announce(policy: Policy, signing: SigningConfig | None, master: MasterKey) -> None:
    if signing is None:
        logger.warning("policy profile %s: videos are delivered UNSIGNED (delivery.sign = false)", policy.profile)
    elif signing.development:
        logger.warning("policy profile %s: videos are signed with the DEVELOPMENT credential %s, which no verifier "
                       "trusts; every manifest says so. Not for production: production sets policy_profile = "
                       "\"strict\" with a configured credential.", policy.profile, signing.cert_chain)
    else:
        signer = signer_identity(signing)
        logger.info("policy profile %s: signing as %s (issuer %s, valid until %s)", policy.profile, signer.subject,
                    signer.issuer, signer.not_after)
    logger.info("webhook master key: %s", master.path)
