"""The Trainer's settings, typed: what the training layer reads. It crosses into TFX as the Trainer's
`custom_config` (a dict; JSON in the Kubeflow runtime parameter) and nowhere else as a dict."""

from __future__ import annotations

import dataclasses
from typing import Any

from contracts.config import Augmentation, Preprocessing, Screening, Training, Tuning, from_dict


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    classes: list[str]
    critical_class: str
    preprocessing: Preprocessing
    augmentation: Augmentation
    training: Training
    screening: Screening
    tuning: Tuning
    min_side: int  # served images: the smallest side accepted (ingestion.min_side)
    max_request_images: int  # served requests: caps the signature enforces (serving section)
    max_image_pixels: int
    max_request_pixels: int

    @property
    def critical_index(self) -> int:
        return self.classes.index(self.critical_class)

    def as_dict(self) -> dict[str, Any]:
        """The `custom_config` form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainerConfig:
        """From the Trainer's `custom_config`; ConfigError names a wrong field."""
        return from_dict(cls, raw)
