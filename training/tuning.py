"""The hyperparameter search space (from config) and how chosen values change the trainer config."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras_tuner

from training.trainer_config import TrainerConfig

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


def with_hyperparameters(config: TrainerConfig, values: dict[str, Any]) -> TrainerConfig:
    """The trainer config with the given hyperparameter values applied."""
    training, augmentation, preprocessing = config.training, config.augmentation, config.preprocessing
    if "filters" in values:
        training = dataclasses.replace(training, filters=[int(f) for f in str(values["filters"]).split(",")])
    for key in ("dropout", "learning_rate"):
        if key in values:
            training = dataclasses.replace(training, **{key: float(values[key])})
    if "image_size" in values:
        preprocessing = dataclasses.replace(preprocessing, image_size=int(values["image_size"]))
    if "augmentation_strength" in values:
        strength = float(values["augmentation_strength"])
        scaled = {key: getattr(augmentation, key) * strength for key in SCALED_AUGMENTATION}
        scaled["grayscale"] = min(1.0, scaled["grayscale"])
        augmentation = dataclasses.replace(augmentation, **scaled)
    return dataclasses.replace(config, training=training, augmentation=augmentation, preprocessing=preprocessing)
