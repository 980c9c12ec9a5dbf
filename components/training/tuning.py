"""The hyperparameter search space (from config) and how chosen values change the trainer config."""

from __future__ import annotations

import copy
from typing import Any

import keras_tuner

# Augmentation settings scaled by `augmentation_strength` (probabilities are capped at 1).
SCALED_AUGMENTATION = ("rotation", "zoom", "shift", "brightness", "contrast", "saturation", "hue", "grayscale")


def search_space(space: dict[str, Any]) -> keras_tuner.HyperParameters:
    """keras-tuner hyperparameters from `tuning.search_space`: `filters` and `image_size` are choices,
    `dropout` and `augmentation_strength` uniform ranges [lo, hi], `learning_rate` a log-uniform range."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("filters", [",".join(str(f) for f in widths) for widths in space["filters"]])
    hp.Choice("image_size", [int(v) for v in space["image_size"]])
    hp.Float("dropout", *space["dropout"])
    hp.Float("learning_rate", *space["learning_rate"], sampling="log")
    hp.Float("augmentation_strength", *space["augmentation_strength"])
    return hp


def with_hyperparameters(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the trainer config with the given hyperparameter values applied."""
    config = copy.deepcopy(config)
    training = config["training"]
    if "filters" in values:
        training["filters"] = [int(f) for f in str(values["filters"]).split(",")]
    for key in ("dropout", "learning_rate"):
        if key in values:
            training[key] = float(values[key])
    if "image_size" in values:
        config["image_size"] = int(values["image_size"])
    if "augmentation_strength" in values:
        strength = float(values["augmentation_strength"])
        augmentation = config["augmentation"]
        for key in SCALED_AUGMENTATION:
            augmentation[key] = augmentation[key] * strength
        augmentation["grayscale"] = min(1.0, augmentation["grayscale"])
    return config
