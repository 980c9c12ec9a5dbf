"""TFMA evaluation config, and readers for what the Evaluator wrote."""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf
import tensorflow_model_analysis as tfma

from contracts import features
from contracts.signatures import EXAMPLES_SIGNATURE, PREDICTED_ONE_HOT, PROBABILITIES

ACCURACY = "accuracy"
EXAMPLE_COUNT = "example_count"  # TFMA's name of its ExampleCount metric: the test images the Evaluator scored
CRITICAL_RECALL = "critical_recall"
PER_CLASS = ("precision", "recall", "f1")
# TFMA output names (signature outputs): probabilities for accuracy and the confusion matrix; the argmax
# one-hot vector for per-class precision/recall/F1, so that a class counts as predicted only as the argmax.
SCORES, DECISIONS = PROBABILITIES, PREDICTED_ONE_HOT


def build_eval_config(classes: list[str], critical_class: str) -> tfma.EvalConfig:
    """Accuracy, per-class precision/recall/F1 of the argmax decision, the critical class's recall and the
    confusion matrix, overall, per site and per site x class. The bars are applied by the ServingGate, which
    also compares with the served model."""
    spec = tfma.ModelSpec(
        name="candidate", signature_name=EXAMPLES_SIGNATURE, label_keys={SCORES: features.LABEL, DECISIONS: features.LABEL}
    )
    scores = tfma.MetricsSpec(
        output_names=[SCORES],
        metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="SparseCategoricalAccuracy", config=f'"name": "{ACCURACY}"'),
            tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        ],
    )
    per_class = tfma.MetricsSpec(
        output_names=[DECISIONS],
        binarize=tfma.BinarizationOptions(class_ids={"values": list(range(len(classes)))}),
        metrics=[
            tfma.MetricConfig(class_name=kind, config=f'"name": "{name}"')
            for kind, name in zip(("Precision", "Recall", "F1Score"), PER_CLASS, strict=False)
        ],
    )
    critical = tfma.MetricsSpec(
        output_names=[DECISIONS],
        binarize=tfma.BinarizationOptions(class_ids={"values": [classes.index(critical_class)]}),
        metrics=[tfma.MetricConfig(class_name="Recall", config=f'"name": "{CRITICAL_RECALL}"')],
    )
    slices = [
        tfma.SlicingSpec(),
        tfma.SlicingSpec(feature_keys=[features.SITE]),
        tfma.SlicingSpec(feature_keys=[features.SITE, features.LABEL_NAME]),
    ]
    return tfma.EvalConfig(model_specs=[spec], slicing_specs=slices, metrics_specs=[scores, per_class, critical])


def _candidate_name(evaluation_uri: str) -> str | None:
    """The candidate's model name as the Evaluator wrote it (TFX drops names when there is no baseline)."""
    with tf.io.gfile.GFile(os.path.join(evaluation_uri, "eval_config.json")) as f:
        specs = json.load(f)["evalConfig"]["modelSpecs"]
    return next(s.get("name") for s in specs if not s.get("isBaseline")) or None


def _slices(evaluation_uri: str, attribute: str) -> dict[tuple, Any]:
    """TFMA's slicing_metrics or plots by slice key: () overall, (("site", value),) per site, ..."""
    result = tfma.load_eval_result(evaluation_uri, model_name=_candidate_name(evaluation_uri))
    return dict(getattr(result, attribute))


def _overall(evaluation_uri: str, attribute: str) -> dict[str, Any]:
    return _slices(evaluation_uri, attribute).get((), {})


def read_metrics(evaluation_uri: str, classes: list[str]) -> dict[str, Any]:
    """Accuracy, critical recall, per-class precision/recall/F1 and the number of images scored of the
    candidate, overall slice."""
    overall = _overall(evaluation_uri, "slicing_metrics")
    scores = overall[SCORES][""]
    decisions = overall[DECISIONS]
    per_class = {
        name: {m: float(decisions[f"classId:{k}"][m]["doubleValue"]) for m in PER_CLASS}
        for k, name in enumerate(classes)
    }
    critical = next(float(v[CRITICAL_RECALL]["doubleValue"]) for v in decisions.values() if CRITICAL_RECALL in v)
    return {
        ACCURACY: float(scores[ACCURACY]["doubleValue"]),
        CRITICAL_RECALL: critical,
        "per_class": per_class,
        "count": round(scores[EXAMPLE_COUNT]["doubleValue"]),
    }


def _matrix(plots: dict[str, Any], num_classes: int) -> list[list[int]]:
    plot = plots[SCORES][""]["multiClassConfusionMatrixAtThresholds"]
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for entry in plot["matrices"][0]["entries"]:
        actual, predicted = entry.get("actualClassId", 0), entry.get("predictedClassId", 0)
        if 0 <= predicted < num_classes:
            matrix[actual][predicted] += round(entry.get("numWeightedExamples", 0))
    return matrix


def read_confusion_matrix(evaluation_uri: str, num_classes: int) -> list[list[int]]:
    """Rows: true class, columns: argmax-predicted class, from TFMA's MultiClassConfusionMatrixPlot."""
    return _matrix(_overall(evaluation_uri, "plots"), num_classes)


def matrix_figures(matrix: list[list[int]], classes: list[str], critical_class: str) -> dict[str, Any]:
    """Count, accuracy, recall and support per class present, and the critical class's recall (None when
    absent), of a confusion matrix (rows: true class)."""
    total = sum(map(sum, matrix))
    support = {name: sum(matrix[k]) for k, name in enumerate(classes) if sum(matrix[k])}
    recall = {name: matrix[k][k] / sum(matrix[k]) for k, name in enumerate(classes) if name in support}
    return {
        "count": total,
        "accuracy": sum(matrix[k][k] for k in range(len(classes))) / total if total else float("nan"),
        "critical_recall": recall.get(critical_class),
        "recall": recall,
        "support": support,
        "confusion_matrix": matrix,
    }


def read_site_figures(evaluation_uri: str, classes: list[str], critical_class: str) -> dict[str, dict[str, Any]]:
    """Per site (TFMA's `site` slice): count, accuracy, critical recall, recall and support per class."""
    sites = {}
    for key, plots in _slices(evaluation_uri, "plots").items():
        if len(key) == 1 and key[0][0] == features.SITE:
            site = key[0][1].decode() if isinstance(key[0][1], bytes) else str(key[0][1])
            sites[site] = matrix_figures(_matrix(plots, len(classes)), classes, critical_class)
    return dict(sorted(sites.items()))
