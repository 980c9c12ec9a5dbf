"""Screening operating point: calibration lowers ECE, the alert threshold reaches the target recall."""

from __future__ import annotations

import numpy as np
import pytest

from training import operating_point as op


def overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three-class softmax outputs that are right 70% of the time but claim about 99% confidence."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + rng.integers(1, 3, n)) % 3)
    logits = rng.normal(0, 0.5, (n, 3))
    logits[np.arange(n), predicted] += 5.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, labels


def test_temperature_scaling_lowers_ece_and_keeps_the_argmax():
    probabilities, labels = overconfident()
    temperature = op.fit_temperature(probabilities, labels)
    calibrated = op.scale(probabilities, temperature)
    assert temperature > 1.5  # softens overconfident outputs
    assert np.array_equal(calibrated.argmax(axis=1), probabilities.argmax(axis=1))
    before, after = op.expected_calibration_error(probabilities, labels), op.expected_calibration_error(calibrated, labels)
    assert before > 0.2 and after < 0.05


def test_expected_calibration_error_of_a_calibrated_example():
    probabilities = np.array([[0.8, 0.2]] * 10)
    labels = np.array([0] * 8 + [1] * 2)  # 80% right at 80% confidence
    assert op.expected_calibration_error(probabilities, labels) == pytest.approx(0.0)


@pytest.mark.parametrize("target", [1.0, 0.9])
def test_alert_threshold_reaches_the_target_recall_on_its_split(target):
    probabilities, labels = overconfident(seed=1)
    point = op.fit_operating_point(probabilities, labels, critical_index=2, target_recall=target, review_confidence=0.9)
    calibrated = op.scale(probabilities, point.temperature)
    alert = op.alerts(calibrated, 2, point.threshold)
    recall = alert[labels == 2].mean()
    assert recall >= target and point.recall == pytest.approx(recall)
    assert point.precision == pytest.approx((labels[alert] == 2).mean())
    assert point.threshold <= 0.5 and point.ece_after < point.ece_before


def test_operating_point_needs_the_critical_class():
    probabilities, labels = overconfident()
    with pytest.raises(ValueError, match="no image of the critical class"):
        op.fit_operating_point(probabilities[labels != 2], labels[labels != 2], 2, 1.0, 0.9)


def test_out_of_scope_threshold_keeps_the_budget_of_in_scope_images_and_the_alert_their_own():
    """Three classes and one output more (out of scope, label 3): the threshold lets at most the budget of
    in-scope eval images out (never under 0.5), the alert and the confidence are of the three given in scope."""
    probabilities, labels = overconfident(seed=2)
    rng = np.random.default_rng(3)
    outside = rng.dirichlet([1, 1, 1, 20], 300)  # out-of-scope images: mostly the extra output
    inside = np.concatenate([probabilities * 0.97, np.full((len(labels), 1), 0.03)], axis=1)
    inside[: len(labels) // 10, 3] = rng.uniform(0.3, 0.9, len(labels) // 10)  # some in-scope images look odd
    inside /= inside.sum(axis=1, keepdims=True)
    point = op.fit_operating_point(
        np.concatenate([inside, outside]), np.concatenate([labels, np.full(300, 3)]), 2, 1.0, 0.9, 3, 0.02
    )
    calibrated, out = op.in_scope(op.scale(inside, point.temperature), 3)
    assert point.out_of_scope_threshold >= 0.5
    assert point.in_scope_called_out == pytest.approx((out > point.out_of_scope_threshold).mean())
    assert point.in_scope_called_out <= 0.02
    caught = op.in_scope(op.scale(outside, point.temperature), 3)[1] > point.out_of_scope_threshold
    assert point.out_of_scope_caught == pytest.approx(caught.mean()) and caught.mean() > 0.7
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    assert op.alerts(calibrated, 2, point.threshold)[labels == 2].all()  # recall 1.0 among the three
    assert op.in_scope(probabilities, 3)[1].max() == 0.0  # a model without the output: never out of scope


def test_no_critical_image_of_the_eval_split_is_called_out_of_scope_at_full_recall():
    """A blast called out of scope raises no alert: the threshold stays over every eval blast's out-of-scope
    probability when the alert must keep them all."""
    probabilities, labels = overconfident(seed=4)
    inside = np.concatenate([probabilities * 0.9, np.full((len(labels), 1), 0.1)], axis=1)
    odd = np.flatnonzero(labels == 2)[:3]
    inside[odd] = [0.001, 0.001, 0.002, 0.996]  # three blasts that look out of scope
    point = op.fit_operating_point(inside, labels, 2, 1.0, 0.9, 3, 0.02)
    out = op.in_scope(op.scale(inside, point.temperature), 3)[1]
    assert out[odd].min() > 0.5 and point.out_of_scope_threshold >= out[odd].max() and point.recall == 1.0
    # At a lower target, the alert's misses and the blasts called out of scope share what may be missed.
    relaxed = op.fit_operating_point(inside, labels, 2, 0.995, 0.9, 3, 0.02)
    calibrated, out = op.in_scope(op.scale(inside, relaxed.temperature), 3)
    alert = op.alerts(calibrated, 2, relaxed.threshold) & ~(out > relaxed.out_of_scope_threshold)
    assert relaxed.recall == pytest.approx(alert[labels == 2].mean()) and relaxed.recall >= 0.995
