"""RunReport: the run's figures in one place (summary JSON, classification report, plots)."""

import json
import os
from typing import Any

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, standard_artifacts

from components.evaluation import ACCURACY, CRITICAL_RECALL, read_confusion_matrix, read_metrics
from components.image_example_gen import REPORT_FILE, IngestionReport
from components.plots import confusion_matrix_png, training_curves_png
from components.serving_gate import read_gate
from components.summary_text import format_classification_report
from components.training.trainer_module import HISTORY_FILE

SUMMARY_FILE = "summary.json"
CLASSIFICATION_REPORT_FILE = "classification_report.txt"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TRAINING_CURVES_FILE = "training_curves.png"


class RunSummary(artifact.Artifact):
    """A run's summary.json, classification report, confusion matrix and training curves."""

    TYPE_NAME = "bloodcell.RunSummary"


def build_summary(
    ingestion: dict[str, Any],
    metrics: dict[str, Any],
    matrix: list[list[int]],
    gate: dict[str, Any],
    history: list[dict[str, float]],
    pushed: bool,
    pushed_destination: str,
    classes: list[str],
    critical_class: str,
) -> dict[str, Any]:
    per_class = {name: {**metrics["per_class"][name], "support": sum(matrix[k])} for k, name in enumerate(classes)}
    return {
        "splits": ingestion["split_totals"],
        "ingestion": {k: ingestion[k] for k in ("found", "ingested", "duplicates", "rejected")},
        "epochs_trained": len(history),
        "test_accuracy": metrics[ACCURACY],
        "critical_class": critical_class,
        "critical_recall": metrics[CRITICAL_RECALL],
        "per_class": per_class,
        "confusion_matrix": matrix,
        "blessed": gate["blessed"],
        "gate_failures": gate["failures"],
        "identical_to_served": gate["identical_to_served"],
        "served_model": gate["served"],
        "pushed": pushed,
        "pushed_destination": pushed_destination if pushed else "",
    }


@component
def RunReport(  # noqa: N802 - TFX component names are classes
    ingestion_report: InputArtifact[IngestionReport],
    model_run: InputArtifact[standard_artifacts.ModelRun],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: InputArtifact[standard_artifacts.ModelBlessing],
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    classes_json: Parameter[str],
    critical_class: Parameter[str],
    report: OutputArtifact[RunSummary],
):
    """Collects the figures of this run and draws the confusion matrix and training curves."""
    classes = json.loads(classes_json)
    with tf.io.gfile.GFile(os.path.join(ingestion_report.uri, REPORT_FILE)) as f:
        ingestion = json.load(f)
    with tf.io.gfile.GFile(os.path.join(model_run.uri, HISTORY_FILE)) as f:
        history = json.load(f)
    matrix = read_confusion_matrix(evaluation.uri, len(classes))
    summary = build_summary(
        ingestion,
        read_metrics(evaluation.uri, classes),
        matrix,
        read_gate(blessing.uri),
        history,
        bool(pushed_model.get_int_custom_property("pushed")),
        pushed_model.get_string_custom_property("pushed_destination"),
        classes,
        critical_class,
    )
    tf.io.gfile.makedirs(report.uri)
    with tf.io.gfile.GFile(os.path.join(report.uri, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=1)
    with tf.io.gfile.GFile(os.path.join(report.uri, CLASSIFICATION_REPORT_FILE), "w") as f:
        f.write(format_classification_report(summary["per_class"], summary["test_accuracy"]))
    confusion_matrix_png(
        matrix,
        classes,
        os.path.join(report.uri, CONFUSION_MATRIX_FILE),
        f"test split, accuracy {summary['test_accuracy']:.4f}",
    )
    training_curves_png(history, os.path.join(report.uri, TRAINING_CURVES_FILE))
