"""Where each model's weights come from: an operator-supplied official checkpoint, a real pretrained file
shipped inside an installed package (the CPU default), or nothing (the model reports itself unavailable).

Official checkpoints live under the weights root (`talkinghead serve --weights DIR`, exported to the server
as TALKINGHEAD_WEIGHTS) as `<root>/<model name>/<official file name>`, e.g.
`<root>/face_detector/Resnet50_Final.pth`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

WEIGHTS_ENV = "TALKINGHEAD_WEIGHTS"

OFFICIAL = "official"
SHIPPED = "shipped"
UNAVAILABLE = "unavailable"

# What a weights file's licence says about commercial use (WeightsChoice.commercial_use).
ALLOWED = "allowed"
FORBIDDEN = "forbidden"  # the `commercial` setting refuses these (licences.py)
CONDITIONS = "conditions"  # allowed, with obligations to meet first (e.g. an AGPL notice)
UNKNOWN = "unknown"  # no weights, or terms we could not establish: the operator checks
COMMERCIAL_USES = (ALLOWED, FORBIDDEN, CONDITIONS, UNKNOWN)


def weights_root() -> Path | None:
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def official_path(model: str, name: str, root: Path | None = None) -> Path | None:
    """The official checkpoint file or folder `name` for `model` under the weights root, if present."""
    root = root if root is not None else weights_root()
    if root is None:
        return None
    folder = Path(root) / model
    path = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts or ".." in Path(model).parts:
        # Names come from config.pbtxt parameters: one that leaves <root>/<model>/ is a mistake or an attack.
        raise ConfigError(f"weights file {name!r} of {model} must be a path inside <weights root>/{model}/")
    return path if path.exists() else None


def package_path(module: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.exists():
            return path
    return None


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for file in files:
        if target.is_dir():
            digest.update(str(file.relative_to(target)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, sorted)."""
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime)


@dataclass(frozen=True)
class WeightsChoice:
    """What a model will run with; reported in its `model_info` output and by `talkinghead weights`."""

    model: str
    engine: str  # architecture actually run, e.g. "retinaface-resnet50", "mtcnn", "dlib-resnet-v1"
    source: str  # OFFICIAL, SHIPPED or UNAVAILABLE
    path: Path | None
    licence: str
    note: str = ""  # why this choice, or what to supply to get the official model
    parts: tuple[Path, ...] = ()  # further files or folders the weights are made of (a LoRA's base model)
    commercial_use: str = UNKNOWN  # ALLOWED, FORBIDDEN, CONDITIONS or UNKNOWN, from `licence`
    alternative: str = ""  # a commercially usable replacement the operator can supply, when not ALLOWED

    def __post_init__(self) -> None:
        if self.commercial_use not in COMMERCIAL_USES:
            raise ValueError(f"commercial_use must be one of {COMMERCIAL_USES}, got {self.commercial_use!r}")

    @property
    def available(self) -> bool:
        return self.source != UNAVAILABLE and self.path is not None

    def sha256(self) -> str | None:
        """sha256 of `path`, or with `parts` of all of them together (so a changed base changes it too)."""
        if self.path is None:
            return None
        if not self.parts:
            return sha256_of(self.path)
        digest = hashlib.sha256()
        for path in (self.path, *self.parts):
            digest.update(sha256_of(path).encode())
        return digest.hexdigest()

    def as_dict(self, with_hash: bool = True) -> dict:
        out = {
            "model": self.model,
            "engine": self.engine,
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256() if with_hash else None,
            "licence": self.licence,
            "commercial_use": self.commercial_use,
            "note": self.note,
        }
        if self.alternative:
            out["commercial_alternative"] = self.alternative
        if self.parts:
            out["parts"] = [str(path) for path in self.parts]
        return out
