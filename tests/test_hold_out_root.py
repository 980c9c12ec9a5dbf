"""benchmarks/hold_out_root.py: which held-out images are trained on with --onboard (training: e2e suite)."""

from __future__ import annotations

import tensorflow as tf

from benchmarks.hold_out_root import onboard, relpath
from contracts import features


def example(path: str, label: int) -> tf.train.Example:
    feature = {
        features.RELPATH: tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
        features.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def paths(examples: list[tf.train.Example]) -> list[str]:
    return [relpath(e) for e in examples]


HELD_OUT = [example(f"site/{name}/{i}.tiff", label) for label, name in enumerate(["a", "b"]) for i in (3, 1, 2)]
HELD_OUT.append(example("site/c/1.tiff", 2))  # a class with one image


def test_onboarding_trains_on_the_first_images_of_each_class_and_scores_the_rest():
    trained, scored = onboard(HELD_OUT, per_class=2)
    assert paths(trained) == ["site/a/1.tiff", "site/a/2.tiff", "site/b/1.tiff", "site/b/2.tiff", "site/c/1.tiff"]
    assert sorted(paths(scored)) == ["site/a/3.tiff", "site/b/3.tiff"]


def test_without_onboarding_every_held_out_image_is_scored():
    trained, scored = onboard(HELD_OUT, per_class=0)
    assert trained == [] and sorted(paths(scored)) == sorted(paths(HELD_OUT))
