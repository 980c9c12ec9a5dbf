"""Screening operating point, fitted on the eval split: temperature scaling (calibrated probabilities), the
critical-class alert threshold, and the confidence under which a prediction needs human review."""

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


def alerts(probabilities: np.ndarray, critical_index: int, threshold: float) -> np.ndarray:
    """The alert decision: critical-class probability at or over the threshold, or critical is the argmax."""
    return (probabilities[:, critical_index] >= threshold) | (probabilities.argmax(axis=-1) == critical_index)


def fit_operating_point(
    probabilities: np.ndarray, labels: np.ndarray, critical_index: int, target_recall: float, review_confidence: float
) -> OperatingPoint:
    """Calibrates on the eval split, then picks the highest alert threshold whose recall on it is at least
    `target_recall` (1.0: every critical-class image raises the alert), and reports its precision."""
    temperature = fit_temperature(probabilities, labels)
    calibrated = scale(probabilities, temperature)
    critical = np.sort(calibrated[labels == critical_index, critical_index])
    if len(critical) == 0:
        raise ValueError("the eval split has no image of the critical class: no alert threshold can be chosen")
    missed = int(np.floor((1.0 - target_recall) * len(critical) + 1e-9))
    threshold = float(min(critical[missed], 0.5))
    alert = alerts(calibrated, critical_index, threshold)
    is_critical = labels == critical_index
    return OperatingPoint(
        temperature=temperature,
        threshold=threshold,
        review_confidence=review_confidence,
        recall=float(alert[is_critical].mean()),
        precision=float(is_critical[alert].mean()),
        ece_before=expected_calibration_error(probabilities, labels),
        ece_after=expected_calibration_error(calibrated, labels),
    )
