"""Class x site balanced sampling of the training images: no class is learnt from the look of one site
just because that site sent most of its images."""

from __future__ import annotations

from collections import Counter

import numpy as np
import tensorflow as tf


def group_weights(labels: np.ndarray, sites: np.ndarray, site_power: float) -> dict[tuple[int, str], float]:
    """Sampling probability of each (class, site) group: every class equally often; within a class, each
    site in proportion to (its image count) ** site_power (0: sites equally often, 1: as found)."""
    counts = Counter(zip(labels.tolist(), sites.tolist(), strict=True))
    classes = sorted({label for label, _ in counts})
    weights = {}
    for label in classes:
        groups = {key: n**site_power for key, n in counts.items() if key[0] == label}
        total = sum(groups.values())
        weights.update({key: w / total / len(classes) for key, w in groups.items()})
    return weights


def balanced_dataset(
    images: np.ndarray, labels: np.ndarray, sites: np.ndarray, site_power: float, seed: int
) -> tf.data.Dataset:
    """An endless, shuffled stream of (image, label, site) drawn per `group_weights`."""
    weights = group_weights(labels, sites, site_power)
    streams = []
    for k, (label, site) in enumerate(weights):
        members = np.flatnonzero((labels == label) & (sites == site))
        stream = tf.data.Dataset.from_tensor_slices((images[members], labels[members], sites[members]))
        streams.append(stream.shuffle(len(members), seed=seed + k, reshuffle_each_iteration=True).repeat())
    return tf.data.Dataset.sample_from_datasets(streams, weights=list(weights.values()), seed=seed)
