"""Acquisition signatures come from pixels: size, background tone, red-cell scale."""

from __future__ import annotations

import numpy as np
import pytest

from components.audit import acquisition
from tests.helpers import smear


def field(size: int, diameter: int, background=(235, 215, 220)) -> np.ndarray:
    """A background with a grid of dark discs of a known diameter (red cells), none touching the border."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    yy, xx = np.mgrid[:size, :size]
    step = 2 * diameter
    for cy in range(step, size - diameter, step):
        for cx in range(step, size - diameter, step):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = (180, 120, 150)
    return image


def test_signature_reads_size_and_background_tone():
    peach = smear(size=(363, 360), background=(244, 217, 194))
    blue_white = smear(size=(400, 400), background=(229, 219, 223))
    cool = smear(size=(64, 64), background=(180, 200, 240))
    assert acquisition.signature(peach) == "360x363 warm"
    assert acquisition.signature(blue_white) == "400x400 neutral"
    assert acquisition.signature(cool) == "64x64 cool"
    assert acquisition.background_colour(peach) == pytest.approx([244, 217, 194])


@pytest.mark.parametrize("diameter", [20, 36])
def test_red_cell_diameter_measures_disc_size(diameter):
    assert acquisition.red_cell_diameter(field(300, diameter)) == pytest.approx(diameter, rel=0.1)


def test_red_cell_diameter_is_nan_without_cells():
    assert np.isnan(acquisition.red_cell_diameter(np.full((100, 100, 3), 230, np.uint8)))
