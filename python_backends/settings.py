"""Typed settings parsed once from Triton's config.pbtxt `parameters`.

Each model declares a frozen dataclass; `from_model_config` fills it from the config's parameters with
strict conversion: an unknown key, an unfilled `${...}` placeholder or an unparsable value is a load-time
ConfigError naming the key, never a silent default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def shown(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: error messages echo what was sent, never kilobytes of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_bool(value: str | bool, key: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"parameter {key!r}: expected true/false, got {shown(value)}")


def _convert(raw: Any, target: Any, key: str) -> Any:
    origin = typing.get_origin(target)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = [a for a in typing.get_args(target) if a is not type(None)]
        if raw in ("", None) or str(raw).lower() == "none":
            return None
        return _convert(raw, args[0], key)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(target)
        items = raw if isinstance(raw, (list, tuple)) else [p for p in str(raw).split(",") if p.strip()]
        return tuple(_convert(p.strip() if isinstance(p, str) else p, item_type, key) for p in items)
    if target is bool:
        return parse_bool(raw, key)
    if target in (int, float, str):
        try:
            return target(raw)
        except (TypeError, ValueError, OverflowError):  # int(float("inf")) raises OverflowError
            raise ConfigError(f"parameter {key!r}: expected {target.__name__}, got {shown(raw)}") from None
    raise ConfigError(f"parameter {key!r}: unsupported settings type {target!r}")


def _known_keys(cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        keys |= _known_keys(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else {f.name}
    return keys


def from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build settings dataclass `cls` from string values, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    known = sorted(_known_keys(cls))
    # A field that is itself a settings dataclass takes the keys named after its own fields (flat keys, as
    # operators write them in config.pbtxt); its field names must not clash with the outer ones.
    for name in [f for f in fields if dataclasses.is_dataclass(hints[f])]:
        inner = {f.name for f in dataclasses.fields(hints[name])}
        kwargs[name] = from_mapping(hints[name], {k: v for k, v in values.items() if k in inner})
        values = {k: v for k, v in values.items() if k not in inner}
        fields = fields - {name}
    for key, raw in values.items():
        if key not in fields:
            raise ConfigError(f"unknown parameter {shown(key)} for {cls.__name__}; known: {known}")
        if isinstance(raw, str) and raw.startswith("${"):
            raise ConfigError(f"parameter {key!r} holds an unfilled placeholder {shown(raw)}")
        kwargs[key] = _convert(raw, hints[key], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def from_model_config(cls: type[T], model_config: Mapping[str, Any]) -> T:
    """Parse the `parameters` of a Triton model config (as the JSON Triton hands to initialize)."""
    params = model_config.get("parameters", {}) or {}
    values = {key: value.get("string_value", "") for key, value in params.items()}
    return from_mapping(cls, values)
