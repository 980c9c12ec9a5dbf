"""Test-time views: class probabilities averaged over the image's rotations by 90 degrees and mirror images.

A cell on a slide has no up, down, left or right, so each of these views is as valid as the original. The
average is steadier than one view: a slide's stain and orientation sway it less. With all 8 views the
prediction is the same for an image and any rotation or mirror image of it. Shared by the served model and
the operating-point fit, so the threshold is chosen on the probabilities that are served.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

VIEWS = 8  # the symmetries of a square


def dihedral_views(images: tf.Tensor, count: int) -> list[tf.Tensor]:
    """The first `count` of the 8 symmetries of the square applied to a batch [N, H, W, C]: the image, its
    mirror image, then the rotations by 90, 180 and 270 degrees, each followed by its mirror image."""
    if not 1 <= count <= VIEWS:
        raise ValueError(f"test-time views: count must be between 1 and {VIEWS}, got {count}")
    views = []
    for quarter_turns in range(4):
        rotated = tf.image.rot90(images, quarter_turns)
        views += [rotated, tf.image.flip_left_right(rotated)]
    return views[:count]


def averaged_probabilities(model: keras.Model, images: tf.Tensor, count: int) -> tf.Tensor:
    """The model's class probabilities [N, classes], averaged over `count` views of each image (one batch
    through the model)."""
    n = tf.shape(images)[0]
    probabilities = model(tf.concat(dihedral_views(images, count), axis=0), training=False)
    return tf.reduce_mean(tf.reshape(probabilities, [count, n, -1]), axis=0)
