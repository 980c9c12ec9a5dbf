"""Screening operating point, fitted on the eval split: temperature scaling (calibrated probabilities), the
critical-class alert threshold, the confidence under which a prediction needs human review, and, for a model
that also learnt cells that are none of the classes (one output more), the out-of-scope threshold."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    temperature: float  # probabilities = softmax(log(p) / temperature)
    threshold: float  # alert when the calibrated critical-class probability >= threshold (or it is the argmax)
    review_confidence: float  # needs_review when the calibrated top probability < review_confidence
    recall: float = float("nan")  # of the alert, on the eval split
    precision: float = float("nan")  # of the alert, on the eval split: the cost of the recall
    ece_before: float = float("nan")
    ece_after: float = float("nan")
    out_of_scope_threshold: float = 1.0  # out of scope when the calibrated out-of-scope probability > this (1: never)
    out_of_scope_caught: float = float("nan")  # of the eval split's out-of-scope images, the share over it
    in_scope_called_out: float = float("nan")  # of the eval split's in-scope images, the share over it

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs: softmax(log(p) / T); T > 1 softens, T < 1 sharpens."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the labels."""

    def nll(log_t: float) -> float:
        p = scale(probabilities, float(np.exp(log_t)))[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the bins' sizes."""
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def in_scope(probabilities: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(the classes' probabilities given that the cell is one of them, the out-of-scope probability) of a
    model's [N, classes + k] outputs: the outputs after the classes are out of scope (summed; k = 0: 0)."""
    if probabilities.shape[1] == classes:
        return probabilities, np.zeros(len(probabilities))
    kept = probabilities[:, :classes]
    return kept / np.clip(kept.sum(axis=-1, keepdims=True), 1e-12, None), probabilities[:, classes:].sum(axis=-1)


def out_of_scope_threshold(
    in_scope_probability: np.ndarray, budget: float, alerted_probability: np.ndarray, allowed: int
) -> float:
    """The out-of-scope threshold: at least 0.5 (out of scope is then also the likeliest answer), high enough
    that at most `budget` of these in-scope images' out-of-scope probabilities exceed it, and that at most
    `allowed` of the critical-class images that raise the alert (`alerted_probability`, theirs) do: a cell out
    of scope raises no alert, so a blast called out of scope would be a blast missed."""
    threshold = max(0.5, float(np.quantile(in_scope_probability, 1.0 - budget))) if len(in_scope_probability) else 0.5
    if allowed < len(alerted_probability):
        threshold = max(threshold, float(np.sort(alerted_probability)[::-1][allowed]))
    return threshold


def alerts(probabilities: np.ndarray, critical_index: int, threshold: float) -> np.ndarray:
    """The alert decision: critical-class probability at or over the threshold, or critical is the argmax."""
    return (probabilities[:, critical_index] >= threshold) | (probabilities.argmax(axis=-1) == critical_index)


def fit_operating_point(
    probabilities: np.ndarray,
    labels: np.ndarray,
    critical_index: int,
    target_recall: float,
    review_confidence: float,
    classes: int | None = None,
    out_of_scope_budget: float = 0.0,
) -> OperatingPoint:
    """Calibrates on the eval split, then picks the highest alert threshold whose recall on it is at least
    `target_recall` (1.0: every critical-class image raises the alert), and reports its precision. With
    outputs after the `classes` (out of scope, labels from `classes` on), the alert and the confidence are of
    the classes' probabilities given in scope, and the out-of-scope threshold (`out_of_scope_threshold`)
    keeps `out_of_scope_budget` of the in-scope eval images out and the alert's recall at `target_recall`."""
    classes = classes or probabilities.shape[1]
    temperature = fit_temperature(probabilities, labels)
    calibrated, out = in_scope(scale(probabilities, temperature), classes)
    kept = labels < classes
    before = in_scope(probabilities, classes)[0][kept]
    calibrated, out_of_scope, labels = calibrated[kept], out[~kept], labels[kept]
    critical = np.sort(calibrated[labels == critical_index, critical_index])
    if len(critical) == 0:
        raise ValueError("the eval split has no image of the critical class: no alert threshold can be chosen")
    missed = int(np.floor((1.0 - target_recall) * len(critical) + 1e-9))
    threshold = float(min(critical[missed], 0.5))
    is_critical = labels == critical_index
    raised = alerts(calibrated, critical_index, threshold)
    out_threshold = 1.0
    if probabilities.shape[1] > classes:  # the alert's misses and the blasts called out of scope share the budget
        allowed = missed - int((is_critical & ~raised).sum())
        out_threshold = out_of_scope_threshold(out[kept], out_of_scope_budget, out[kept][is_critical & raised], allowed)
    alert = raised & ~(out[kept] > out_threshold)
    return OperatingPoint(
        temperature=temperature,
        threshold=threshold,
        review_confidence=review_confidence,
        recall=float(alert[is_critical].mean()),
        precision=float(is_critical[alert].mean()),
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(calibrated, labels),
        out_of_scope_threshold=out_threshold,
        out_of_scope_caught=float((out_of_scope > out_threshold).mean()) if len(out_of_scope) else float("nan"),
        in_scope_called_out=float((out[kept] > out_threshold).mean()),
    )
