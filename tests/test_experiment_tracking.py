"""MLflow tracking against a real local SQLite store: what a run logs can be read back; a dead server
costs one warning, not the run."""

from __future__ import annotations

import logging

import pytest
from mlflow import MlflowClient

from components import experiment_tracking
from components.experiment_tracking import default_tracking_uri, flatten, log_run
from contracts.run_summary import RunSummary
from tests.helpers.summaries import summary as figures


def summary(pushed_destination: str = "", hold_out: dict | None = None) -> RunSummary:
    """A small run's figures (tests/helpers/summaries.py) with the ones MLflow logs set here."""
    pushed = bool(pushed_destination)
    return figures(
        pushed,
        hold_out=hold_out,
        test_accuracy=0.9812,
        critical_recall=1.0,
        pushed_destination=pushed_destination,
        epochs_trained=2,
        gate_failures=[] if pushed else ["accuracy = 0.9812, required >= 0.99"],
        per_class={"myeloblast": {"precision": 0.97, "recall": 1.0, "f1": 0.985}},
        sites={
            "barcelona": {"accuracy": 0.975, "critical_recall": None, "recall": {"monocyte": 0.96}},
            "munich": {"accuracy": 0.99, "critical_recall": 1.0, "recall": {"myeloblast": 1.0}},
        },
    )


def test_per_site_and_held_out_figures_are_metrics():
    held = {"name": "munich-extra", "pooled": {"accuracy": 0.8}, "recall": {"monocyte": 0.7}, "called_critical": {"monocyte": 2}}
    metrics = experiment_tracking.run_metrics(summary(hold_out=held))
    assert metrics["site_barcelona_accuracy"] == 0.975 and "site_barcelona_myeloblast_recall" not in metrics
    assert metrics["site_munich_myeloblast_recall"] == 1.0 and metrics["site_barcelona_monocyte_recall"] == 0.96
    assert metrics["holdout_accuracy"] == 0.8 and metrics["holdout_monocyte_recall"] == 0.7
    assert metrics["holdout_monocyte_called_myeloblast"] == 2.0
    assert metrics["stress_grayscale_myeloblast_alert_recall"] == 0.975
    assert "stress_stain_normalised_myeloblast_alert_recall" not in metrics  # an audit from before the figure
    assert metrics["out_of_scope_mll-marrow_alerts"] == 0.2 and metrics["out_of_scope_barcelona_caught"] == 1.0
    assert metrics["site_barcelona_called_out_of_scope"] == 0.0286


def test_flatten_nests_with_dots_and_lists_as_json():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}


def test_run_is_logged_and_pushed_model_registered(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "model_card.md").write_text("# card\n")
    pushed = tmp_path / "serving" / "1790000000"
    pushed.mkdir(parents=True)
    uri = default_tracking_uri(str(tmp_path))
    history = [{"epoch": 1, "loss": 1.2, "val_accuracy": 0.8}, {"epoch": 2, "loss": 0.6, "val_accuracy": 0.9}]
    result = log_run(
        uri, "bloodcell", "bloodcell", "2026-11-26T10:00:00", {"training": {"epochs": 2}}, summary(str(pushed)),
        history, {"": str(tmp_path / "report")},
    )  # fmt: skip
    assert "error" not in result and result["registered_version"] == "1"
    assert (tmp_path / "mlflow.db").exists()
    client = MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["tfx.pipeline_run_id"] == "2026-11-26T10:00:00" and run.data.tags["blessed"] == "true"
    assert run.data.params["training.epochs"] == "2"
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.9812)
    assert run.data.metrics["test_myeloblast_recall"] == 1.0 and run.data.metrics["test_myeloblast_f1"] == 0.985
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 1.2), (2, 0.6)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model_card.md"]
    version = client.get_model_version_by_alias("bloodcell", "serving")
    assert version.source == str(pushed) and version.tags["serving_version"] == "1790000000"
    assert version.run_id == run.info.run_id
    # artifacts live beside the database, not in the working directory
    assert list((tmp_path / "mlflow-artifacts").rglob("model_card.md"))


def test_a_late_report_of_an_older_push_does_not_move_the_serving_alias(tmp_path):
    """Two runs finishing out of order: the alias stays on the highest serving version (what TF Serving serves)."""
    uri = default_tracking_uri(str(tmp_path))
    newer, older = tmp_path / "serving" / "1790000200", tmp_path / "serving" / "1790000100"
    for run_id, pushed in (("newer", newer), ("older", older)):
        pushed.mkdir(parents=True)
        result = log_run(uri, "bloodcell", "bloodcell", run_id, {}, summary(str(pushed)), [], {})
        assert "error" not in result
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias("bloodcell", "serving").tags["serving_version"] == "1790000200"
    assert result["registered_version"] == "2"  # the older push is registered, but not aliased


def test_unreachable_server_warns_once_and_does_not_raise(monkeypatch, caplog):
    monkeypatch.setattr(experiment_tracking, "_warned", False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    caplog.set_level(logging.WARNING)
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    first = log_run(dead, "bloodcell", "bloodcell", "r1", {}, summary(), [], {})
    second = log_run(dead, "bloodcell", "bloodcell", "r2", {}, summary(), [], {})
    assert first["uri"] == dead and "error" in first and "error" in second
    warnings = [r for r in caplog.records if "MLflow tracking" in r.getMessage()]
    assert len(warnings) == 1 and "FAILED, going on without it" in warnings[0].getMessage()
