"""The shape of a run's summary (summary.json in the RunSummary artifact): what the report writes and the
run history, the model card, the CLI and MLflow read."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

Figures = dict[str, Any]  # matrix_figures: count, accuracy, critical_recall, recall per class, confusion_matrix


@dataclasses.dataclass(frozen=True)
class RunSummary:
    splits: dict[str, int]  # images per split (train, eval, test[, holdout])
    ingestion: dict[str, int]  # found, ingested, duplicates, rejected
    epochs_trained: int
    test_accuracy: float
    critical_class: str
    critical_recall: float
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support (test split)
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted (test split)
    sites: dict[str, Figures]  # site -> figures on its test images
    blessed: bool
    gate_failures: list[str]
    identical_to_served: bool
    served_model: Optional[dict[str, Any]]  # the served version's figures on this test split, if one is served
    pushed: bool
    pushed_destination: str
    pushed_version: str
    operating_point: dict[str, float]  # temperature, threshold, review_confidence, recall, precision, ECE
    audit: dict[str, Any]  # the shortcut audit (contracts.artifacts.AUDIT_FILE), its summary keys
    hold_out: Optional[dict[str, Any]] = None  # held-out root or site: name, recall per trained class, pooled, sites
    broken_served_versions: list[dict[str, str]] = dataclasses.field(default_factory=list)
    tracking: dict[str, str] = dataclasses.field(default_factory=dict)  # MLflow: uri, run_id, registered_version | error
    out_of_scope: Optional[dict[str, Any]] = None  # cells none of the classes (OutOfScopeReport.as_dict), if trained

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSummary:
        """From summary.json; keys of other versions are ignored, missing optional ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})
