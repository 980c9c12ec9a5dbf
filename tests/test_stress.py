"""Stress transforms do what they say: grayscale, one reference stain, magnification and size, another
image's colours."""

from __future__ import annotations

import numpy as np
import pytest

from components.audit import stress
from tests.helpers import smear


def test_grayscale_has_equal_channels_and_keeps_luminance():
    image = smear()
    gray = stress.grayscale(image)
    assert gray.shape == image.shape and gray.dtype == np.uint8
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert gray[0, 0, 0] == round(0.299 * 240 + 0.587 * 210 + 0.114 * 190)


def test_lab_round_trip_and_known_values():
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert np.abs(stress.lab_to_rgb(stress.rgb_to_lab(image)).astype(int) - image).max() <= 1
    white, black = stress.rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0]], np.uint8))
    assert white == pytest.approx([100, 0, 0], abs=0.1) and black == pytest.approx([0, 0, 0], abs=0.1)


def test_stain_normalisation_maps_two_stains_to_the_reference():
    peach = smear(background=(240, 210, 190), cell=(120, 60, 160))
    blue = smear(background=(225, 215, 225), cell=(90, 70, 170))
    reference = stress.reference_stain([blue])
    normalised = stress.normalise_stain(peach, reference)
    assert stress.lab_statistics(stress.rgb_to_lab(normalised)) == pytest.approx(reference, abs=1.5)
    assert np.abs(normalised.astype(int) - blue.astype(int)).mean() < np.abs(peach.astype(int) - blue.astype(int)).mean()


def test_rescale_magnifies_content_and_returns_the_target_size():
    image = smear(size=(100, 100), radius=10)
    bigger = stress.rescale(image, 2.0, (90, 110))
    assert bigger.shape == (90, 110, 3)
    dark = (bigger.mean(axis=-1) < 150).sum()
    assert dark == pytest.approx(np.pi * 20**2, rel=0.1)  # radius 10 -> 20 pixels
    smaller = stress.rescale(image, 0.5, (100, 100))
    assert smaller.shape == (100, 100, 3)
    centre_dark = (smaller[40:60, 40:60].mean(axis=-1) < 150).sum()
    assert centre_dark == pytest.approx(np.pi * 5**2, rel=0.25)  # radius 5 at the centre; borders mirrored


def test_take_colours_gives_the_cell_the_other_images_background_and_stain():
    peach = smear(size=(120, 100), background=(240, 210, 190), cell=(120, 60, 160), radius=20)
    blue = smear(size=(80, 80), background=(225, 220, 235), cell=(90, 70, 200), radius=16)  # another size too
    moved = stress.take_colours(peach, blue)
    assert moved.shape == peach.shape and moved.dtype == np.uint8
    assert tuple(moved[0, 0]) == (225, 220, 235)  # the background takes the other image's colour
    assert tuple(moved[60, 50]) == (90, 70, 200)  # and the cell, where it was
