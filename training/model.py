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


class MixStyle(keras.layers.Layer):
    """Training only: with probability `p` per image, replaces the per-channel mean and spread of its
    feature maps by a random mix (Beta(alpha, alpha)) of its own and another image's of the batch (Zhou et
    al., "Domain generalization with MixStyle", ICLR 2021). With batches drawn across sites, a cell is seen
    in the feature statistics ("look") of other sites; at inference it is the identity."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.p, self.alpha = p, alpha

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training or not self.p:
            return x
        n = tf.shape(x)[0]
        mean, variance = tf.nn.moments(x, axes=[1, 2], keepdims=True)
        mean, std = tf.stop_gradient(mean), tf.stop_gradient(tf.sqrt(variance + 1e-6))
        normalised = (x - mean) / std
        g1 = tf.random.gamma([n, 1, 1, 1], self.alpha)
        g2 = tf.random.gamma([n, 1, 1, 1], self.alpha)
        mix = g1 / (g1 + g2 + 1e-12)
        other = tf.random.shuffle(tf.range(n))
        mixed_mean = mix * mean + (1 - mix) * tf.gather(mean, other)
        mixed_std = mix * std + (1 - mix) * tf.gather(std, other)
        apply = tf.random.uniform([n, 1, 1, 1]) < self.p
        return tf.where(apply, normalised * mixed_std + mixed_mean, x)

    def get_config(self) -> dict:
        return {**super().get_config(), "p": self.p, "alpha": self.alpha}


class LookConsistentModel(keras.Model):
    """A functional model trained on batches ((images, copies), labels), each copy its image in the colours of
    an image from another site. Loss: the cross-entropy on the images plus `consistency` x the KL divergence
    from their probabilities, held fixed, to the copies'. The copies' answers are pulled to the originals' and
    the originals are pulled nowhere (`augmentation.colour_transfer` instead trains on the copies as labelled
    images). Inference, evaluation and export see one batch of images, as for any model. Measured in
    docs/robustness.md."""

    def __init__(self, inputs: tf.Tensor, outputs: tf.Tensor, consistency: float, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self.consistency = consistency
        self.consistency_tracker = keras.metrics.Mean(name="consistency")

    def train_step(self, data: tuple) -> dict[str, tf.Tensor]:
        (images, copies), labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        n = tf.shape(images)[0]
        with tf.GradientTape() as tape:
            probabilities = self(tf.concat([images, copies], axis=0), training=True)
            own, copied = probabilities[:n], probabilities[n:]
            loss = self.compute_loss(images, labels, own, sample_weight)
            divergence = tf.reduce_mean(keras.losses.kl_divergence(tf.stop_gradient(own), copied))
            total = loss + self.consistency * divergence
        self.optimizer.minimize(total, self.trainable_variables, tape=tape)
        self.consistency_tracker.update_state(divergence)
        return self.compute_metrics(images, labels, own, sample_weight)


def build_model(
    num_classes: int,
    image_size: int,
    filters: list[int],
    dense_units: int,
    dropout: float,
    learning_rate: float,
    mixstyle: float = 0.0,
    look_consistency: float = 0.0,
) -> keras.Model:
    """A compiled classifier over float images in [0, 1] of shape [image_size, image_size, 3]; with
    `mixstyle` > 0, a MixStyle layer after each of the first two blocks (training only); with
    `look_consistency` > 0, a `LookConsistentModel` of that weight (trained on (images, copies) pairs)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = ChannelStandardisation(name="standardise")(inputs)
    for i, width in enumerate(filters):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        # Moving statistics over about one epoch of batches: the evaluated model does not depend on how
        # many grayscale or colour-jittered copies the last few batches held.
        x = keras.layers.BatchNormalization(momentum=0.99, name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        x = keras.layers.MaxPool2D(name=f"pool{i + 1}")(x)
        if mixstyle and i < 2:
            x = MixStyle(mixstyle, name=f"mixstyle{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    if look_consistency:
        model = LookConsistentModel(inputs, outputs, look_consistency, name="bloodcell_cnn")
    else:
        model = keras.Model(inputs, outputs, name="bloodcell_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model
