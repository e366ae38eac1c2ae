"""Weights choice, input checks and the batched predictor of the content_safety Triton model.

Every check reports `pass`, `fail` or `unavailable` (its model or data is missing or unusable: never a
pass), with a score, the threshold it was judged against and a reason; the face checks report
`not_applicable` when the request carries no face. The report's own `status` is `fail` when any check
fails, else `unavailable` when any applicable check is unavailable, else `pass`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .. import spec
from ..errors import InputError
from ..face_embedding.predictor import MIN_FACE_PX
from ..weights import (
    CONDITIONS,
    FORBIDDEN,
    SHIPPED,
    UNAVAILABLE,
    WeightsChoice,
    official_path,
    package_path,
    weights_root,
)
from .age import GENDERAGE_FILE, AgeEstimate, GenderAgeRunner
from .nsfw import EXPLICIT_CLASSES, Detection, NudeNetRunner, nsfw_score
from .public_figures import GALLERY_FILE, GalleryStore, best_match, default_threshold
from .settings import ContentSafetySettings

log = logging.getLogger(__name__)

MODEL = spec.CONTENT_SAFETY.name
NUDENET_PACKAGE = "nudenet"
NUDENET_FILE = "320n.onnx"
NUDENET_ENGINE = "nudenet-320n"

PASS, FAIL, UNAVAILABLE_STATUS, NOT_APPLICABLE = "pass", "fail", "unavailable", "not_applicable"

_NUDENET_LICENCE = (
    "nudenet 3.4.2: MIT (package metadata); its 320n.onnx was exported with Ultralytics 8.2.46, whose ONNX "
    "metadata stamps AGPL-3.0: review before commercial use"
)
_INSIGHTFACE_LICENCE = "genderage.onnx (insightface buffalo_l): non-commercial research use only"
_NUDENET_ALTERNATIVE = (
    "an NSFW detector without the AGPL obligation (e.g. one trained and exported in-house), or meet AGPL-3.0's "
    "source-offer terms for the served 320n.onnx"
)
_AGE_ALTERNATIVE = (
    f"remove {GENDERAGE_FILE} (the minor-face check then reports unavailable, which the strict policy holds "
    "for review) or supply an age estimator licensed for commercial use under that name"
)
GENDERAGE_HINT = (
    f"put insightface buffalo_l's {GENDERAGE_FILE} at <weights root>/{MODEL}/{GENDERAGE_FILE} "
    "(no age model ships in any package)"
)
GALLERY_HINT = f"put {GALLERY_FILE} (names, embeddings, embedder) at <weights root>/{MODEL}/{GALLERY_FILE}"


def _genderage_path(root: Path | None) -> Path | None:
    return official_path(MODEL, GENDERAGE_FILE, root)


def _gallery_path(root: Path | None) -> Path | None:
    """Where the gallery is looked for (it may appear later), or None without a weights root."""
    root = root if root is not None else weights_root()
    return None if root is None else root / MODEL / GALLERY_FILE


def choose_weights(settings: ContentSafetySettings, root: Path | None = None) -> WeightsChoice:
    """The shipped NudeNet detector; the note says whether the age model and a gallery are present."""
    genderage = _genderage_path(root)
    gallery = _gallery_path(root)
    parts = [
        f"minor-face: {genderage}" if genderage else f"minor-face unavailable: {GENDERAGE_HINT}",
        f"public figures: {gallery}" if gallery and gallery.exists() else f"public figures: {GALLERY_HINT}",
    ]
    detector = package_path(NUDENET_PACKAGE, NUDENET_FILE)
    if detector is None:
        note = f"NSFW unavailable: install {NUDENET_PACKAGE}==3.4.2 (ships {NUDENET_FILE}); " + "; ".join(parts)
        return WeightsChoice(MODEL, "-", UNAVAILABLE, None, "-", note=note)
    engine = NUDENET_ENGINE + ("+genderage" if genderage else "")
    licence = _NUDENET_LICENCE + (f"; {_INSIGHTFACE_LICENCE}" if genderage else "")
    note = "shipped NudeNet body-part detector (320 px); " + "; ".join(parts)
    # The insightface age model forbids commercial use; NudeNet's AGPL stamp is an obligation, not a ban.
    use, alternative = (FORBIDDEN, _AGE_ALTERNATIVE) if genderage else (CONDITIONS, _NUDENET_ALTERNATIVE)
    return WeightsChoice(MODEL, engine, SHIPPED, detector, licence, note=note, commercial_use=use,
                         alternative=alternative)


def _check(status: str, score: float | None, threshold: float | None, reason: str, **extra) -> dict:
    return {"status": status, "score": score, "threshold": threshold, "reason": reason, **extra}


def judge_nsfw(detections: list[Detection], threshold: float) -> dict:
    score = nsfw_score(detections)
    explicit = sorted({d.label for d in detections if d.label in EXPLICIT_CLASSES and d.score >= threshold})
    if explicit:
        reason = f"exposed {', '.join(explicit)} detected (score {score:.2f} >= {threshold})"
    else:
        reason = f"highest explicit score {score:.2f} < {threshold}"
    return _check(
        FAIL if explicit else PASS,
        round(score, 4),
        threshold,
        reason,
        detections=[d.as_dict() for d in detections],
    )


def judge_age(estimate: AgeEstimate, settings: ContentSafetySettings) -> dict:
    limit = settings.min_age + settings.age_margin
    age = round(estimate.age, 1)
    if estimate.age < limit:
        status = FAIL
        reason = f"the face looks {age} years old, under {settings.min_age:g} + a {settings.age_margin:g}-year margin"
    else:
        status = PASS
        reason = f"the face looks {age} years old (>= {limit:g})"
    return _check(status, age, limit, reason, min_age=settings.min_age, margin_years=settings.age_margin)


def _not_applicable(missing: str) -> dict:
    return _check(NOT_APPLICABLE, None, None, f"no {missing} sent with the image")


def overall(checks: dict[str, dict]) -> str:
    statuses = [check["status"] for check in checks.values()]
    if FAIL in statuses:
        return FAIL
    if UNAVAILABLE_STATUS in statuses:
        return UNAVAILABLE_STATUS
    return PASS


def _validate(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(images [N,H,W,3] uint8, boxes [N,4] or None, embeddings [N,D] or None), or InputError."""
    if spec.IMAGE not in batch:
        raise InputError(f"missing input {spec.IMAGE!r}")
    images = np.asarray(batch[spec.IMAGE])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"image must be UINT8 [H, W, 3] RGB, got {images.dtype} {list(images.shape[1:])}")
    if min(images.shape[1:3]) == 0:
        raise InputError("image is empty; send a decoded RGB picture")
    count, height, width = images.shape[:3]
    boxes = embeddings = None
    if spec.FACE_BOX in batch:
        boxes = np.asarray(batch[spec.FACE_BOX], dtype=np.float32)
        if boxes.shape != (count, 4) or not np.isfinite(boxes).all():
            raise InputError(
                f"face_box must be 4 finite numbers per image (x1, y1, x2, y2), got {list(boxes.shape[1:])}",
                "bad_face_geometry",
            )
        for index, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            if x2 <= x1 or y2 <= y1 or x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
                raise InputError(
                    f"item {index}: face_box {[x1, y1, x2, y2]} is empty or outside the {width}x{height} image; "
                    "send x1, y1, x2, y2 in pixels of the same image, as face_detector returns them",
                    "bad_face_geometry",
                )
    if spec.FACE_KEYPOINTS in batch:
        # Accepted so a caller can send face_embedder's inputs unchanged; insightface's age model crops
        # from the box alone (Attribute.get: no rotation), so the keypoints are only checked.
        points = np.asarray(batch[spec.FACE_KEYPOINTS], dtype=np.float32)
        if points.shape != (count, 5, 2) or not np.isfinite(points).all():
            raise InputError(
                f"face_keypoints must be finite FP32 [5, 2] per image, got {list(points.shape[1:])}",
                "bad_face_geometry",
            )
    if spec.EMBEDDING in batch:
        embeddings = np.asarray(batch[spec.EMBEDDING], dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != count or embeddings.shape[1] == 0:
            raise InputError(f"embedding must be FP32 [D] per image, got {list(embeddings.shape[1:])}")
        if not np.isfinite(embeddings).all() or (np.linalg.norm(embeddings, axis=1) == 0).any():
            raise InputError("embedding must be a finite, non-zero vector: send face_embedder's output")
    return images, boxes, embeddings


class ContentSafety:
    """The Triton predictor: one JSON safety report per image."""

    def __init__(
        self,
        settings: ContentSafetySettings,
        weights: WeightsChoice,
        detector: NudeNetRunner | None,
        ages: GenderAgeRunner | None,
        ages_unavailable: str,
        gallery: GalleryStore,
    ) -> None:
        self.settings = settings
        self.weights = weights
        self.detector = detector
        self.ages = ages
        self.ages_unavailable = ages_unavailable
        self.gallery = gallery

    def nsfw_checks(self, images: np.ndarray) -> list[dict]:
        if self.detector is None:
            reason = f"NSFW detector unavailable: {self.weights.note}"
            return [_check(UNAVAILABLE_STATUS, None, self.settings.nsfw_threshold, reason)] * len(images)
        detections = self.detector.detect(list(images))
        return [judge_nsfw(found, self.settings.nsfw_threshold) for found in detections]

    def minor_checks(self, images: np.ndarray, boxes: np.ndarray | None) -> list[dict]:
        if boxes is None:
            return [_not_applicable(spec.FACE_BOX)] * len(images)
        limit = self.settings.min_age + self.settings.age_margin
        if self.ages is None:
            return [_check(UNAVAILABLE_STATUS, None, limit, self.ages_unavailable)] * len(images)
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        usable = np.flatnonzero(sizes >= MIN_FACE_PX)
        results = [
            _check(UNAVAILABLE_STATUS, None, limit,
                   f"the face is {size:.0f} px across, too small to estimate an age (need {MIN_FACE_PX})")
            for size in sizes
        ]
        for index, estimate in zip(usable, self.ages.estimate(images[usable], boxes[usable])):
            results[index] = judge_age(estimate, self.settings)
        return results

    def public_figure_checks(self, count: int, embeddings: np.ndarray | None) -> list[dict]:
        if embeddings is None:
            return [_not_applicable(spec.EMBEDDING)] * count
        gallery, reason = self.gallery.current()
        if gallery is None:
            return [_check(UNAVAILABLE_STATUS, None, None, reason)] * count
        threshold = self._match_threshold(gallery.family)
        results = []
        for vector in embeddings:
            if vector.shape[0] != gallery.dim:
                results.append(_check(
                    UNAVAILABLE_STATUS, None, threshold,
                    f"embedding dimension mismatch: the face has a {vector.shape[0]}-d embedding but the gallery "
                    f"holds {gallery.dim}-d {gallery.embedder} embeddings; run face_embedder with the gallery's "
                    "engine or rebuild the gallery with the one in use",
                ))
                continue
            row, similarity = best_match(gallery, vector)
            common = {"embedder": gallery.embedder, "gallery_size": len(gallery.names)}
            if similarity > threshold:
                results.append(_check(
                    FAIL, round(similarity, 4), threshold,
                    f"matches the public figure {gallery.names[row]!r} (cosine {similarity:.3f} > {threshold:.3f})",
                    match=gallery.names[row], **common,
                ))
            else:
                results.append(_check(
                    PASS, round(similarity, 4), threshold,
                    f"no gallery face above cosine {threshold:.3f} (nearest {similarity:.3f})", **common,
                ))
        return results

    def _match_threshold(self, family: str) -> float:
        configured = (
            self.settings.dlib_match_threshold if family == "dlib" else self.settings.arcface_match_threshold
        )
        return float(configured) if configured is not None else float(default_threshold(family))

    def reports(self, batch: dict[str, np.ndarray]) -> list[dict]:
        images, boxes, embeddings = _validate(batch)
        per_check = zip(
            self.nsfw_checks(images),
            self.minor_checks(images, boxes),
            self.public_figure_checks(len(images), embeddings),
        )
        reports = []
        for nsfw, minor, public_figure in per_check:
            checks = {"nsfw": nsfw, "minor": minor, "public_figure": public_figure}
            reports.append({"status": overall(checks), **checks})
        return reports

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [
            {spec.SAFETY_REPORT: np.array([json.dumps(report).encode()], dtype=object)}
            for report in self.reports(batch)
        ]


def build_content_safety(
    settings: ContentSafetySettings, device: str, root: Path | None = None
) -> ContentSafety:
    """The predictor; checks without their model or data stay loaded and report `unavailable`."""
    choice = choose_weights(settings, root)
    detector = NudeNetRunner(choice.path, device, settings.threads) if choice.available else None
    ages, ages_unavailable = None, f"no age model: {GENDERAGE_HINT}"
    genderage = _genderage_path(root)
    if genderage is not None:
        try:
            ages = GenderAgeRunner(genderage, device, settings.threads)
        except Exception as exc:  # a wrong or corrupt file: say so in every report rather than refuse to load
            ages_unavailable = f"{genderage} is unusable ({exc}); {GENDERAGE_HINT}"
            log.warning("%s: %s", MODEL, ages_unavailable)
    gallery = GalleryStore(_gallery_path(root), GALLERY_HINT)
    log.info("%s: %s", MODEL, choice.note)
    return ContentSafety(settings, choice, detector, ages, ages_unavailable, gallery)
