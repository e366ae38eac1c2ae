"""Exceptions that carry a message meant for the person who sent the request."""

from __future__ import annotations

import re


class TalkingHeadError(Exception):
    """Base class; the message is shown to users as it is, so it must say what to do."""


class InputError(TalkingHeadError):
    """The request's data cannot be used (maps to Triton INVALID_ARG, HTTP 400/422)."""

    def __init__(self, message: str, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.code = code  # stable machine-readable reason, e.g. "face_in_profile"


class WeightsUnavailable(TalkingHeadError):
    """A model has no weights it can load (maps to Triton UNAVAILABLE)."""


class ConfigError(TalkingHeadError):
    """A model configuration or parameter is wrong (raised at load time)."""


_CODE_SUFFIX = re.compile(r"\s*\[code: ([a-z0-9_]+)\]\s*$")


def with_code(error: InputError) -> str:
    """The message as sent over the wire: the human text plus a stable code clients can branch on."""
    return f"{error} [code: {error.code}]"


def split_code(message: str) -> tuple[str, str | None]:
    """Inverse of `with_code` for a message received from the server (tolerates Triton's prefixes)."""
    match = _CODE_SUFFIX.search(message)
    if not match:
        return message.strip(), None
    return message[: match.start()].strip(), match.group(1)


WEIGHTS_UNAVAILABLE = "weights_unavailable"  # the code suffix of UNAVAILABLE errors, which BLS may not keep


def input_error_from_message(message: str) -> InputError:
    text, code = split_code(message)
    return InputError(text, code or "invalid_input")
