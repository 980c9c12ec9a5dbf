"""The run summary, its text rendering and the pictures, from known figures."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from components.plots import confusion_matrix_png, training_curves_png
from components.run_report import build_summary
from components.serving_gate import gate_result
from components.summary_text import format_classification_report, render_summary
from tests.helpers import CLASSES
from tests.helpers.summaries import MATRIX, hold_out, summary


def test_report_text_names_the_failed_threshold_and_no_push():
    text = render_summary(summary(blessed=False), "/runs/7")
    assert "splits: train 35 / eval 10 / test 50" in text
    assert "gate: NOT BLESSED\n  failed: accuracy = 0.9400, required >= 0.95" in text
    assert "pushed: no (model not blessed)" in text
    assert "myeloblast recall: 1.0000" in text


def test_report_text_has_a_row_per_site():
    text = render_summary(summary(blessed=True), "/runs/7")
    assert "per site (test split):" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("  barcelona", "  munich"))}
    assert rows["barcelona"][1:4] == ["35", "0.9429", "n/a"]  # no myeloblast at this site
    assert rows["munich"][1:4] == ["15", "0.9333", "1.0000"]
    assert "seg_neutrophil 0.800 (5)" in " ".join(rows["munich"])


def test_report_text_shows_the_held_out_site():
    text = render_summary(summary(blessed=False, hold_out=hold_out()), "/runs/9")
    assert "held out 'munich-extra' (never trained on): 37 images, accuracy 0.8108" in text
    assert "basophil 0.6000 (6/10)" in text and "monocyte 0.7273 (8/11)" in text
    assert "other cells called myeloblast: basophil 0/10, erythroblast 0/10, monocyte 3/11" in text


def test_report_text_shows_the_pushed_version():
    text = render_summary(summary(blessed=True), "/runs/7")
    assert "gate: BLESSED" in text and "pushed: /srv/bloodcell/1795700000" in text


def test_report_text_shows_operating_point_audit_and_tracking():
    figures = summary(blessed=True, tracking={"uri": "sqlite:///x.db", "run_id": "abc", "registered_version": "3"})
    text = render_summary(figures, "/runs/7")
    assert "myeloblast alert: calibrated p >= 0.0412 (eval recall 1.0000, precision 0.8333)" in text
    assert "ECE 0.0543 -> 0.0121 (temperature 1.732)" in text
    assert "shortcut audit: colour-histogram baseline 0.7123 (CNN 0.9400)" in text
    assert "group 400x400 neutral: 20 images, accuracy 0.9000" in text
    assert (
        "stress grayscale: accuracy 0.8811 (drop +0.0589), myeloblast recall 0.9500, alert raised for 0.9750  FAILS the bar"
        in text
    )
    assert "stress stain_normalised: accuracy 0.9322 (drop +0.0078), myeloblast recall 1.0000\n" in text
    assert "MLflow: run abc in sqlite:///x.db, registered version 3" in text
    failed = summary(blessed=True, tracking={"uri": "http://mlflow:5000", "error": "MlflowException: down"})
    assert "MLflow: NOT logged to http://mlflow:5000: MlflowException: down" in render_summary(failed, "/runs/7")


def test_report_text_shows_the_served_model_and_an_unchanged_model():
    figures = summary(
        blessed=False,
        gate_failures=[],
        identical_to_served=True,
        served_model={"version": 1795700000, "accuracy": 0.94, "critical_recall": 1.0},
    )
    text = render_summary(figures, "/runs/8")
    assert "served model (version 1795700000) on this test split: accuracy 0.9400, myeloblast recall 1.0000" in text
    assert "gate: passed, but this model is the one already served (version 1795700000)" in text
    assert "pushed: no (already served)" in text


def test_a_refusal_of_the_served_model_reads_as_a_refusal():
    """`--set evaluation.min_accuracy=0.999` on an unchanged model: the bar failed, whatever else is true."""
    figures = summary(
        blessed=False,
        gate_failures=["accuracy = 0.9400, required >= 0.999"],
        identical_to_served=True,
        served_model={"version": 1795700000, "accuracy": 0.94, "critical_recall": 1.0},
    )
    text = render_summary(figures, "/runs/9")
    assert "gate: NOT BLESSED\n  failed: accuracy = 0.9400, required >= 0.999" in text
    assert "passed" not in text
    assert "(this model is also the one already served, version 1795700000)" in text
    assert "pushed: no (model not blessed)" in text


def test_classification_report_rows():
    table = format_classification_report(summary(True).per_class, 0.94)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[2].split() == ["erythroblast", "1.0000", "0.9000", "0.9000", "10"]
    assert lines[-1].split() == ["accuracy", "0.9400", "50"]


def test_plots_are_written(tmp_path):
    confusion_matrix_png(MATRIX, CLASSES, str(tmp_path / "cm.png"), "test")
    history = [
        {"epoch": e, "loss": 1 / e, "val_loss": 1.2 / e, "accuracy": 1 - 1 / (e + 1), "val_accuracy": 0.9, "lr": 1e-3}
        for e in range(1, 5)
    ]
    training_curves_png(history, str(tmp_path / "curves.png"))
    for row in history:
        row.update(val_grayscale_loss=2 * row["val_loss"], val_grayscale_accuracy=0.8)
    training_curves_png(history, str(tmp_path / "curves_gray.png"))
    assert (tmp_path / "curves_gray.png").read_bytes() != (tmp_path / "curves.png").read_bytes()
    assert Image.open(tmp_path / "cm.png").size == (780, 660)
    assert Image.open(tmp_path / "curves.png").size[0] > 1000


GATE_OUTCOMES = {  # name: (candidate figures, per-site figures, served model, broken served versions, identical)
    "blessed, first model": ({"accuracy": 0.97, "critical_recall": 1.0}, {}, None, [], False),
    "refused: a bar": ({"accuracy": 0.94, "critical_recall": 1.0}, {}, None, [], False),
    "refused: a site fails while the pool passes": (
        {"accuracy": 0.97, "critical_recall": 1.0},
        {"munich": {"count": 40, "accuracy": 0.9, "critical_recall": 1.0}}, None, [], False,
    ),
    "refused: regression against the served model": (
        {"accuracy": 0.96, "critical_recall": 1.0}, {}, {"version": 7, "accuracy": 0.99, "critical_recall": 1.0}, [], False,
    ),
    "passed, but identical to the served model": (
        {"accuracy": 0.97, "critical_recall": 1.0}, {}, {"version": 7, "accuracy": 0.97, "critical_recall": 1.0}, [], True,
    ),
    "refused and identical to the served model": (
        {"accuracy": 0.94, "critical_recall": 1.0}, {}, {"version": 7, "accuracy": 0.94, "critical_recall": 1.0}, [], True,
    ),
    "blessed past a broken served version": (
        {"accuracy": 0.97, "critical_recall": 1.0}, {}, {"version": 7, "accuracy": 0.96, "critical_recall": 1.0},
        [{"version": 9, "error": "DecodeError: Error parsing message"}], False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("outcome", [*GATE_OUTCOMES, "hold-out run"])
def test_every_message_of_the_summary_agrees_with_gate_json(outcome):
    candidate, sites, served, broken, identical = GATE_OUTCOMES.get(outcome, GATE_OUTCOMES["blessed, first model"])
    thresholds = {"min_accuracy": 0.95, "min_critical_recall": 0.99, "max_regression": 0.01}
    gate = gate_result(
        candidate, sites, served, broken, identical, thresholds, "myeloblast", "munich-extra" if outcome == "hold-out run" else ""
    )
    figures = summary(blessed=gate["blessed"])
    pushed = gate["blessed"]  # the Pusher pushes exactly the blessed model
    built = build_summary(
        {"split_totals": figures.splits, **figures.ingestion},
        {"accuracy": candidate["accuracy"], "critical_recall": candidate["critical_recall"],
         "per_class": {c: {k: v for k, v in f.items() if k != "support"} for c, f in figures.per_class.items()}},
        MATRIX, gate, [{"epoch": 1}], pushed, "/srv/bloodcell/1795700000" if pushed else "", CLASSES, "myeloblast",
        {**figures.audit, "sites": {}}, figures.operating_point, figures.sites, None,
    )  # fmt: skip
    text = render_summary(built, "/runs/1")
    assert ("gate: BLESSED" in text) == gate["blessed"]
    assert ("gate: NOT BLESSED" in text) == bool(gate["failures"]) and bool(gate["failures"]) == (
        outcome.startswith("refused") or outcome == "hold-out run"
    )
    assert ("passed" in text) == (gate["identical_to_served"] and not gate["failures"])
    for failure in gate["failures"]:
        assert f"  failed: {failure}" in text
    assert len(re.findall(r"^  failed: ", text, re.M)) == len(gate["failures"])
    for version in gate["broken_served_versions"]:
        assert f"served version {version['version']} does not load and was skipped" in text
    assert ("pushed: /srv/bloodcell/1795700000" in text) == gate["blessed"]
    if not gate["blessed"]:
        reason = "already served" if gate["identical_to_served"] and not gate["failures"] else "model not blessed"
        assert f"pushed: no ({reason})" in text


def test_report_text_shows_how_cells_out_of_scope_were_answered():
    text = render_summary(summary(blessed=True), "/tmp/report")
    assert "out of scope (calibrated p > 0.6213; no alert then), out-of-scope test split:" in text
    assert "  lymphocyte @ mll-marrow         10        0.6000  0.7000  0.2000" in text
    assert "test images of the classes called out of scope: barcelona 0.0286, munich 0.0000" in text
