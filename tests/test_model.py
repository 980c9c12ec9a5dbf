"""The CNN and its first layer: what the network sees does not depend on the stain's colour cast."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.audit.stress import grayscale
from tests.helpers import CLASSES, real_files
from training.model import ChannelStandardisation, build_model

SIZE = 64


def real_image(class_name: str) -> np.ndarray:
    """A real cell image, resized, as float [1, SIZE, SIZE, 3] in [0, 1]."""
    raw = tf.io.decode_jpeg(real_files(class_name, 1)[0].read_bytes(), channels=3)
    return tf.image.resize(raw[None], [SIZE, SIZE], method="area").numpy() / 255.0


def test_a_colour_cast_brightness_and_contrast_change_nothing():
    image = real_image("basophil").astype(np.float32) * 0.85  # leaves room for the cast within [0, 1]
    layer = ChannelStandardisation()
    warmer = image + np.array([0.12, 0.05, 0.0], np.float32)  # a peach background cast, brighter
    np.testing.assert_allclose(layer(warmer).numpy(), layer(image).numpy(), atol=1e-3)
    flatter = image * 0.9  # lower contrast
    np.testing.assert_allclose(layer(flatter).numpy(), layer(image).numpy(), atol=2e-2)  # up to the epsilon
    seen = layer(image).numpy()
    np.testing.assert_allclose(seen.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(seen.std(axis=(1, 2)), 1.0, atol=2e-2)


def test_a_grayscale_slide_is_seen_as_three_equal_channels():
    colour = np.rint(real_image("myeloblast")[0] * 255).astype(np.uint8)
    seen = ChannelStandardisation()(grayscale(colour)[None].astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(seen[..., 0], seen[..., 1], atol=1e-5)
    np.testing.assert_allclose(seen[..., 0], seen[..., 2], atol=1e-5)


def test_cnn_has_conv_batchnorm_pool_blocks_and_a_softmax_head():
    model = build_model(len(CLASSES), SIZE, [8, 16, 32], 16, 0.2, 1e-3)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == kinds.count("BatchNormalization") == kinds.count("MaxPooling2D") == 3
    assert kinds[1] == "ChannelStandardisation" and model.layers[-1].activation is keras.activations.softmax
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    probabilities = model(real_image("monocyte").astype(np.float32), training=False).numpy()
    assert probabilities.shape == (1, len(CLASSES)) and abs(probabilities.sum() - 1) < 1e-5


def test_mixstyle_mixes_feature_statistics_in_training_only():
    model = build_model(len(CLASSES), SIZE, [8, 16, 32], 16, 0.0, 1e-3, mixstyle=1.0)
    assert [layer.name for layer in model.layers if layer.name.startswith("mixstyle")] == ["mixstyle1", "mixstyle2"]
    images = np.random.default_rng(0).uniform(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(images, training=False), model(images, training=False))
    layer = model.get_layer("mixstyle1")
    features = tf.constant((np.random.default_rng(1).normal(size=(6, 5, 5, 4)) * [1, 2, 3, 4]).astype(np.float32))
    mixed = layer(features, training=True).numpy()
    assert not np.allclose(mixed, features.numpy())
    np.testing.assert_array_equal(layer(features, training=False), features)
    # Each image keeps its own normalised pattern: only the per-channel mean and spread change.
    for before, after in zip(features.numpy(), mixed, strict=True):
        z = (before - before.mean((0, 1))) / before.std((0, 1))
        np.testing.assert_allclose((after - after.mean((0, 1))) / after.std((0, 1)), z, atol=1e-3)



def test_look_consistency_pulls_the_answers_on_the_copies_to_the_originals():
    """Trained on (images, copies) pairs, the copies' answers come to agree with the originals' as the
    weight of the consistency loss grows; only the originals carry labels."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 64)
    images = rng.uniform(0.3, 0.5, (64, 16, 16, 3)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        image[3 : 5 + 2 * label, 3 : 5 + 2 * label] = 0.95  # the class: the size of a bright spot
    copies = 1.0 - images[..., ::-1]  # another look: colours reversed and inverted

    def divergence_after_training(weight: float) -> float:
        keras.utils.set_random_seed(1)
        model = build_model(len(CLASSES), 16, [8, 16], 16, 0.0, 1e-2, look_consistency=weight)
        history = model.fit((images, copies), labels, batch_size=16, epochs=15, verbose=0).history
        assert history["consistency"][-1] >= 0.0 and history["loss"][-1] < 1.0  # the originals are learnt
        own, copied = model.predict(images, verbose=0), model.predict(copies, verbose=0)
        return float(np.mean(keras.losses.kl_divergence(own, copied)))

    assert divergence_after_training(1.0) < 0.2 * divergence_after_training(0.01)
