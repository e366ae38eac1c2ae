"""The policy limits every input check reads, in one frozen dataclass.

The preprocess model builds it from its config.pbtxt `parameters` through settings.from_model_config, so
an operator can tune each limit without touching code; the defaults below are what a field left out gets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MULTI_FACE_POLICIES = ("largest", "reject")


@dataclass(frozen=True)
class ValidationLimits:
    # --- photo upload -------------------------------------------------------------------------------
    # Bytes of the encoded photo: 20 MB is above any phone camera JPEG/HEIC-converted PNG we expect.
    max_upload_bytes: int = 20_000_000
    # Decompression-bomb guard, checked from the file header before any pixel is decoded: 40 MP covers
    # every current phone camera (48 MP sensors save 12 MP by default). Pillow refuses on its own above
    # Image.MAX_IMAGE_PIXELS (about 89.5 MP), so a larger value here is capped there.
    max_pixels: int = 40_000_000
    # Shortest side of the photo, in pixels, before any downscaling: below this there is no usable face.
    min_side: int = 128
    # Photos are downscaled so their long side is at most this for processing: detectors gain nothing
    # from more pixels and the cost grows with the area.
    working_max_side: int = 1920

    # --- faces --------------------------------------------------------------------------------------
    # "largest": several faces are fine and the largest is animated; "reject": more than one face whose
    # box is at least min_face_px is an error (tiny background faces never count).
    multi_face_policy: str = "largest"
    # Shortest side of the chosen face box, in pixels of the working image.
    min_face_px: int = 64
    # Shortest side of the face box as a fraction of the photo's shortest side; 0 disables the check.
    min_face_fraction: float = 0.0
    # Fraction of the face box area that may lie outside the photo (a head cut off by the frame).
    max_face_outside_fraction: float = 0.25
    # Head pose limits, degrees away from facing the camera: beyond them the animated face shows
    # the hidden half of the face, which the generator has to invent.
    max_yaw_deg: float = 35.0
    max_pitch_deg: float = 30.0

    # --- speech -------------------------------------------------------------------------------------
    max_audio_bytes: int = 50_000_000
    min_audio_s: float = 1.0
    max_audio_s: float = 300.0
    # Fraction of samples at full scale: above 1% the distortion is audible and hurts lip-sync features.
    max_clipped_fraction: float = 0.01
    # Fraction of the clip with sound above the silence threshold of audio_features.
    min_active_fraction: float = 0.05
    # Integrated loudness (EBU R128) of the upload before normalisation; below this it is silence/noise.
    min_loudness_lufs: float = -60.0

    # --- driving video ------------------------------------------------------------------------------
    max_video_bytes: int = 200_000_000
    max_video_s: float = 120.0
    # Pixels of one frame: 3840x2160 (4K UHD).
    max_video_pixels: int = 8_294_400
    # Upper bound for the RGB frames read_frames may hold in memory at once.
    max_decoded_video_bytes: int = 2_000_000_000
    # Wall-clock limit of one ffmpeg run, so a hostile file cannot hold a model instance.
    ffmpeg_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        # Raised as ValueError: settings.from_mapping turns it into a ConfigError naming the class.
        if self.multi_face_policy not in MULTI_FACE_POLICIES:
            raise ValueError(
                f"multi_face_policy must be one of {MULTI_FACE_POLICIES}, got {self.multi_face_policy!r}"
            )
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if field.name == "min_loudness_lufs":
                    continue
                if value < 0:
                    raise ValueError(f"{field.name} must not be negative, got {value!r}")
        for name in ("min_face_fraction", "max_face_outside_fraction", "max_clipped_fraction",
                     "min_active_fraction"):
            if getattr(self, name) > 1.0:
                raise ValueError(f"{name} is a fraction between 0 and 1, got {getattr(self, name)!r}")
        if self.min_audio_s > self.max_audio_s:
            raise ValueError(f"min_audio_s ({self.min_audio_s}) is above max_audio_s ({self.max_audio_s})")
        if self.min_side > self.working_max_side:
            raise ValueError(
                f"min_side ({self.min_side}) is above working_max_side ({self.working_max_side})"
            )
        for name in ("max_upload_bytes", "max_pixels", "working_max_side", "max_audio_bytes",
                     "max_video_bytes", "max_video_pixels", "ffmpeg_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
