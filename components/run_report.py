"""RunReport: the run's figures in one place (summary JSON, classification report, plots)."""

import csv
import dataclasses
import io
import json
import os
from typing import Any

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from bloodcell import IngestionReport, ShortcutAuditReport
from bloodcell import RunSummary as RunSummaryArtifact
from components.evaluation import (
    ACCURACY,
    CRITICAL_RECALL,
    matrix_figures,
    read_confusion_matrix,
    read_metrics,
    read_site_figures,
)
from components.experiment_tracking import log_run
from components.model_card import render_model_card
from components.plots import confusion_matrix_png, training_curves_png
from components.serving_gate import read_gate
from components.summary_text import format_classification_report
from contracts.artifacts import (
    AUDIT_FILE,
    HISTORY_FILE,
    HOLDOUT,
    INGESTION_REPORT_FILE,
    MODEL_CARD_FILE,
    SUMMARY_FILE,
    TRAINED_OPERATING_POINT_FILE,
    read_json,
    write_json,
)
from contracts.run_summary import RunSummary

CLASSIFICATION_REPORT_FILE = "classification_report.txt"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TRAINING_CURVES_FILE = "training_curves.png"
TRIALS_FILE = "tuner_trials.csv"


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
    audit: dict[str, Any],
    operating_point: dict[str, float],
    sites: dict[str, dict[str, Any]],
    hold_out: dict[str, Any] | None,
) -> RunSummary:
    """The run's figures: test split overall, per class and per site; gate (out-of-scope cells too); push;
    audit; hold-out."""
    per_class = {name: {**metrics["per_class"][name], "support": sum(matrix[k])} for k, name in enumerate(classes)}
    audit_keys = (
        "clean", "colour_baseline", "morphology_gain", "groups", "sites", "train_sites_per_class", "single_site_classes",
        "stress", "bars", "passes",
    )  # fmt: skip
    return RunSummary(
        splits=ingestion["split_totals"],
        ingestion={k: ingestion[k] for k in ("found", "ingested", "duplicates", "rejected")},
        epochs_trained=len(history),
        test_accuracy=metrics[ACCURACY],
        critical_class=critical_class,
        critical_recall=metrics[CRITICAL_RECALL],
        per_class=per_class,
        confusion_matrix=matrix,
        sites=sites,
        hold_out=hold_out,
        blessed=gate["blessed"],
        gate_failures=gate["failures"],
        identical_to_served=gate["identical_to_served"],
        served_model=gate["served"],
        broken_served_versions=gate.get("broken_served_versions", []),
        out_of_scope=gate.get("out_of_scope"),
        pushed=pushed,
        pushed_destination=pushed_destination if pushed else "",
        pushed_version=os.path.basename(os.path.normpath(pushed_destination)) if pushed else "",
        operating_point=operating_point,
        audit={k: audit[k] for k in audit_keys},
    )


def hold_out_figures(
    evaluation_uri: str, hold_out: str, ingestion: dict[str, Any], classes: list[str], critical_class: str
) -> dict[str, Any]:
    """The held-out root or site, scored by TFMA: pooled and per site, and per-class recall of the classes
    that training still had (a class the model never saw cannot be recognised, so it is reported apart)."""
    counts = ingestion["counts"]
    trained = [c for c in classes if counts[c]["train"] > 0]
    matrix = read_confusion_matrix(evaluation_uri, len(classes))
    pooled = matrix_figures(matrix, classes, critical_class)
    critical = classes.index(critical_class)
    return {
        "name": hold_out,
        "trained_classes": trained,
        "untrained_classes": [c for c in classes if c not in trained and counts[c].get(HOLDOUT, 0)],
        "recall": {c: r for c, r in pooled["recall"].items() if c in trained},
        "called_critical": {c: matrix[k][critical] for k, c in enumerate(classes) if k != critical and sum(matrix[k])},
        "pooled": pooled,
        "sites": read_site_figures(evaluation_uri, classes, critical_class),
    }


def trials_csv(tuner_results_uri: str) -> str:
    """The Tuner's trials (tuner_results.json: one record per completed trial, best first) as CSV."""
    records = read_json(tuner_results_uri, "tuner_results.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in records for k in r)))
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _write(folder: str, name: str, text: str) -> None:
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(os.path.join(folder, name), "w") as f:
        f.write(text)


@component
def RunReport(  # noqa: N802 - TFX component names are classes
    ingestion_report: InputArtifact[IngestionReport],
    model_run: InputArtifact[standard_artifacts.ModelRun],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: InputArtifact[standard_artifacts.ModelBlessing],
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    audit: InputArtifact[ShortcutAuditReport],
    classes_json: Parameter[str],
    critical_class: Parameter[str],
    hold_out: Parameter[str],
    model_name: Parameter[str],
    settings_json: Parameter[str],
    tracking_uri: Parameter[str],
    experiment: Parameter[str],
    pipeline_run_id: Parameter[str],
    report: OutputArtifact[RunSummaryArtifact],
    tuner_results: InputArtifact[standard_artifacts.TunerResults] = None,
    hold_out_evaluation: InputArtifact[standard_artifacts.ModelEvaluation] = None,
):
    """Collects the figures of this run, draws the confusion matrix and training curves, writes the model
    card (also beside the pushed model, in assets.extra/) and logs the run to MLflow.

    `pipeline_run_id` is the orchestrator's run id (ML Metadata's pipeline_run context) when known."""
    classes = json.loads(classes_json)
    ingestion = read_json(ingestion_report.uri, INGESTION_REPORT_FILE)
    history = read_json(model_run.uri, HISTORY_FILE)
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
        read_json(audit.uri, AUDIT_FILE),
        read_json(model_run.uri, TRAINED_OPERATING_POINT_FILE),
        read_site_figures(evaluation.uri, classes, critical_class),
        None
        if hold_out_evaluation is None
        else hold_out_figures(hold_out_evaluation.uri, hold_out, ingestion, classes, critical_class),
    )
    _write(report.uri, CLASSIFICATION_REPORT_FILE, format_classification_report(summary.per_class, summary.test_accuracy))
    card = render_model_card(summary, model_name, pipeline_run_id)
    _write(report.uri, MODEL_CARD_FILE, card)
    if summary.pushed:
        _write(os.path.join(summary.pushed_destination, "assets.extra"), MODEL_CARD_FILE, card)
    if tuner_results is not None:
        _write(report.uri, TRIALS_FILE, trials_csv(tuner_results.uri))
    tf.io.gfile.copy(os.path.join(audit.uri, AUDIT_FILE), os.path.join(report.uri, AUDIT_FILE), overwrite=True)
    confusion_matrix_png(
        matrix,
        classes,
        os.path.join(report.uri, CONFUSION_MATRIX_FILE),
        f"test split, accuracy {summary.test_accuracy:.4f}",
    )
    training_curves_png(history, os.path.join(report.uri, TRAINING_CURVES_FILE))
    write_json(report.uri, SUMMARY_FILE, summary)
    tracking = log_run(
        tracking_uri,
        experiment,
        model_name,
        pipeline_run_id,
        json.loads(settings_json),
        summary,
        history,
        {"": report.uri, "ingestion": ingestion_report.uri},
    )
    write_json(report.uri, SUMMARY_FILE, dataclasses.replace(summary, tracking=tracking))
