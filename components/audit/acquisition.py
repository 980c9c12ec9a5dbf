"""Acquisition signatures derived from the pixels: image size, background tone, red-cell scale.

Images from one scanner and stain share a size, a background colour and a magnification; grouping test
images by these (never by file name or class) shows whether accuracy holds within each source.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BORDER = 0.05  # fraction of each side read as background
NEUTRAL_SPREAD = 25  # |blue - red| of the background under which it counts as neutral


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median RGB of the border ring (the outer BORDER of each side), where smears show background."""
    h, w = image.shape[:2]
    bh, bw = max(1, round(h * BORDER)), max(1, round(w * BORDER))
    ring = np.concatenate(
        [image[:bh].reshape(-1, 3), image[-bh:].reshape(-1, 3), image[:, :bw].reshape(-1, 3), image[:, -bw:].reshape(-1, 3)]
    )
    return np.median(ring, axis=0)


def background_tone(image: np.ndarray) -> str:
    """'warm' (red over blue), 'cool' (blue over red) or 'neutral' background."""
    red, _, blue = background_colour(image)
    if abs(blue - red) < NEUTRAL_SPREAD:
        return "neutral"
    return "warm" if red > blue else "cool"


def signature(image: np.ndarray) -> str:
    """The acquisition group of an image, e.g. '360x363 warm' (width x height, background tone)."""
    h, w = image.shape[:2]
    return f"{w}x{h} {background_tone(image)}"


def _otsu_threshold(gray: np.ndarray) -> float:
    hist, _ = np.histogram(gray, 256, (0, 256))
    p = hist / max(1, hist.sum())
    weight, mean = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (mean[-1] * weight - mean) ** 2 / (weight * (1 - weight) + 1e-12)
    return float(np.argmax(between))


def red_cell_diameter(image: np.ndarray) -> float:
    """Median equivalent diameter, in pixels, of the dark blobs (cells) that do not touch the border.

    Red cells are about 7.5 um across and outnumber the white cell, so the median is a scale cue;
    NaN when no blob is found."""
    gray = image.astype(np.float64).mean(axis=-1)
    cells = ndimage.binary_fill_holes(ndimage.binary_opening(gray <= _otsu_threshold(gray), iterations=2))
    labels, count = ndimage.label(cells)
    if not count:
        return float("nan")
    areas = ndimage.sum(cells, labels, range(1, count + 1))
    h, w = gray.shape
    min_area = (min(h, w) / 40) ** 2
    diameters = [
        2 * np.sqrt(area / np.pi)
        for box, area in zip(ndimage.find_objects(labels), areas, strict=True)
        if area >= min_area and box[0].start > 0 and box[1].start > 0 and box[0].stop < h and box[1].stop < w
    ]
    return float(np.median(diameters)) if diameters else float("nan")
