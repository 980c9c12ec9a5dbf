"""Artifact layouts: the files inside each artifact, the split folders of the tf.Examples, the version
folders TF Serving polls, and one way to read and write the JSON files among them (local paths or gs://)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

# Examples (ImageExampleGen): one folder per split, TFX's layout.
SPLITS = ("train", "eval", "test")
HOLDOUT = "holdout"  # every image of a held-out root or site: scored, never trained on
OUT_OF_SCOPE_PREFIX = "out_of_scope_"  # the images of out-of-scope roots: a split of their own beside each split

# Files inside the pipeline's artifacts.
INGESTION_REPORT_FILE = "ingestion_report.json"  # IngestionReport
HISTORY_FILE = "history.json"  # ModelRun: per-epoch metrics
TRAINED_OPERATING_POINT_FILE = "operating_point.json"  # ModelRun: the calibrated operating point
AUDIT_FILE = "audit.json"  # ShortcutAuditReport
GATE_FILE = "gate.json"  # ModelBlessing: the ServingGate's decision and why
SUMMARY_FILE = "summary.json"  # RunSummary: contracts.run_summary.RunSummary
SERVING_FORMAT = "Format-Serving"  # Model: the SavedModel's folder inside the Trainer's artifact
# Inside an exported SavedModel, beside saved_model.pb: what clients read without loading the model.
EXPORTED_OPERATING_POINT_FILE = "assets.extra/operating_point.json"
EXPORTED_TRAINER_CONFIG_FILE = "assets.extra/trainer_config.json"  # what the model was built with (adaptation)
ADAPTATION_FILE = "assets.extra/adaptation.json"  # a site-adapted model: contracts.site_models.AdaptationRecord
MODEL_CARD_FILE = "model_card.md"


def split_folder(examples_uri: str, split: str) -> str:
    """Where one split's tf.Examples are (TFX's `Split-<name>` layout)."""
    return os.path.join(examples_uri, f"Split-{split}")


def out_of_scope_split(split: str) -> str:
    """The split that holds the out-of-scope images beside `split` (e.g. `out_of_scope_test`)."""
    return OUT_OF_SCOPE_PREFIX + split


def example_files(examples_uri: str, split: str) -> list[str]:
    """The gzipped tf.Example files of one split."""
    folder = split_folder(examples_uri, split)
    files = sorted(tf.io.gfile.glob(os.path.join(folder, "*.gz")))
    if not files:
        raise FileNotFoundError(f"no tf.Example files (*.gz) in {folder}: not an ImageExampleGen output")
    return files


def served_versions(model_base_path: str) -> list[int]:
    """Version numbers under a model base path that hold a SavedModel (TF Serving's layout:
    <model_base_path>/<integer version>/saved_model.pb), ascending."""
    if not tf.io.gfile.isdir(model_base_path):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(model_base_path)]
    return sorted(
        int(n) for n in names if n.isdigit() and tf.io.gfile.exists(os.path.join(model_base_path, n, "saved_model.pb"))
    )


def read_json(folder: str, name: str) -> Any:
    """A JSON file inside an artifact folder."""
    with tf.io.gfile.GFile(os.path.join(folder, name)) as f:
        return json.load(f)


def write_json(folder: str, name: str, value: Any) -> None:
    """Writes a JSON file inside an artifact folder (dataclasses as their fields), creating folders."""
    path = os.path.join(folder, name)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(value, indent=1, default=_as_json))


def _as_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
