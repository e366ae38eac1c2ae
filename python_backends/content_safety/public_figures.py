"""Public-figure match against an operator-supplied gallery of face embeddings (we ship no gallery).

The gallery is `<weights root>/content_safety/public_figures.npz` with three arrays:

- `names`: str [N], one name per row (a numpy str array: the file is read with allow_pickle=False);
- `embeddings`: float [N, D], L2-normalised, made by our face_embedder;
- `embedder`: str, the face_embedder engine that made them (`dlib`, `dlib-resnet-v1-128`, `arcface`,
  `arcface-onnx`, `arcface-w600k-r50-onnx`, `arcface-iresnet50`, ...).

A face matches when its cosine similarity to a gallery row exceeds the threshold of that embedder:

- dlib: DLIB_SAME_PERSON_COSINE (0.904), face_embedding's calibration of dlib's own 0.6 same-person distance
  to unit vectors (see face_embedding/dlib_embedder.py for the measurement).
- ArcFace: 0.5, a conservative choice, not a calibration of ours: DeepFace's ArcFace verification cut
  (cosine distance 0.68, i.e. similarity 0.32, tuned on LFW for its own ArcFace port) is far lower; 0.5
  asks for a clearly same-person score so that ordinary users who resemble someone famous are not
  stopped, at the price of missing some true matches (lower it to catch more).

Operators update galleries without restarting the server: the file is re-read whenever its mtime or size
changes, and a file that is removed or becomes unusable makes the check `unavailable` (never a pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..face_embedding.dlib_embedder import DLIB_SAME_PERSON_COSINE

log = logging.getLogger(__name__)

GALLERY_FILE = "public_figures.npz"
ARCFACE_MATCH_COSINE = 0.5
DLIB = "dlib"
ARCFACE = "arcface"
DIMENSIONS = {DLIB: 128, ARCFACE: 512}
FORMAT_HINT = (
    "np.savez(path, names=np.array(names, dtype=str), embeddings=float32 [N, D] unit rows from face_embedder, "
    "embedder='dlib' or 'arcface')"
)


class GalleryError(ValueError):
    """The gallery file cannot be used; the message says what to fix."""


def embedder_family(engine: str) -> str | None:
    """'dlib' or 'arcface' for any face_embedder engine or setting name, else None."""
    name = engine.strip().lower()
    for family in (DLIB, ARCFACE):
        if name.startswith(family):
            return family
    return None


def default_threshold(family: str) -> float:
    return DLIB_SAME_PERSON_COSINE if family == DLIB else ARCFACE_MATCH_COSINE


@dataclass(frozen=True)
class Gallery:
    names: tuple[str, ...]
    embeddings: np.ndarray  # float32 [N, D], unit rows
    embedder: str
    family: str

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def load_gallery(path: Path) -> Gallery:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"names", "embeddings", "embedder"} - set(data.files)
            if missing:
                raise GalleryError(f"it lacks {sorted(missing)}; write it as {FORMAT_HINT}")
            names, embeddings, embedder = data["names"], data["embeddings"], data["embedder"]
    except GalleryError:
        raise
    except ValueError as exc:  # object arrays (pickles) are refused
        raise GalleryError(f"cannot read it without pickle ({exc}); write it as {FORMAT_HINT}") from None
    except Exception as exc:  # not a zip / truncated file
        raise GalleryError(f"not a readable .npz ({type(exc).__name__}: {exc})") from None
    if embedder.dtype.kind != "U" or embedder.size != 1:
        raise GalleryError(f"'embedder' must be one string, got {embedder.dtype} {list(embedder.shape)}")
    engine = str(embedder.reshape(-1)[0])
    family = embedder_family(engine)
    if family is None:
        raise GalleryError(f"embedder {engine!r} is not a face_embedder engine; use 'dlib' or 'arcface'")
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.dtype.kind != "f":
        raise GalleryError(f"'embeddings' must be float [N, D] with N >= 1, got {embeddings.dtype} {embeddings.shape}")
    if embeddings.shape[1] != DIMENSIONS[family]:
        raise GalleryError(
            f"embeddings are {embeddings.shape[1]}-d but {engine!r} makes {DIMENSIONS[family]}-d ones; "
            "rebuild the gallery with that engine or fix 'embedder'"
        )
    if names.dtype.kind != "U" or names.shape != (embeddings.shape[0],):
        raise GalleryError(f"'names' must be str [{embeddings.shape[0]}], got {names.dtype} {list(names.shape)}")
    if not np.isfinite(embeddings).all():
        raise GalleryError("'embeddings' holds NaN or infinite values")
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        worst = int(np.abs(norms - 1.0).argmax())
        raise GalleryError(
            f"embeddings must be L2-normalised (face_embedder's outputs are); row {worst} ({names[worst]}) "
            f"has norm {norms[worst]:.4f}"
        )
    unit = (embeddings / norms[:, None]).astype(np.float32)
    return Gallery(tuple(str(n) for n in names), unit, engine, family)


class GalleryStore:
    """The gallery at `path`, re-read when the file's mtime or size changes."""

    def __init__(self, path: Path | None, missing_hint: str) -> None:
        self.path = path
        self.missing_hint = missing_hint
        self._key: tuple[int, int] | None = None
        self._gallery: Gallery | None = None
        self._reason = ""

    def current(self) -> tuple[Gallery | None, str]:
        """(gallery, "") or (None, why it is unavailable)."""
        if self.path is None:
            return None, f"no gallery configured: {self.missing_hint}"
        try:
            stat = self.path.stat()
        except OSError:
            self._key, self._gallery = None, None
            return None, f"no gallery configured: {self.missing_hint}"
        key = (stat.st_mtime_ns, stat.st_size)
        if key != self._key:
            self._key = key
            try:
                self._gallery, self._reason = load_gallery(self.path), ""
                log.info("public-figure gallery %s: %d faces (%s)", self.path, len(self._gallery.names),
                         self._gallery.embedder)
            except GalleryError as exc:
                self._gallery, self._reason = None, f"gallery {self.path} is unusable: {exc}"
                log.warning(self._reason)
        return self._gallery, self._reason


def best_match(gallery: Gallery, embedding: np.ndarray) -> tuple[int, float]:
    """(row, cosine similarity) of the gallery face nearest to `embedding` (same dimension)."""
    vector = np.asarray(embedding, dtype=np.float64).reshape(-1)
    vector = vector / np.linalg.norm(vector)
    similarities = gallery.embeddings.astype(np.float64) @ vector
    row = int(similarities.argmax())
    return row, float(similarities[row])
