"""Commercial use of weights: what each file's licence allows, and the `commercial` setting that refuses
weights whose licence forbids it (the model stays loaded and answers UNAVAILABLE with the reason).

Every model's settings carry a `LicencePolicy` (the flat config.pbtxt parameter `commercial`); `talkinghead
serve --commercial` turns it on for every model at once through TALKINGHEAD_COMMERCIAL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import WeightsUnavailable
from .weights import FORBIDDEN, UNAVAILABLE, WeightsChoice

COMMERCIAL_ENV = "TALKINGHEAD_COMMERCIAL"
_ON = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class LicencePolicy:
    # true: refuse weights whose licence forbids commercial use (a commercial deployment must set it).
    commercial: bool = False


def commercial_required(policy: LicencePolicy | None) -> bool:
    """The setting, or the server-wide switch `talkinghead serve --commercial` exports."""
    from_env = os.environ.get(COMMERCIAL_ENV, "").strip().lower() in _ON
    return from_env or bool(policy is not None and policy.commercial)


def refusal(choice: WeightsChoice) -> str | None:
    """Why commercial use refuses `choice`, naming the file and the commercially usable replacement."""
    if choice.commercial_use != FORBIDDEN or choice.source == UNAVAILABLE:  # nothing would be loaded
        return None
    what = str(choice.path) if choice.path is not None else f"{choice.model}'s {choice.engine} weights"
    text = f"{choice.model}: commercial use is on, and {what} ({choice.engine}) is licensed {choice.licence}"
    if choice.alternative:
        text += f"; supply instead: {choice.alternative}"
    return text


def require_commercial_use(choice: WeightsChoice) -> None:
    reason = refusal(choice)
    if reason is not None:
        raise WeightsUnavailable(reason)
