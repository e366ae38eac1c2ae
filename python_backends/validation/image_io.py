"""Decode an uploaded photo into the RGB uint8 array every face model takes, refusing what it cannot use.

The order matters for safety: byte size, then the pixel count from the header (Pillow opens lazily), and
only then are pixels decoded, so a tiny file that claims 50000x50000 pixels costs nothing.
"""

from __future__ import annotations

import io
import logging
import re
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps

from ..errors import InputError
from .limits import ValidationLimits

log = logging.getLogger(__name__)

# Formats a camera or an editor writes. Everything else Pillow could open is left out on purpose: EPS
# would run Ghostscript, and each extra plugin is more parser surface for hostile uploads. (Multi-picture
# JPEGs, MPO, come in through the JPEG opener.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_UNREADABLE_HINT = "upload a JPEG, PNG or WebP image"
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_SRGB = ImageCms.createProfile("sRGB")


def _unreadable(reason: str) -> InputError:
    return InputError(f"the photo could not be read ({reason}): {_UNREADABLE_HINT}", "photo_unreadable")


def _reason(exc: BaseException, prefix: str = "") -> str:
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower():
        return "the file is truncated"  # Pillow says it several ways, all meaning the upload was cut short
    return prefix + text


def _too_many_pixels(
    pixels: int | None, limits: ValidationLimits, size: tuple[int, int] | None
) -> InputError:
    shape = f"{size[0]}x{size[1]} pixels, " if size else ""
    amount = f"{pixels / 1e6:.1f} MP" if pixels else "more pixels than can be decoded safely"
    return InputError(
        f"the photo is too large ({shape}{amount}; the limit is {limits.max_pixels / 1e6:.1f} MP): "
        "resize it, e.g. to 1920 pixels on the long side, and upload it again",
        "photo_too_many_pixels",
    )


def _as_bytes(data: object) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, np.ndarray) and data.dtype == object and data.size == 1:
        return _as_bytes(data.reshape(-1)[0])
    raise InputError(
        f"the photo must be sent as encoded image bytes, got {type(data).__name__}", "photo_unreadable"
    )


def _open(data: bytes, limits: ValidationLimits) -> Image.Image:
    try:
        # Pillow's own bomb check runs inside open() with its global limit: as a warning above it and an
        # error above twice it. Both become our InputError. (catch_warnings swaps the process-wide filters
        # while it is active; a Triton python-backend instance decodes on one thread, so that is safe.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        match = _BOMB_PIXELS.search(str(exc))
        raise _too_many_pixels(int(match.group(1)) if match else None, limits, None) from None
    except Image.UnidentifiedImageError:
        raise _unreadable("not an image in a supported format") from None
    except Exception as exc:  # header parsers raise many types (SyntaxError, struct.error, ...)
        raise _unreadable(_reason(exc, "broken header: ")) from None
    return image


def _check_header(image: Image.Image, limits: ValidationLimits) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise _unreadable(f"it claims a size of {width}x{height} pixels")
    if width * height > limits.max_pixels:
        raise _too_many_pixels(width * height, limits, (width, height))
    if min(width, height) < limits.min_side:
        raise InputError(
            f"the photo is only {width}x{height} pixels; its short side must be at least {limits.min_side} "
            "pixels: upload a larger photo of the face",
            "photo_too_small",
        )


def _draft_for_jpeg(image: Image.Image, limits: ValidationLimits) -> None:
    # JPEG can decode at 1/2, 1/4 or 1/8 scale straight from the DCT: a 40 MP photo then decodes in a
    # fraction of the time and memory. draft() keeps both sides >= the requested size, so the final
    # resize still sees at least working_max_side on the long side.
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    scale = limits.working_max_side / max(width, height)
    if scale < 0.5:
        image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))


def _to_srgb(image: Image.Image) -> Image.Image:
    """Colour-manage CMYK and non-sRGB RGB photos into sRGB with their embedded ICC profile, if any."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        description = ImageCms.getProfileDescription(source) or ""
        if image.mode == "RGB" and "srgb" in description.lower():
            return image  # already what the models were trained on
        return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        # A broken profile must not make a good photo unusable: fall back to plain conversion.
        log.info("ignoring unusable ICC profile (%s)", exc)
        return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255 (a white image); scale the full range instead.
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        peak = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        scaled = values / peak * 255.0
    else:
        scaled = values / 257.0  # 65535 -> 255 exactly
    return Image.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8), mode="L")


def _white_background(image: Image.Image) -> Image.Image:
    # Alpha is composited over white, not dropped: the colour under transparent pixels is arbitrary
    # (often black or leftovers of an edit), and cut-out portraits are meant to be seen on a light page.
    # A white backdrop keeps the face's outline the way the person saw it and gives the detectors a
    # studio-like background instead of black halos.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return _white_background(image)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _sixteen_bit_to_l(image).convert("RGB")
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "RGBX"):
        return image.convert("RGB")
    raise _unreadable(f"unsupported colour mode {mode}")


def _downscale(image: Image.Image, limits: ValidationLimits) -> Image.Image:
    width, height = image.size
    longest = max(width, height)
    if longest <= limits.working_max_side:
        return image
    scale = limits.working_max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: box-reduce first, then Lanczos; same quality for a large shrink at a fraction of the cost.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def decode_image(data: bytes, limits: ValidationLimits) -> np.ndarray:
    """Decode photo bytes into an RGB uint8 array of shape (H, W, 3), upright and at most working_max_side.

    Raises InputError (codes: photo_empty, photo_too_large, photo_too_many_pixels, photo_too_small,
    photo_unreadable) with a message that says what to upload instead.
    """
    data = _as_bytes(data)
    if not data:
        raise InputError("the photo is empty (0 bytes): upload a JPEG, PNG or WebP image", "photo_empty")
    if len(data) > limits.max_upload_bytes:
        raise InputError(
            f"the photo file is {len(data) / 1e6:.1f} MB; the limit is "
            f"{limits.max_upload_bytes / 1e6:.1f} MB: upload a smaller or more compressed photo",
            "photo_too_large",
        )
    image = _open(data, limits)
    with image, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # some plugins re-check on seek/load
        _check_header(image, limits)
        original_size = image.size
        try:
            if getattr(image, "is_animated", False):
                image.seek(0)  # animated GIF/WebP/APNG: the first frame is the portrait
            _draft_for_jpeg(image, limits)
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = _to_rgb(_to_srgb(upright))
            working = _downscale(rgb, limits)
            array = np.array(working, dtype=np.uint8)  # np.array, not asarray: a writeable copy we own
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(None, limits, original_size) from None
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, EOFError, ... on bad data
            raise _unreadable(_reason(exc)) from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise _unreadable(f"decoded to an unexpected shape {array.shape}")
    if min(array.shape[:2]) < limits.min_side:
        raise InputError(
            f"the photo is {original_size[0]}x{original_size[1]} pixels, too elongated to use (scaled to "
            f"{array.shape[1]}x{array.shape[0]} for processing, its short side is under {limits.min_side} "
            "pixels): crop it closer to the face",
            "photo_too_small",
        )
    return array


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode an (H, W), (H, W, 3) or (H, W, 4) uint8 array as PNG bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"encode_png needs an (H, W), (H, W, 3) or (H, W, 4) array, got shape {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
