"""Adapting the CNN to a site's look from its unlabelled images: the batch-norm statistics of the first blocks
re-estimated on the site's images (AdaBN, Li et al. 2016), optionally balanced over groups of images (the
model's own predicted classes) so that the site's class mix does not move them, only its look."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from training.trainer_config import TrainerConfig
from training.trainer_module import configured_model

BATCH = 64


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The model's batch-norm layers, first block first."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def restored_model(export_dir: str, config: TrainerConfig) -> keras.Model:
    """The Keras model inside an exported serving model (`export_serving_model`), weights and batch-norm
    statistics included, rebuilt from the config it was trained with."""
    model = configured_model(config)
    checkpoint = tf.train.Checkpoint(model=model)
    checkpoint.read(os.path.join(export_dir, "variables", "variables")).expect_partial()
    return model


def _group_moments(inputs: keras.Model, images: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the per-channel mean and mean square of the layer input, each image weighing the same."""
    batches = (inputs(images[i : i + BATCH], training=False).numpy() for i in range(0, len(images), BATCH))
    moments = [(x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2))) for x in batches]  # [batch, channels] each
    means, squares = (np.concatenate(parts) for parts in zip(*moments, strict=True))
    members = [groups == g for g in range(groups.max() + 1)]
    return np.stack([means[m].mean(axis=0) for m in members]), np.stack([squares[m].mean(axis=0) for m in members])


def adapted_to_site(model: keras.Model, images: np.ndarray, blocks: int, balance_by: np.ndarray | None = None) -> keras.Model:
    """A copy of `model` whose first `blocks` batch-norm layers hold the statistics of their inputs over the
    site's `images` (preprocessed, [N, size, size, 3]), block by block (each block sees the blocks before it
    adapted). With `balance_by` (one group per image, e.g. the base model's predicted class) every group weighs
    the same in the statistics. The other layers, and `model`, are unchanged."""
    adapted = keras.models.clone_model(model)
    adapted.set_weights(model.get_weights())
    groups = np.zeros(len(images), int) if balance_by is None else np.unique(balance_by, return_inverse=True)[1]
    for layer in batch_norm_layers(adapted)[:blocks]:
        means, squares = _group_moments(keras.Model(adapted.inputs, layer.input), images, groups)
        mean = means.mean(axis=0)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(np.maximum(squares.mean(axis=0) - mean**2, 0.0))
    return adapted
