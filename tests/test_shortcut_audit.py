"""The shortcut audit: colour features, per-group figures, geometry swap targets, and that it exposes a
classifier that reads the image source instead of the cell."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable

import numpy as np
import pytest
from PIL import Image

from components.audit import shortcut_audit
from tests.helpers import smear

CLASSES = ["a", "b"]
PEACH, BLUE = (244, 217, 194), (229, 219, 223)


def two_source_set(n: int, seed: int):
    """Class a: small cells on peach 360x363 images; class b: large cells on blue-white 400x400 images."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(n):
        label = k % 2
        size, background, radius = ((363, 360), PEACH, 40) if label == 0 else ((400, 400), BLUE, 70)
        images.append(smear(size=size, background=background, radius=radius + int(rng.integers(-3, 4))))
        labels.append(label)
    return images, labels


def background_classifier(encoded: Iterable[bytes]) -> shortcut_audit.Predictions:
    """A 'model' that learned the source: class b when the border is not warm. Its alert for b is also raised
    when the border is only a little warm (warmth under 40)."""
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded]
    warmth = np.array([int(i[0, 0, 0]) - int(i[0, 0, 2]) for i in decoded])
    return shortcut_audit.Predictions((warmth < 25).astype(int), warmth < 40)


def test_prefetched_keeps_the_order_and_computes_at_most_ahead_of_the_consumer():
    started, lock = [], threading.Lock()

    def slow_square(k: int) -> int:
        with lock:
            started.append(k)
        time.sleep(0.02 if k % 3 == 0 else 0.001)  # later items finish first
        return k * k

    taken = []
    for value in shortcut_audit.prefetched(slow_square, ((k,) for k in range(40)), workers=2, ahead=5):
        with lock:
            assert len(started) <= len(taken) + 5  # never more than 5 made and not yet taken
        taken.append(value)
        time.sleep(0.005)
    assert taken == [k * k for k in range(40)]


def test_prefetched_raises_the_error_of_the_item_that_failed():
    def failing_at_7(k: int) -> int:
        if k == 7:
            raise ValueError("item 7 is broken")
        return k

    taken = []
    with pytest.raises(ValueError, match="item 7"):
        for value in shortcut_audit.prefetched(failing_at_7, ((k,) for k in range(20)), workers=2, ahead=4):
            taken.append(value)
    assert taken == list(range(7))


def test_colour_histogram_is_normalised_per_channel():
    features = shortcut_audit.colour_histogram(smear())
    assert features.shape == (48,)
    assert features.reshape(3, 16).sum(axis=1) == pytest.approx([1, 1, 1])


def test_colour_baseline_learns_background_colour():
    train, train_labels = two_source_set(20, seed=0)
    test, test_labels = two_source_set(10, seed=1)
    histograms, kept = shortcut_audit.read_train_split(iter(train))
    assert histograms.shape == (20, 48) and len(kept) == 20
    assert list(shortcut_audit.colour_baseline(histograms, train_labels, test)) == test_labels


def test_figures_accuracy_and_recall():
    result = shortcut_audit.figures([0, 0, 1, 1], [0, 1, 1, 0], CLASSES, "b", alerts=[False, True, True, True])
    assert result == {
        "count": 4, "accuracy": 0.5, "recall": {"a": 0.5, "b": 0.5}, "critical_recall": 0.5, "critical_alert_recall": 1.0,
    }  # fmt: skip
    assert shortcut_audit.figures([0], [0], CLASSES, "b", alerts=[True])["critical_recall"] is None
    assert shortcut_audit.figures([0], [0], CLASSES, "b", alerts=[True])["critical_alert_recall"] is None
    assert shortcut_audit.figures([1], [1], CLASSES, "b")["critical_alert_recall"] is None  # no alerts given


def test_swap_targets_pick_the_largest_group_of_another_size():
    geometry = {  # ordered largest first, as group_geometry returns them
        "360x363 warm": {"count": 10, "size": [363, 360]},
        "400x400 neutral": {"count": 8, "size": [400, 400]},
        "366x369 neutral": {"count": 2, "size": [369, 366]},
    }
    assert shortcut_audit.swap_targets(geometry) == {
        "360x363 warm": "400x400 neutral",
        "400x400 neutral": "360x363 warm",
        "366x369 neutral": "360x363 warm",
    }


def test_a_class_is_single_site_when_other_sites_give_it_only_a_few_training_images():
    labels = [0] * 870 + [0] * 6 + [1] * 1009 + [1] * 214 + [1] * 6 + [2] * 10
    sites = ["bcn"] * 876 + ["bcn"] * 1009 + ["marrow"] * 214 + ["mun"] * 6 + ["mun"] * 10
    sites[870:876] = ["mun"] * 6
    counts = shortcut_audit.images_per_class_and_site(labels, sites, ["a", "b", "c", "d"])
    assert counts == {
        "a": {"bcn": 870, "marrow": 0, "mun": 6},
        "b": {"bcn": 1009, "marrow": 214, "mun": 6},
        "c": {"bcn": 0, "marrow": 0, "mun": 10},  # "d" has no image: not listed
    }
    assert shortcut_audit.single_site_classes(counts) == {"a": "bcn", "c": "mun"}


def test_audit_exposes_a_model_that_reads_the_background():
    train, train_labels = two_source_set(20, seed=0)
    test, test_labels = two_source_set(10, seed=1)
    encoded = [shortcut_audit.encode_png(i) for i in test]
    # Each class from one site in training; the test split has class "a" from both sites.
    train_sites = ["warm-lab" if label == 0 else "cool-lab" for label in train_labels]
    test_sites = ["warm-lab" if label == 0 else "cool-lab" for label in test_labels]
    test_sites[test_labels.index(0)] = "cool-lab"
    result = shortcut_audit.run_audit(
        iter(train), train_labels, train_sites, test, test_labels, test_sites, encoded, background_classifier,
        CLASSES, "b", 0.03, 0.97,
    )  # fmt: skip
    assert result["clean"]["accuracy"] == 1.0 and result["colour_baseline"]["accuracy"] == 1.0
    assert set(result["groups"]) == {"360x363 warm", "400x400 neutral"}
    assert result["groups"]["400x400 neutral"]["recall"] == {"b": 1.0}
    assert result["geometry"]["360x363 warm"]["swapped_to"] == "400x400 neutral"
    assert result["single_site_classes"] == {"a": "warm-lab", "b": "cool-lab"}
    assert result["sites"]["cool-lab"]["count"] == test_sites.count("cool-lab")
    assert result["sites"]["cool-lab"]["recall"]["b"] == 1.0 and "a" in result["sites"]["cool-lab"]["recall"]
    # Grayscale and one stain remove the background colour: the shortcut model collapses to one class.
    assert result["stress"]["grayscale"]["accuracy"] == 0.5 and not result["stress"]["grayscale"]["passes"]
    assert result["stress"]["stain_normalised"]["drop"] > 0.03
    # Each image in the other site's colours: the shortcut model calls every one the other class.
    assert result["stress"]["look_swapped"]["accuracy"] == 0.0
    # ... and raises the b alert for none of the b images, which it raised for all of in their own colours.
    assert result["clean"]["critical_alert_recall"] == 1.0 and result["sites"]["cool-lab"]["critical_alert_recall"] == 1.0
    assert result["stress"]["look_swapped"]["critical_alert_recall"] == 0.0
    # Each image in the other group's stains: the unstained background turns neutral, so all read as class b.
    assert result["stress"]["stain_swapped"]["recall"] == {"a": 0.0, "b": 1.0}
    assert not result["passes"]
