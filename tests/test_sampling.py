"""Class x site balanced sampling: every class equally often, sites within a class by count ** power."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from training.sampling import balanced_dataset, group_weights

# Class 0 from two sites (90 and 10 images), class 1 from one site (30 images).
LABELS = np.array([0] * 90 + [0] * 10 + [1] * 30)
SITES = np.array(["lyon"] * 90 + ["oslo"] * 10 + ["lyon"] * 30)


@pytest.mark.parametrize(
    "power, expected",
    [
        (1.0, {(0, "lyon"): 0.45, (0, "oslo"): 0.05, (1, "lyon"): 0.5}),
        (0.0, {(0, "lyon"): 0.25, (0, "oslo"): 0.25, (1, "lyon"): 0.5}),
        (0.5, {(0, "lyon"): 0.5 * 3 / 4, (0, "oslo"): 0.5 * 1 / 4, (1, "lyon"): 0.5}),
    ],
)
def test_group_weights(power, expected):
    weights = group_weights(LABELS, SITES, power)
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        assert weights[key] == pytest.approx(value)


def test_balanced_stream_follows_the_weights_and_keeps_images_with_their_labels_and_sites():
    images = np.arange(len(LABELS), dtype=np.float32).reshape(-1, 1, 1, 1)  # the image is its own index
    stream = balanced_dataset(images, LABELS, SITES, site_power=0.0, seed=3).take(4000)
    drawn = [(int(x.numpy().item()), int(y), site.numpy().decode()) for x, y, site in stream]
    assert all(LABELS[index] == label and SITES[index] == site for index, label, site in drawn)
    drawn = [(index, label) for index, label, _ in drawn]
    groups = Counter((LABELS[i], SITES[i]) for i, _ in drawn)
    assert groups[(0, "oslo")] / 4000 == pytest.approx(0.25, abs=0.03)
    assert groups[(1, "lyon")] / 4000 == pytest.approx(0.5, abs=0.03)
    assert len({i for i, _ in drawn if SITES[i] == "oslo"}) == 10  # every image of the small site is used
