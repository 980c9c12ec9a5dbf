"""The pipeline's view of the config: what the Trainer gets and the per-run settings (values on a local
run, runtime parameters on Kubeflow)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from components.experiment_tracking import default_tracking_uri
from contracts.config import Config
from contracts.data_roots import roots_to_json
from training.trainer_config import TrainerConfig


def trainer_config(config: Config) -> TrainerConfig:
    """What the trainer module needs from the config (the Trainer's custom_config)."""
    return TrainerConfig(
        classes=config.classes,
        critical_class=config.critical_class,
        preprocessing=config.preprocessing,
        augmentation=config.augmentation,
        training=config.training,
        screening=config.screening,
        tuning=config.tuning,
        min_side=config.ingestion.min_side,
        max_request_images=config.serving.max_request_images,
        max_image_pixels=config.serving.max_image_pixels,
        max_request_pixels=config.serving.max_request_pixels,
    )


def serving_dir(config: Config) -> str:
    """Where TF Serving finds the model's versions: <serving_root>/<model_name>."""
    return os.path.join(config.paths.serving_root, config.model_name)


def tracking_uri(config: Config) -> str:
    """Where runs are tracked: `tracking.uri`, or the SQLite store under the output root."""
    return config.tracking.uri or default_tracking_uri(config.paths.output_root)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What users change per run: values on a local run; on Kubeflow, runtime parameters with these defaults
    (the dashboard's run form)."""

    data_roots: Any  # JSON list of {path, site}
    trainer_config: Any  # dict (local) or its JSON (Kubeflow)
    min_accuracy: Any
    min_critical_recall: Any
    max_regression: Any
    site_bars: Any  # JSON {site: {min_accuracy, min_critical_recall}}: the sites with bars of their own
    out_of_scope_bars: Any  # JSON of OutOfScopeBars: per site, on cells that are none of the classes


def run_settings(config: Config) -> RunSettings:
    """The run's settings from the config, as values."""
    evaluation = config.evaluation
    return RunSettings(
        data_roots=roots_to_json(config.paths.data_roots),
        trainer_config=trainer_config(config).as_dict(),
        min_accuracy=float(evaluation.min_accuracy),
        min_critical_recall=float(evaluation.min_critical_recall),
        max_regression=float(evaluation.max_regression),
        site_bars=json.dumps(evaluation.site_bars, sort_keys=True),
        out_of_scope_bars=json.dumps(dataclasses.asdict(evaluation.out_of_scope_bars())),
    )
