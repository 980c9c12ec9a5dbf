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


def two_stain_smear(stain_vectors: np.ndarray, seed: int, size: int = 60) -> np.ndarray:
    """A smear stained by the Beer-Lambert model: a nucleus of the first stain, red cells of the second and a
    cytoplasm of both, with noisy amounts, on an unstained background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    amounts = np.zeros((size, size, 2))
    nucleus = (yy - 30) ** 2 + (xx - 30) ** 2 <= 10**2
    cytoplasm = ((yy - 30) ** 2 + (xx - 30) ** 2 <= 16**2) & ~nucleus
    red_cell = (yy - 8) ** 2 + (xx - 8) ** 2 <= 7**2
    amounts[nucleus] = [1.2, 0.1]
    amounts[cytoplasm] = [0.4, 0.4]
    amounts[red_cell] = [0.05, 0.9]
    amounts *= rng.uniform(0.8, 1.2, amounts.shape)
    optical_density = amounts @ stain_vectors
    return np.clip(np.rint(stress.TRANSMITTED * np.exp(-optical_density)), 0, 255).astype(np.uint8)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


OURS = unit(np.array([[0.65, 0.70, 0.29], [0.25, 0.90, 0.35]]))  # rows: nuclear stain, red-cell stain
THEIRS = unit(np.array([[0.80, 0.55, 0.25], [0.30, 0.80, 0.52]]))


def test_swap_stains_gives_the_cell_the_other_groups_stain_hues():
    ours, theirs = OURS, THEIRS
    stains = stress.fit_stains([two_stain_smear(theirs, seed=k) for k in range(3)])
    image = two_stain_smear(ours, seed=9)
    swapped = stress.swap_stains(image, stains)
    assert swapped.shape == image.shape and swapped.dtype == np.uint8

    def direction(pixel: np.ndarray) -> np.ndarray:
        return unit(-np.log((pixel.astype(float) + 1) / stress.TRANSMITTED))

    for where, k in (((30, 30), 0), ((8, 8), 1)):  # the nucleus takes their nuclear stain, the red cell theirs
        assert direction(swapped[where]) @ theirs[k] > 0.995 > direction(image[where]) @ theirs[k]
    # The same cell as their lab stains it: the swap comes close to the smear rendered with their stains.
    as_theirs = two_stain_smear(theirs, seed=9).astype(int)
    assert np.abs(swapped - as_theirs).mean() < np.abs(image - as_theirs).mean() / 4
    assert swapped[0, 59].min() >= 230  # the background stays unstained


def test_swap_stains_leaves_an_image_without_stain_as_it_is():
    stains = stress.fit_stains([two_stain_smear(OURS, seed=0)])
    blank = np.full((40, 40, 3), 235, np.uint8)
    assert stress.swap_stains(blank, stains) is blank
    assert stress.fit_stains([blank]) is None


def test_distinct_colours_rebuild_the_image_and_give_its_per_pixel_statistics():
    image = np.random.default_rng(1).integers(0, 4, (30, 40, 3), dtype=np.uint8) * 60  # 64 colours, repeated
    colours, counts, inverse = stress.distinct_colours(image)
    assert len(colours) == len(np.unique(image.reshape(-1, 3), axis=0)) and counts.sum() == 30 * 40
    assert np.array_equal(colours[inverse].reshape(image.shape), image)
    per_pixel = stress.lab_statistics(stress.rgb_to_lab(image))
    assert stress.stain_statistics(image) == pytest.approx(per_pixel, abs=1e-9)


def test_stained_count_counts_pixels_dark_enough_in_every_channel():
    background, stain = (230, 225, 235), (120, 60, 160)
    od = -np.log((np.array([background, stain]) + 1.0) / stress.TRANSMITTED)
    assert not np.all(od[0] >= stress.BACKGROUND_OD) and np.all(od[1] >= stress.BACKGROUND_OD)
    pixels = np.array([background] * 7 + [stain] * 5 + [(120, 230, 160)] * 3, np.uint8)  # one bright channel: not
    assert stress.stained_count(pixels) == 5
