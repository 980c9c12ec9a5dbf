"""The CNN: conv + batch-norm + max-pool blocks, a dense head and a softmax over the classes."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class LumaChromaStandardisation(keras.layers.Layer):
    """Per image: RGB -> luminance + two chroma channels (YUV), each minus its mean, over its spread.

    Removes the global colour cast and brightness of a scanner or stain (peach versus blue-white
    backgrounds). The luminance channel is the same for a slide and its grayscale copy, so what the
    network learns from it carries over to grayscale or differently stained input; a grayscale image has
    zero chroma. The epsilon keeps the chroma noise of near-gray images from being amplified.
    """

    def call(self, images: tf.Tensor) -> tf.Tensor:
        yuv = tf.image.rgb_to_yuv(images)
        mean, variance = tf.nn.moments(yuv, axes=[1, 2], keepdims=True)
        return (yuv - mean) / tf.sqrt(variance + 1e-4)


def build_model(
    num_classes: int,
    image_size: int,
    filters: list[int],
    dense_units: int,
    dropout: float,
    learning_rate: float,
) -> keras.Model:
    """A compiled classifier over float images in [0, 1] of shape [image_size, image_size, 3]."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = LumaChromaStandardisation(name="standardise")(inputs)
    for i, width in enumerate(filters):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        x = keras.layers.MaxPool2D(name=f"pool{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="bloodcell_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model
