"""Adapting the CNN to a site's look from its unlabelled images. The batch-norm statistics of the first blocks
are re-estimated on the site's images (AdaBN, Li et al. 2016), balanced over the model's own predicted classes
so that the site's class mix does not move them, only its look; optionally the batch-norm scales and shifts of
those blocks are then tuned to lower the entropy of the answers (TENT, Wang et al. 2021). Besides: how far a
site is from the training sites (drift)."""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow as tf
import tf_keras as keras

from contracts.artifacts import EXPORTED_TRAINER_CONFIG_FILE, read_json
from training.trainer_config import TrainerConfig
from training.trainer_module import configured_model

BATCH = 64


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The model's batch-norm layers, first block first."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def exported_config(export_dir: str) -> TrainerConfig:
    """The trainer config an exported model was trained with (written beside it by `export_serving_model`)."""
    return TrainerConfig.from_dict(read_json(export_dir, EXPORTED_TRAINER_CONFIG_FILE))


def restored_model(export_dir: str, config: TrainerConfig) -> keras.Model:
    """The Keras model inside an exported serving model (`export_serving_model`), weights and batch-norm
    statistics included, rebuilt from the config it was trained with; its outputs (the classes and any
    out-of-scope cell types) as many as the exported head has."""
    checkpoint_prefix = os.path.join(export_dir, "variables", "variables")
    kernels = {
        int(found.group(1)): shape
        for name, shape in tf.train.list_variables(checkpoint_prefix)
        if (found := re.fullmatch(r"model/layer_with_weights-(\d+)/kernel/\.ATTRIBUTES/VARIABLE_VALUE", name))
    }
    model = configured_model(config, kernels[max(kernels)][-1])  # the last layer with weights: the head
    tf.train.Checkpoint(model=model).read(checkpoint_prefix).expect_partial()
    return model


def _layer_inputs(model: keras.Model, layers: list[keras.layers.Layer], images: np.ndarray) -> list[np.ndarray]:
    """Per layer: the per-image, per-channel mean and mean square of its input, [2, N, channels]."""
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    parts: list[list[np.ndarray]] = [[] for _ in layers]
    for i in range(0, len(images), BATCH):
        outputs = probe(images[i : i + BATCH], training=False)
        for part, x in zip(parts, outputs if len(layers) > 1 else [outputs], strict=True):
            x = x.numpy()
            part.append(np.stack([x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2))]))
    return [np.concatenate(part, axis=1) for part in parts]


def adapted_to_site(model: keras.Model, images: np.ndarray, blocks: int, balance_by: np.ndarray | None = None) -> keras.Model:
    """A copy of `model` whose first `blocks` batch-norm layers hold the statistics of their inputs over the
    site's `images` (preprocessed, [N, size, size, 3]), block by block (each block sees the blocks before it
    adapted). With `balance_by` (one group per image, e.g. the base model's predicted class) every group weighs
    the same in the statistics. The other layers, and `model`, are unchanged."""
    adapted = keras.models.clone_model(model)
    adapted.set_weights(model.get_weights())
    groups = np.zeros(len(images), int) if balance_by is None else np.unique(balance_by, return_inverse=True)[1]
    members = [groups == g for g in range(groups.max() + 1)]
    for layer in batch_norm_layers(adapted)[:blocks]:
        (moments,) = _layer_inputs(adapted, [layer], images)
        mean, square = (np.stack([m[member].mean(axis=0) for member in members]).mean(axis=0) for m in moments)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(np.maximum(square - mean**2, 0.0))
    return adapted


def entropy_tuned(
    model: keras.Model, images: np.ndarray, blocks: int, steps: int, learning_rate: float, seed: int = 0
) -> keras.Model:
    """TENT: a copy of `model` whose first `blocks` batch-norm scales and shifts are tuned for `steps` batches of
    the site's `images` to lower the mean entropy of the answers, those blocks normalising each batch by its own
    statistics (dropout off); everything else, and `model`, unchanged. The moving statistics are left as they
    were: set them after (`adapted_to_site`)."""
    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    adapted = batch_norm_layers(tuned)[:blocks]
    variables = [v for layer in adapted for v in (layer.gamma, layer.beta)]
    optimizer = keras.optimizers.Adam(learning_rate)
    rng = np.random.default_rng(seed)

    @tf.function
    def step(batch: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            x = batch
            for layer in tuned.layers[1:]:
                x = layer(x, training=False) if layer not in adapted else layer(x, training=True)
            entropy = -tf.reduce_mean(tf.reduce_sum(x * tf.math.log(x + 1e-12), axis=-1))
        optimizer.apply_gradients(zip(tape.gradient(entropy, variables), variables, strict=True))
        return entropy

    for _ in range(steps):
        step(tf.constant(images[rng.choice(len(images), min(BATCH, len(images)), replace=False)]))
    for layer, original in zip(adapted, batch_norm_layers(model), strict=False):
        layer.moving_mean.assign(original.moving_mean)
        layer.moving_variance.assign(original.moving_variance)
    return tuned


def drift(model: keras.Model, images: np.ndarray) -> list[float]:
    """Per batch-norm layer, how far the site's images are from the statistics the model was trained with: the
    mean over channels of |site mean - trained mean| / trained spread + |log(site spread / trained spread)|
    of the layer's input (0: the same; 1: a shift of one spread, or e times the spread)."""
    layers = batch_norm_layers(model)
    figures = []
    for layer, (means, squares) in zip(layers, _layer_inputs(model, layers, images), strict=True):
        trained_mean, trained_spread = layer.moving_mean.numpy(), np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
        mean = means.mean(axis=0)
        spread = np.sqrt(np.maximum(squares.mean(axis=0) - mean**2, 0.0) + layer.epsilon)
        shift = np.abs(mean - trained_mean) / trained_spread + np.abs(np.log(spread / trained_spread))
        figures.append(float(np.mean(shift)))
    return figures
