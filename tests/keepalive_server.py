"""The project's repositories copied with a short keep-alive interval for the streaming models (video_generator,
talking_head) and a video_generator that takes at least SLOW_CHUNK_S for every chunk: every job then has
silences many intervals long, on any machine, so tests of keep-alives depend on no segment being slow. (With the
production 5 s interval they needed a machine slow enough, and a quiet one failed them.) The server itself is
the `fast_keepalive_server` fixture of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from client.repository import copy_repositories

STREAMING_MODELS = ("video_generator", "talking_head")
FAST_KEEPALIVE_S = 0.1
SLOW_CHUNK_S = 1.2  # longer than the tests' client idle timeout (10 intervals): a silence they must be kept through
_DEFAULT = '{ key: "keepalive_s" value: { string_value: "5.0" } }'
_SLOW_STREAM = f"""

# Added by tests/keepalive_server.py: every chunk comes at least {SLOW_CHUNK_S} s late, so the BLS stream from
# here to talking_head, and talking_head's own stream, are silent for many keep-alive intervals on any machine.
import time as _time

_stream = TritonPythonModel.stream


def _slow_stream(self, *args):  # whatever StreamingModel.stream takes (inputs, parameters, is_cancelled, ...)
    for outputs in _stream(self, *args):
        _time.sleep({SLOW_CHUNK_S})
        yield outputs


TritonPythonModel.stream = _slow_stream
"""


def _fast_keepalive(model: str, config: str) -> str:
    if model not in STREAMING_MODELS:
        return config
    assert _DEFAULT in config, f"{model}'s config no longer sets keepalive_s as this copy expects"
    return config.replace(_DEFAULT, _DEFAULT.replace("5.0", str(FAST_KEEPALIVE_S)))


def fast_keepalive_repositories(root: Path) -> tuple[Path, ...]:
    repositories = copy_repositories(root, _fast_keepalive)
    model = repositories[0] / "video_generator" / "1" / "model.py"
    assert "class TritonPythonModel" in model.read_text(), "video_generator's model.py changed shape"
    model.write_text(model.read_text() + _SLOW_STREAM)
    return repositories
