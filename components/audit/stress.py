"""Stress variants of test images (uint8 RGB arrays): grayscale, one reference stain, swapped geometry,
another image's colours, another group's stains.

A model that learned the cell, not the scanner, keeps its accuracy on all of them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

from training.augmentation import histogram_transfer

# sRGB (D65) <-> CIE XYZ, and the D65 white point.
_RGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_EPSILON = 216 / 24389  # CIE constants
_KAPPA = 24389 / 27
_LEVELS = np.arange(256) / 255.0
TRANSMITTED = 240  # light through an empty slide (intensity), for the optical density of the stain model
BACKGROUND_OD = 0.15  # pixels under this optical density in any channel are background, not stain
MIN_STAINED_PIXELS = 100  # fewer stained pixels than this: no stain to estimate or swap
_LINEAR = np.where(_LEVELS <= 0.04045, _LEVELS / 12.92, ((_LEVELS + 0.055) / 1.055) ** 2.4)  # sRGB decoding, per level


def grayscale(image: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601) copied into the three channels."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB [..., 3] -> CIELAB float [..., 3] (L in 0..100)."""
    xyz = _LINEAR[image] @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB float [..., 3] -> uint8 sRGB [..., 3] (out-of-gamut values clipped)."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0, 1)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255), 0, 255).astype(np.uint8)


def distinct_colours(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(The distinct colours [U, 3] uint8 of an image, the pixel count of each, each pixel's index into them.)
    A per-pixel colour map computed on the distinct colours and gathered back is the same map, for about a
    sixth of the work on a smear (some 25,000 colours in 130,000 to 160,000 pixels)."""
    pixels = image.reshape(-1, 3).astype(np.int32)
    codes = pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]
    unique, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    colours = np.stack([unique >> 16, unique >> 8 & 255, unique & 255], axis=-1).astype(np.uint8)
    return colours, counts, inverse


def lab_statistics(lab: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """[[mean L, mean a, mean b], [std L, std a, std b]] of an image in CIELAB, or of colours [U, 3] that
    `counts` pixels have each."""
    lab = lab.reshape(-1, 3)
    mean = np.average(lab, axis=0, weights=counts)
    return np.stack([mean, np.sqrt(np.average((lab - mean) ** 2, axis=0, weights=counts))])


def stain_statistics(image: np.ndarray) -> np.ndarray:
    """`lab_statistics` of a uint8 RGB image, computed on its distinct colours."""
    colours, counts, _ = distinct_colours(image)
    return lab_statistics(rgb_to_lab(colours), counts)


def reference_stain(images: list[np.ndarray]) -> np.ndarray:
    """The median stain statistics of a set of images: the one stain every image is mapped to."""
    return np.median(np.stack([stain_statistics(image) for image in images]), axis=0)


def normalise_stain(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: each CIELAB channel shifted and scaled to the reference's mean and spread.
    Computed on the image's distinct colours (`distinct_colours`)."""
    colours, counts, inverse = distinct_colours(image)
    lab = rgb_to_lab(colours)
    own = lab_statistics(lab, counts)
    lab = (lab - own[0]) / np.maximum(own[1], 1e-6) * reference[1] + reference[0]
    return lab_to_rgb(lab)[inverse].reshape(image.shape)


def reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """The image with each side `factor` times shorter (mean of each factor x factor block)."""
    return np.asarray(Image.fromarray(image).reduce(factor)) if factor > 1 else image


def rescale(image: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """Magnifies the content by `scale` about the centre and returns a (height, width) = `size` image:
    a centre crop when the content grew past it, mirrored borders where it shrank inside it."""
    h, w = image.shape[:2]
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    out_h, out_w = size
    pad_h, pad_w = max(0, out_h - new_h), max(0, out_w - new_w)
    if pad_h or pad_w:
        resized = np.pad(
            resized, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)), mode="symmetric"
        )
    top, left = (resized.shape[0] - out_h) // 2, (resized.shape[1] - out_w) // 2
    return np.ascontiguousarray(resized[top : top + out_h, left : left + out_w])


_histogram_transfer = tf.function(histogram_transfer, reduce_retracing=True)  # a third faster than eager, per image


def take_colours(image: np.ndarray, look: np.ndarray) -> np.ndarray:
    """The image with each channel's histogram matched to `look`'s (any size): its cells in another
    image's colours (`training.augmentation.histogram_transfer`, the training augmentation's own code)."""
    moved = _histogram_transfer(tf.constant(image[None] / 255.0, tf.float32), tf.constant(look[None] / 255.0, tf.float32))
    return np.clip(np.rint(moved[0].numpy() * 255), 0, 255).astype(np.uint8)


def stained_count(pixels: np.ndarray) -> int:
    """How many pixels ([..., 3] uint8) reach BACKGROUND_OD optical density, -log((level + 1) / TRANSMITTED),
    in every channel: those at or under the level where it does, in each channel."""
    level = TRANSMITTED * np.exp(-BACKGROUND_OD) - 1.0
    return int(np.all(pixels.reshape(-1, 3) <= level, axis=-1).sum())


def fit_stains(images: list[np.ndarray], step: int = 4) -> NumpyMacenkoNormalizer | None:
    """The two stain vectors and the concentration range (Macenko) of a set of images, from every `step`-th
    pixel of each, pooled; None when they hold fewer than MIN_STAINED_PIXELS stained pixels."""
    pixels = np.concatenate([image.reshape(-1, 3)[::step] for image in images])
    if stained_count(pixels) < MIN_STAINED_PIXELS:
        return None
    stains = NumpyMacenkoNormalizer()
    stains.fit(pixels[:, None, :], Io=TRANSMITTED, beta=BACKGROUND_OD)
    return stains


def swap_stains(image: np.ndarray, stains: NumpyMacenkoNormalizer) -> np.ndarray:
    """The image unmixed into its own two stains (Macenko) and remixed with `stains`' vectors and
    concentration range: the same cell as another lab's staining and scanner show it. Unlike
    `normalise_stain`, the stains' hues change relative to each other, which a per-channel standardisation
    cannot undo. An image with fewer than MIN_STAINED_PIXELS stained pixels has no stain to swap: returned as is."""
    if stained_count(image) < MIN_STAINED_PIXELS:
        return image
    swapped, _, _ = stains.normalize(image, Io=TRANSMITTED, beta=BACKGROUND_OD, stains=False)
    return swapped
