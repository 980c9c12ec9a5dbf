"""TFMA evaluation config, and readers for what the Evaluator wrote."""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf
import tensorflow_model_analysis as tfma

from components import features
from components.training.export import EXAMPLES_SIGNATURE, PREDICTED_ONE_HOT, PROBABILITIES

ACCURACY = "accuracy"
CRITICAL_RECALL = "critical_recall"
PER_CLASS = ("precision", "recall", "f1")
# TFMA output names (signature outputs): probabilities for accuracy and the confusion matrix; the argmax
# one-hot vector for per-class precision/recall/F1, so that a class counts as predicted only as the argmax.
SCORES, DECISIONS = PROBABILITIES, PREDICTED_ONE_HOT


def build_eval_config(classes: list[str], critical_class: str) -> tfma.EvalConfig:
    """Accuracy, per-class precision/recall/F1 of the argmax decision, the critical class's recall and the
    confusion matrix. The bars are applied by the ServingGate, which also compares with the served model."""
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
    return tfma.EvalConfig(model_specs=[spec], slicing_specs=[tfma.SlicingSpec()], metrics_specs=[scores, per_class, critical])


def _candidate_name(evaluation_uri: str) -> str | None:
    """The candidate's model name as the Evaluator wrote it (TFX drops names when there is no baseline)."""
    with tf.io.gfile.GFile(os.path.join(evaluation_uri, "eval_config.json")) as f:
        specs = json.load(f)["evalConfig"]["modelSpecs"]
    return next(s.get("name") for s in specs if not s.get("isBaseline")) or None


def _overall(evaluation_uri: str, attribute: str) -> dict[str, Any]:
    result = tfma.load_eval_result(evaluation_uri, model_name=_candidate_name(evaluation_uri))
    return dict(getattr(result, attribute)).get((), {})


def read_metrics(evaluation_uri: str, classes: list[str]) -> dict[str, Any]:
    """Accuracy, critical recall and per-class precision/recall/F1 of the candidate, overall slice."""
    overall = _overall(evaluation_uri, "slicing_metrics")
    scores = overall[SCORES][""]
    decisions = overall[DECISIONS]
    per_class = {
        name: {m: float(decisions[f"classId:{k}"][m]["doubleValue"]) for m in PER_CLASS}
        for k, name in enumerate(classes)
    }
    critical = next(float(v[CRITICAL_RECALL]["doubleValue"]) for v in decisions.values() if CRITICAL_RECALL in v)
    return {ACCURACY: float(scores[ACCURACY]["doubleValue"]), CRITICAL_RECALL: critical, "per_class": per_class}


def read_confusion_matrix(evaluation_uri: str, num_classes: int) -> list[list[int]]:
    """Rows: true class, columns: argmax-predicted class, from TFMA's MultiClassConfusionMatrixPlot."""
    plot = _overall(evaluation_uri, "plots")[SCORES][""]["multiClassConfusionMatrixAtThresholds"]
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for entry in plot["matrices"][0]["entries"]:
        actual, predicted = entry.get("actualClassId", 0), entry.get("predictedClassId", 0)
        if 0 <= predicted < num_classes:
            matrix[actual][predicted] += round(entry.get("numWeightedExamples", 0))
    return matrix
