from __future__ import annotations

from dataclasses import dataclass

import pytest

from python_backends.errors import ConfigError, InputError, split_code, with_code
from python_backends.settings import from_mapping, from_model_config, parse_bool


@dataclass(frozen=True)
class Example:
    threshold: float = 0.5
    count: int = 3
    enabled: bool = False
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    path: str | None = None


def test_typed_conversion():
    settings = from_mapping(Example, {"threshold": "0.7", "count": "5", "enabled": "true", "sizes": "4, 8"})
    assert settings == Example(threshold=0.7, count=5, enabled=True, sizes=(4, 8))


def test_model_config_parameters():
    config = {"parameters": {"count": {"string_value": "9"}, "path": {"string_value": ""}}}
    assert from_model_config(Example, config) == Example(count=9, path=None)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"unknown": "1"}, "unknown parameter 'unknown'"),
        ({"count": "${count}"}, "unfilled placeholder"),
        ({"count": "many"}, "expected int"),
        ({"enabled": "maybe"}, "expected true/false"),
    ],
)
def test_bad_parameters_name_the_key(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_mapping(Example, values)


def test_parse_bool_is_strict():
    assert parse_bool("Yes") and not parse_bool("0")
    with pytest.raises(ConfigError):
        parse_bool("false-ish")


def test_error_code_round_trip():
    wire = with_code(InputError("face is in profile: use a front-facing photo", "face_in_profile"))
    text, code = split_code("in ensemble 'x': " + wire)
    assert code == "face_in_profile" and text.endswith("use a front-facing photo")
    assert split_code("plain message") == ("plain message", None)
