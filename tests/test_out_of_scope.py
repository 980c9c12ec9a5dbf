"""benchmarks/out_of_scope.py: the label-free scores, the threshold on the eval split and the figures per
method (training and the real data: run by hand, figures in docs/results.md)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.out_of_scope import (
    Answers,
    cell_type,
    cell_types_of,
    mahalanobis_score,
    markdown_table,
    method_figures,
    neighbour_score,
    relabelled,
)
from contracts import features
from tests.helpers import CLASSES

MYELOBLAST = 3


def answers(points: np.ndarray, predicted: np.ndarray | None = None, alerts: np.ndarray | None = None) -> Answers:
    n = len(points)
    return Answers(
        probabilities=np.full((n, 5), 0.2),
        out_of_scope=np.zeros(n),
        predicted=np.zeros(n, int) if predicted is None else predicted,
        alerts=np.zeros(n, bool) if alerts is None else alerts,
        features=points,
    )


def clusters(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: tight clusters around (5, 0, 0) and (0, 5, 0), labels 0 and 1."""
    labels = np.repeat([0, 1], n)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    return centres[labels] + rng.normal(0, 0.3, (2 * n, 3)), labels


def test_a_cell_away_from_every_class_scores_higher_than_one_of_a_class():
    rng = np.random.default_rng(0)
    points, labels = clusters(rng, 100)
    probe = answers(np.array([[5.0, 0.1, 0], [0, 0, 5.0], [2.5, 2.5, 0]]))  # in class 0, off both, between
    mahalanobis = mahalanobis_score(answers(points), labels)(probe)
    neighbours = neighbour_score(answers(points))(probe)
    for scores in (mahalanobis, neighbours):
        assert scores[0] < scores[2] and scores[0] < scores[1]
    assert mahalanobis[1] > 10 * mahalanobis[0]


def test_the_threshold_lets_the_budget_of_in_scope_eval_out_and_alerts_count_only_when_in_scope():
    rng = np.random.default_rng(1)
    points, labels = clusters(rng, 50)
    sites = np.array(["a", "b"] * 50)
    in_scope = {"eval": answers(points), "test": answers(points, predicted=labels)}
    # Four out-of-scope cells: two far away (alert on one of them), two inside class 1 (alert on one).
    cells = np.array([[0, 0, 9.0], [0, 0, 8.0], [0, 5.0, 0], [0.1, 5.0, 0]])
    other = answers(cells, alerts=np.array([True, False, True, False]))
    groups = {"lymphocyte @ a (test)": [tf.train.Example()] * 4}
    row = method_figures(
        "kNN",
        neighbour_score(answers(points)),
        {**in_scope, "lymphocyte @ a (test)": other},
        groups,
        {"test": labels},
        {"test": sites},
        budget=0.1,
        critical_index=1,
    )
    flagged_eval = neighbour_score(answers(points))(in_scope["eval"]) > row.threshold
    assert abs(flagged_eval.mean() - 0.1) <= 0.01
    assert row.in_scope_accuracy == {"a": 1.0, "b": 1.0} and row.critical_recall == {"a": 1.0, "b": 1.0}
    cell = row.cells["lymphocyte @ a (test)"]
    assert cell.images == 4 and cell.out_of_scope == 0.5  # the two far ones
    assert cell.alerts == 0.25  # the alert of the far cell is withheld, the one inside class 1 stands
    table = markdown_table([row], "note")
    assert "| lymphocyte @ a (test), 4 images: out of scope / alert | 0.500 / 0.250 |" in table


def test_an_out_of_scope_example_is_relabelled_and_keeps_its_cell_type():
    example = tf.train.Example()
    example.features.feature[features.LABEL].int64_list.value.append(2)
    example.features.feature[features.LABEL_NAME].bytes_list.value.append(b"lymphocyte")
    copy = relabelled(example, 5)
    assert copy.features.feature[features.LABEL].int64_list.value[:] == [5] and cell_type(copy) == "lymphocyte"
    assert example.features.feature[features.LABEL].int64_list.value[:] == [2]


def test_an_out_of_scope_folder_without_cell_types_or_with_one_of_the_five_is_refused(tmp_path):
    empty, mixed = tmp_path / "empty", tmp_path / "mixed"
    empty.mkdir()
    for name in ("lymphocyte", "myeloblast"):
        (mixed / name).mkdir(parents=True)
    with pytest.raises(ValueError, match="empty: no sub-folder"):
        cell_types_of(empty, CLASSES)
    with pytest.raises(ValueError, match=r"mixed: sub-folder\(s\) \['myeloblast'\] are among the five classes"):
        cell_types_of(mixed, CLASSES)
    (mixed / "myeloblast").rmdir()
    assert cell_types_of(mixed, CLASSES) == ["lymphocyte"]
