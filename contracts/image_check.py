"""What an acceptable image is, for ingestion and for every serving client alike: decoded fully, within
the limits, and re-encoded to bytes TensorFlow decodes (JPEG or PNG, 8-bit RGB)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# The pipeline decodes with TensorFlow, which reads JPEG and PNG; other formats are re-encoded as PNG.
KEPT_FORMATS = frozenset({"JPEG", "PNG"})
CONVERTIBLE_FORMATS = frozenset({"BMP", "TIFF"})
# Our own pixel limit replaces Pillow's global decompression-bomb guard (checked before decoding).
Image.MAX_IMAGE_PIXELS = None


@dataclasses.dataclass(frozen=True)
class Limits:
    max_pixels: int
    min_side: int
    max_file_bytes: int


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Converts grayscale, palette, alpha, CMYK and 16-bit images to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image).astype(np.float64)
        scale = 257.0 if pixels.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(np.round(pixels / scale), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


class ImageRejectedError(ValueError):
    """Encoded bytes that are not a usable image; the message says why."""


@dataclasses.dataclass(frozen=True)
class CheckedImage:
    image_bytes: bytes  # the original bytes, or a PNG re-encoding when converted
    height: int
    width: int
    converted_from: str  # "" when the original bytes are kept
    pixels: Image.Image  # the decoded image, 8-bit RGB


def _decoded(data: bytes, limits: Limits) -> tuple[Image.Image, str]:
    """The fully decoded image and its format, after the checks that need only the header."""
    if not data:
        raise ImageRejectedError("empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise ImageRejectedError(f"file too large: {len(data)} bytes > max_file_bytes {limits.max_file_bytes}")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejectedError("not an image (unrecognised content)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejectedError(f"corrupt image header: {err}") from None
    except Exception as err:  # a decoder may raise anything on hostile bytes; each is a rejection
        raise ImageRejectedError(f"corrupt image header ({type(err).__name__}): {err}") from None
    fmt = image.format or "unknown"
    if fmt not in KEPT_FORMATS | CONVERTIBLE_FORMATS:
        raise ImageRejectedError(f"unsupported image format {fmt} (accepted: JPEG, PNG, BMP, TIFF)")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejectedError(
            f"decompression bomb: {width}x{height} = {width * height} pixels > max_pixels {limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise ImageRejectedError(f"image too small: {width}x{height}, min_side is {limits.min_side}")
    if getattr(image, "n_frames", 1) > 1:
        raise ImageRejectedError(f"multi-frame {fmt} ({image.n_frames} frames); one image per file expected")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejectedError(f"truncated or corrupt {fmt}: {err}") from None
    except Exception as err:  # as above: decoder bugs on hostile bytes
        raise ImageRejectedError(f"truncated or corrupt {fmt} ({type(err).__name__}): {err}") from None
    return image, fmt


def check_image(data: bytes, limits: Limits) -> CheckedImage:
    """Decodes encoded image bytes fully, checks them against the limits and returns bytes TensorFlow can
    decode (JPEG or PNG, 8-bit RGB). Shared by ingestion and the serving clients. Raises ImageRejectedError."""
    image, fmt = _decoded(data, limits)
    width, height = image.size
    try:
        rgb = _to_rgb8(image)
    except Exception as err:
        raise ImageRejectedError(f"cannot convert {fmt} {image.mode} to RGB ({type(err).__name__}): {err}") from None
    if fmt in KEPT_FORMATS and image.mode == "RGB":
        return CheckedImage(data, height, width, "", rgb)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return CheckedImage(buffer.getvalue(), height, width, f"{fmt} {image.mode}", rgb)
