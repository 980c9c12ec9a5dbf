"""The CNN: conv + batch-norm + max-pool blocks, a dense head and a softmax over the classes."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class ChannelStandardisation(keras.layers.Layer):
    """Per image and per channel: subtract the mean, divide by the spread.

    Removes the global colour cast and brightness of a scanner or stain (peach versus blue-white
    backgrounds) while keeping where each stain sits inside the image."""

    def call(self, images: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(images, axes=[1, 2], keepdims=True)
        return (images - mean) / tf.sqrt(variance + 1e-4)


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
    x = ChannelStandardisation(name="standardise")(inputs)
    for i, width in enumerate(filters):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        # Moving statistics over about one epoch of batches: the evaluated model does not depend on how
        # many grayscale or colour-jittered copies the last few batches held.
        x = keras.layers.BatchNormalization(momentum=0.99, name=f"bn{i + 1}")(x)
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
