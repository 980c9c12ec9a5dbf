"""Test-time views: the 8 symmetries of the square, and served probabilities that do not depend on how the
slide was turned."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts.signatures import SERVING_INPUT
from tests.helpers import CLASSES, CONFIG, TRAINER_CONFIG, real_files
from training.export import export_serving_model
from training.model import build_model
from training.test_time_views import averaged_probabilities, dihedral_views
from training.trainer_config import TrainerConfig

SIZE = CONFIG.preprocessing.image_size


def with_views(views: int) -> TrainerConfig:
    return dataclasses.replace(
        TRAINER_CONFIG, preprocessing=dataclasses.replace(TRAINER_CONFIG.preprocessing, test_time_views=views)
    )


def small_model():
    tf.keras.utils.set_random_seed(3)
    return build_model(len(CLASSES), SIZE, [8, 16], 16, 0.0, 1e-3)


def test_the_eight_views_are_distinct_symmetries_of_the_image():
    image = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])  # no symmetry of its own
    views = [v.numpy() for v in dihedral_views(image, 8)]
    assert len({v.tobytes() for v in views}) == 8
    for view in views:
        np.testing.assert_array_equal(np.sort(view.ravel()), np.arange(16))  # the same pixels, moved
    np.testing.assert_array_equal(views[0], image.numpy())
    np.testing.assert_array_equal(views[1], image.numpy()[:, :, ::-1])  # the mirror image
    assert len(dihedral_views(image, 2)) == 2
    for bad in (0, 9):
        with pytest.raises(ValueError, match="between 1 and 8"):
            dihedral_views(image, bad)


def test_averaged_probabilities_are_the_mean_over_the_views():
    model = small_model()
    images = tf.random.stateless_uniform([3, SIZE, SIZE, 3], seed=[4, 2])
    one = averaged_probabilities(model, images, 1).numpy()
    np.testing.assert_allclose(one, model(images, training=False).numpy(), atol=1e-6)
    four = averaged_probabilities(model, images, 4).numpy()
    expected = np.mean([model(v, training=False).numpy() for v in dihedral_views(images, 4)], axis=0)
    np.testing.assert_allclose(four, expected, atol=1e-6)
    np.testing.assert_allclose(four.sum(axis=1), 1.0, atol=1e-5)


def test_served_prediction_is_the_same_for_a_turned_or_mirrored_slide(tmp_path):
    export_serving_model(small_model(), with_views(8), str(tmp_path / "model"))
    served = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    cell = Image.open(real_files("myeloblast", 1)[0]).convert("RGB")  # 400 x 400
    moves = (Image.Transpose.ROTATE_90, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.TRANSPOSE)
    turned = [cell] + [cell.transpose(move) for move in moves]
    encoded = []
    for image in turned:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless: the same pixels, moved
        encoded.append(buffer.getvalue())
    probabilities = served(**{SERVING_INPUT: tf.constant(encoded)})["probabilities"].numpy()
    for row in probabilities[1:]:
        np.testing.assert_allclose(row, probabilities[0], atol=1e-5)
