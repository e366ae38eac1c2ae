"""Settings of the content_safety model, filled from config.pbtxt `parameters`."""

from __future__ import annotations

from dataclasses import dataclass

from ..licences import LicencePolicy


@dataclass(frozen=True)
class ContentSafetySettings:
    # NSFW: fail when the highest score among the exposed explicit body-part classes reaches this. NudeNet
    # itself returns no box under 0.25, so any value up to 0.25 means "fail on any explicit detection".
    # 0.5 is our choice, not a calibration (no labelled set here): it ignores the weakest detections,
    # the likeliest false alarms (the coffee-cup sample client/samples/no_face.png gets BUTTOCKS_EXPOSED
    # 0.296), and the report lists every detection with its score so an operator can audit and tune it.
    nsfw_threshold: float = 0.5
    # Minor face: fail when the estimated age is below min_age + age_margin. insightface publishes no
    # accuracy for genderage.onnx, so the margin is a policy choice, not a calibration: with 5 years a
    # face must look 23 or older to pass, the buffer retail "Challenge 21/25" rules use when age is judged
    # from appearance. A young adult may be stopped; a child estimated a few years too old is not passed.
    min_age: float = 18.0
    age_margin: float = 5.0
    # Public figure: fail when the cosine similarity to a gallery face exceeds the threshold of the
    # embedder that made the gallery. None = the default for that embedder (see public_figures.py).
    dlib_match_threshold: float | None = None
    arcface_match_threshold: float | None = None
    # CPU threads for onnxruntime (0 = its default).
    threads: int = 0
    licence: LicencePolicy = LicencePolicy()  # config.pbtxt key `commercial` (licences.py)

    def __post_init__(self) -> None:
        if not 0.0 < self.nsfw_threshold <= 1.0:
            raise ValueError(f"nsfw_threshold must be in (0, 1], got {self.nsfw_threshold}")
        if not 0.0 < self.min_age < 100.0:
            raise ValueError(f"min_age must be in (0, 100) years, got {self.min_age}")
        if self.age_margin < 0.0:
            raise ValueError(f"age_margin must be >= 0 years, got {self.age_margin}")
        for name in ("dlib_match_threshold", "arcface_match_threshold"):
            value = getattr(self, name)
            if value is not None and not -1.0 < value < 1.0:
                raise ValueError(f"{name} must be a cosine similarity in (-1, 1), got {value}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
