"""Finds the labelled images under the data roots and verifies each file by decoding it fully."""

from __future__ import annotations

import dataclasses
import hashlib
import io

import imagehash
import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from components.data_roots import MANIFEST_FILE, DataRoot, SiteResolver
from components.file_listing import UnreadableFileError, file_size, list_files, read_file

# The pipeline decodes with TensorFlow, which reads JPEG and PNG; other formats are re-encoded as PNG.
KEPT_FORMATS = frozenset({"JPEG", "PNG"})
CONVERTIBLE_FORMATS = frozenset({"BMP", "TIFF"})
# Our own pixel limit replaces Pillow's global decompression-bomb guard (checked before decoding).
Image.MAX_IMAGE_PIXELS = None


class IngestionError(RuntimeError):
    """The data roots as a whole cannot be ingested (missing or empty class folders)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_pixels: int
    min_side: int
    max_file_bytes: int


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file found under a data root, with the class named by its top-level folder (None if unknown) and
    its site (None if unknown)."""

    root: DataRoot
    relpath: str  # under the root: <class folder>/...
    label_name: str | None
    site: str | None
    problem: str = ""  # why the listed entry cannot be read as a file ("" = none known)

    @property
    def path(self) -> str:
        return _join(self.root.path, self.relpath)

    @property
    def key(self) -> str:
        """`<root name>/<relpath>`: names the file in the report and the tf.Examples, unique across roots."""
        return f"{self.root.name}/{self.relpath}"


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    relpath: str  # <root name>/<class>/...
    label_name: str
    site: str
    sha256: str
    height: int
    width: int
    image_bytes: bytes
    converted_from: str  # "" when the original bytes are kept
    phash: str  # perceptual hash (256 bits, hex): finds resized and re-encoded copies


@dataclasses.dataclass(frozen=True)
class Rejection:
    relpath: str
    reason: str


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def find_candidates(roots: list[DataRoot], classes: list[str]) -> tuple[list[Candidate], list[str]]:
    """Lists every file in the class folders of every root (recursively), with its site, and every stray file.

    Returns the candidates, sorted by root and path, and the top-level files that are not in any folder
    (documentation such as PROVENANCE.md, MANIFEST.csv) as `<root name>/<file>`: not images of the dataset.
    A root may lack some classes (a site that sent none). Raises IngestionError naming the root when a root
    is missing, or the roots when a class has a folder in none of them.
    """
    candidates, loose = [], []
    missing = set(classes)
    for root in roots:
        top = root.path
        if not tf.io.gfile.isdir(top):
            raise IngestionError(f"data root {top} does not exist or is not a folder")
        missing -= {c for c in classes if tf.io.gfile.isdir(_join(top, c))}
        sites = SiteResolver(root)
        for name in sorted(entry.rstrip("/") for entry in tf.io.gfile.listdir(top)):
            if not tf.io.gfile.isdir(_join(top, name)):
                loose.append(f"{root.name}/{name}")
                continue
            label = name if name in classes else None
            for listed in list_files(_join(top, name)):
                relpath = f"{name}/{listed.relpath}"
                candidates.append(Candidate(root, relpath, label, sites.site_of(relpath), listed.problem))
    if missing:
        where = ", ".join(r.path for r in roots)
        raise IngestionError(f"data root {where}: class folders missing: {', '.join(c for c in classes if c in missing)}")
    return candidates, loose


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


def perceptual_hash(image: Image.Image) -> str:
    """256-bit DCT hash (hex): equal or within a few bits for resized and re-encoded copies of one image."""
    return str(imagehash.phash(image, hash_size=16))


def _read_checked(candidate: Candidate, limits: Limits) -> ImageRecord | Rejection:
    if candidate.problem:
        return Rejection(candidate.key, candidate.problem)
    if candidate.label_name is None:
        return Rejection(candidate.key, f"unknown class folder '{candidate.relpath.split('/')[0]}'")
    if candidate.site is None:
        return Rejection(
            candidate.key,
            f"no site: not listed in {candidate.root.name}/{MANIFEST_FILE} and no site given for the root in the config",
        )
    try:
        size = file_size(candidate.path)
        if size > limits.max_file_bytes:  # checked before reading the file into memory
            return Rejection(candidate.key, f"file too large: {size} bytes > max_file_bytes {limits.max_file_bytes}")
        data = read_file(candidate.path)
        checked = check_image(data, limits)
    except (UnreadableFileError, ImageRejectedError) as err:
        return Rejection(candidate.key, str(err))
    return ImageRecord(
        relpath=candidate.key,
        label_name=candidate.label_name,
        site=candidate.site,
        sha256=hashlib.sha256(data).hexdigest(),
        height=checked.height,
        width=checked.width,
        image_bytes=checked.image_bytes,
        converted_from=checked.converted_from,
        phash=perceptual_hash(checked.pixels),
    )


def verify_image(candidate: Candidate, limits: Limits) -> ImageRecord | Rejection:
    """Reads and decodes one file fully and returns it as a record, or a rejection that says why. Never
    raises for a file: an unexpected failure is a rejection that names the error."""
    try:
        return _read_checked(candidate, limits)
    except Exception as err:  # noqa: BLE001 - one file must not stop the run; the reason is kept
        return Rejection(candidate.key, f"unexpected error while reading ({type(err).__name__}): {err}")


def fingerprint(roots: list[DataRoot]) -> str:
    """A cheap identity of the roots' contents: SHA-256 over every file's path, size and mtime, and the sites."""
    digest = hashlib.sha256()
    for root in roots:
        digest.update(f"{root.name}\0{root.site}\n".encode())
        for listed in list_files(root.path):
            try:
                stat = tf.io.gfile.stat(_join(root.path, listed.relpath))
                state = f"{stat.length}\0{stat.mtime_nsec}"
            except tf.errors.OpError:  # unreadable entries are rejected by ingestion; here they only count
                state = "unreadable"
            digest.update(f"{listed.relpath}\0{listed.problem}\0{state}\n".encode())
    return digest.hexdigest()
