"""The CNN and its first layer: what the network sees does not depend on the stain's colour cast."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.audit.stress import grayscale
from components.training.model import LumaChromaStandardisation, build_model
from tests.conftest import CLASSES, real_files

SIZE = 64


def real_image(class_name: str) -> np.ndarray:
    """A real cell image, resized, as float [1, SIZE, SIZE, 3] in [0, 1]."""
    raw = tf.io.decode_jpeg(real_files(class_name, 1)[0].read_bytes(), channels=3)
    return tf.image.resize(raw[None], [SIZE, SIZE], method="area").numpy() / 255.0


def test_luminance_is_the_same_for_a_slide_and_its_grayscale_copy():
    colour = real_image("myeloblast")
    gray = grayscale(np.rint(colour[0] * 255).astype(np.uint8))[None] / 255.0
    layer = LumaChromaStandardisation()
    seen_colour, seen_gray = layer(colour.astype(np.float32)).numpy(), layer(gray.astype(np.float32)).numpy()
    np.testing.assert_allclose(seen_gray[..., 0], seen_colour[..., 0], atol=0.02)  # 8-bit rounding of the copy
    np.testing.assert_allclose(seen_gray[..., 1:], 0.0, atol=1e-3)  # no chroma in a grayscale image
    assert np.abs(seen_colour[..., 1:]).max() > 0.5  # the stain's chroma is kept for colour slides
    assert abs(seen_colour[..., 0].mean()) < 1e-4 and abs(seen_colour[..., 0].std() - 1) < 1e-2


def test_a_global_colour_cast_changes_nothing_and_contrast_not_the_luminance():
    image = real_image("basophil").astype(np.float32) * 0.85  # leaves room for the cast within [0, 1]
    layer = LumaChromaStandardisation()
    warmer = image + np.array([0.12, 0.05, 0.0], np.float32)  # a peach background cast, brighter
    np.testing.assert_allclose(layer(warmer).numpy(), layer(image).numpy(), atol=1e-3)
    flatter = image * 0.7  # lower contrast
    np.testing.assert_allclose(layer(flatter).numpy()[..., 0], layer(image).numpy()[..., 0], atol=1e-2)


def test_cnn_has_conv_batchnorm_pool_blocks_and_a_softmax_head():
    model = build_model(len(CLASSES), SIZE, [8, 16, 32], 16, 0.2, 1e-3)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == kinds.count("BatchNormalization") == kinds.count("MaxPooling2D") == 3
    assert kinds[1] == "LumaChromaStandardisation" and model.layers[-1].activation is keras.activations.softmax
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    probabilities = model(real_image("monocyte").astype(np.float32), training=False).numpy()
    assert probabilities.shape == (1, len(CLASSES)) and abs(probabilities.sum() - 1) < 1e-5
