"""TFMA evaluation config with the screening gate, and readers for what the Evaluator wrote."""

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


def _lower_bound(value: float, max_regression: float | None) -> tfma.MetricThreshold:
    threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(lower_bound={"value": value}))
    if max_regression is not None:
        threshold.change_threshold.CopyFrom(
            tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_regression}
            )
        )
    return threshold


def _model_spec(name: str, is_baseline: bool = False) -> tfma.ModelSpec:
    return tfma.ModelSpec(
        name=name,
        signature_name=EXAMPLES_SIGNATURE,
        label_keys={SCORES: features.LABEL, DECISIONS: features.LABEL},
        is_baseline=is_baseline,
    )


def build_eval_config(
    classes: list[str],
    critical_class: str,
    min_accuracy: float,
    min_critical_recall: float,
    max_regression: float | None,
) -> tfma.EvalConfig:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix, gated on accuracy and the
    critical class's recall; with `max_regression`, also on no larger drop against a baseline model."""
    model_specs = [_model_spec("candidate")]
    if max_regression is not None:
        model_specs.append(_model_spec("baseline", is_baseline=True))
    names = [s.name for s in model_specs]
    scores = tfma.MetricsSpec(
        model_names=names,
        output_names=[SCORES],
        metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(
                class_name="SparseCategoricalAccuracy",
                config=f'"name": "{ACCURACY}"',
                threshold=_lower_bound(min_accuracy, max_regression),
            ),
            tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        ],
    )
    per_class = tfma.MetricsSpec(
        model_names=names,
        output_names=[DECISIONS],
        binarize=tfma.BinarizationOptions(class_ids={"values": list(range(len(classes)))}),
        metrics=[
            tfma.MetricConfig(class_name=kind, config=f'"name": "{name}"')
            for kind, name in zip(("Precision", "Recall", "F1Score"), PER_CLASS, strict=False)
        ],
    )
    gate = tfma.MetricsSpec(
        model_names=names,
        output_names=[DECISIONS],
        binarize=tfma.BinarizationOptions(class_ids={"values": [classes.index(critical_class)]}),
        metrics=[
            tfma.MetricConfig(
                class_name="Recall",
                config=f'"name": "{CRITICAL_RECALL}"',
                threshold=_lower_bound(min_critical_recall, max_regression),
            )
        ],
    )
    return tfma.EvalConfig(
        model_specs=model_specs, slicing_specs=[tfma.SlicingSpec()], metrics_specs=[scores, per_class, gate]
    )


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


def read_validation(evaluation_uri: str) -> dict[str, Any]:
    """Whether the gate passed and, if not, each failed threshold in words."""
    result = tfma.load_validation_result(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        for failure in per_slice.failures:
            bound = failure.metric_threshold
            value = failure.metric_value.double_value.value
            if failure.metric_key.is_diff:
                limit = f"change >= {bound.change_threshold.absolute.value} against the last blessed model"
            else:
                limit = f">= {bound.value_threshold.lower_bound.value}"
            failures.append(f"{failure.metric_key.name} = {value:.4f}, required {limit} {failure.message}".strip())
    return {"blessed": bool(result.validation_ok), "failures": failures}
