"""The real pipeline on a small real subset: gate blocks, cache reuses, gate passes and pushes, and
TFMA's figures agree with a recomputation from raw predictions, and an unchanged model is not pushed twice."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from mlflow import MlflowClient
from tfx import v1 as tfx
from typer.testing import CliRunner

from components.serving_gate import score_model
from components.training.export import SERVING_INPUT
from pipelines.cli import app
from pipelines.configs import DEFAULT_CONFIG, load_config, tracking_uri
from pipelines.local_runner import latest_summary, metadata_path, run_local
from pipelines.run_history import list_runs
from serving.client import ServingClient
from serving.explain import explain_with_saved_model
from serving.model_server import start_server
from tests.conftest import CLASSES, make_real_subset, make_site_subsets, real_files

pytestmark = pytest.mark.slow


# Real images of the three configured sites: the five-class folder, Barcelona's extra classes and Munich's.
PER_CLASS = {"blood-cells-5class": 40, "barcelona-extra": 12, "munich-extra": 10}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return make_site_subsets(root / "data", PER_CLASS), root / "out"


def config_for(workspace, *overrides):
    data, out = workspace
    return load_config(
        DEFAULT_CONFIG,
        [
            f"paths.data_roots={json.dumps([str(d) for d in data])}",
            f"paths.output_root={out}",
            f"paths.serving_root={out / 'serving'}",
            "training.epochs=2",
            *overrides,
        ],
    )


def run_cli_in_subprocess(config) -> subprocess.CompletedProcess:
    """`bloodcell run` in its own process on the config's data and output roots."""
    data = json.dumps([r.path for r in config.paths.data_roots])
    sets = [
        f"paths.data_roots={data}",
        f"paths.output_root={config.paths.output_root}",
        f"paths.serving_root={config.paths.serving_root}",
    ]
    command = [os.path.join(os.path.dirname(sys.executable), "bloodcell"), "run"]
    return subprocess.run([*command, *(a for s in sets for a in ("--set", s))], capture_output=True, text=True, timeout=600)


def store_of(config):
    return metadata_store.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(config)))


def last_execution_state(store, type_name):
    executions = sorted(store.get_executions_by_type(type_name), key=lambda e: e.id)
    return executions[-1].last_known_state


def test_gate_blocks_then_cache_then_gate_passes_and_pushes(workspace, monkeypatch):
    # TFX executors parse sys.argv with absl flags, which would read pytest's own options (-v).
    monkeypatch.setattr(sys, "argv", ["bloodcell"])
    # 1. A bar no model can pass: the run completes, nothing is pushed.
    blocked = config_for(workspace, "evaluation.min_accuracy=1.01")
    # A second `bloodcell run` on the same output root while this one runs: refused at once, nothing mixed.
    second: dict = {}
    concurrent = threading.Thread(target=lambda: second.update(done=run_cli_in_subprocess(blocked)))
    concurrent.start()
    summary, report_dir = run_local(blocked)
    concurrent.join()
    assert second["done"].returncode == 1, second["done"].stderr[-2000:]
    assert f"is in use by another run (pid {os.getpid()}, started " in " ".join(second["done"].stderr.split())
    data, _ = workspace
    found = sum(1 for root in data for _ in root.glob("*/*"))
    assert sum(summary["splits"].values()) == found and min(summary["splits"].values()) > 0
    assert summary["ingestion"] == {"found": found, "ingested": found, "duplicates": 0, "rejected": 0}
    assert not summary["blessed"] and not summary["pushed"]
    assert any(f.startswith("accuracy = ") and "required >= 1.01" in f for f in summary["gate_failures"])
    assert not os.path.exists(os.path.join(blocked.paths.serving_root, blocked.model_name))
    for name in ("summary.json", "classification_report.txt", "confusion_matrix.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(report_dir, name)) > 0
    assert sum(map(sum, summary["confusion_matrix"])) == summary["splits"]["test"]
    assert summary["epochs_trained"] == 2
    # Per site (TFMA's site slice), in the summary and in gate.json: every site's test images, counted once.
    assert set(summary["sites"]) == {"barcelona", "munich"}
    assert sum(f["count"] for f in summary["sites"].values()) == summary["splits"]["test"]
    assert summary["sites"]["barcelona"]["critical_recall"] is None  # no myeloblast at this site
    gate_file = glob.glob(os.path.join(blocked.paths.output_root, "pipelines", "*", "ServingGate", "*", "*", "gate.json"))
    gate = json.loads(Path(gate_file[0]).read_text())
    keys = ("count", "accuracy", "critical_recall")
    assert gate["sites"] == {site: {k: f[k] for k in keys} for site, f in summary["sites"].items()}
    assert any(f.startswith("site barcelona: accuracy = ") for f in summary["gate_failures"])

    # 2. Thresholds any model passes: ingestion and training come from the cache, the model is pushed.
    passing = config_for(
        workspace, "evaluation.min_accuracy=0.0", "evaluation.min_critical_recall=0.0", "evaluation.max_regression=1.0"
    )
    summary2, report_dir2 = run_local(passing)
    store = store_of(passing)
    cached = metadata_store_pb2.Execution.CACHED
    assert last_execution_state(store, "tfx.components.trainer.component.Trainer") == cached
    assert last_execution_state(store, "components.image_example_gen.ImageExampleGen") == cached
    assert summary2["blessed"] and summary2["pushed"]
    assert summary2["test_accuracy"] == summary["test_accuracy"]
    versions = glob.glob(os.path.join(passing.paths.serving_root, passing.model_name, "*", "saved_model.pb"))
    assert len(versions) == 1 and summary2["pushed_destination"] == os.path.dirname(versions[0])

    # The pushed model answers TF Serving's signature on real image bytes.
    served = tf.saved_model.load(os.path.dirname(versions[0])).signatures["serving_default"]
    files = [real_files(c, 1)[0] for c in CLASSES]
    outputs = served(**{SERVING_INPUT: tf.constant([f.read_bytes() for f in files])})
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)

    # ... and `bloodcell serve` serves the pushed version over gRPC with the same answers.
    base = os.path.join(passing.paths.serving_root, passing.model_name)
    running = start_server(passing.model_name, base, port=0, host="127.0.0.1")
    try:
        with ServingClient(f"127.0.0.1:{running.port}", passing.model_name) as client:
            predictions = client.predict([f.read_bytes() for f in files])
    finally:
        running.stop()
    assert {p.model_version for p in predictions} == {int(os.path.basename(summary2["pushed_destination"]))}
    np.testing.assert_allclose(
        [[p.probabilities[c] for c in CLASSES] for p in predictions], outputs["probabilities"].numpy(), atol=1e-5
    )

    # The shortcut audit ran on the same test split with the same model; the served model carries the
    # operating point (alert, calibration) and the model card sits beside it.
    audit = summary2["audit"]
    assert audit["clean"]["accuracy"] == pytest.approx(summary2["test_accuracy"])
    assert sum(g["count"] for g in audit["groups"].values()) == summary2["splits"]["test"]
    assert audit["sites"].keys() == summary2["sites"].keys()
    assert audit["single_site_classes"] == {"myeloblast": "munich"}
    assert set(audit["stress"]) == {"grayscale", "stain_normalised", "geometry_swapped"}
    point = summary2["operating_point"]
    assert point["recall"] == 1.0 and 0.0 < point["threshold"] <= 0.5
    critical_p = outputs["probabilities"].numpy()[:, CLASSES.index("myeloblast")]
    argmax_is_critical = outputs["probabilities"].numpy().argmax(axis=1) == CLASSES.index("myeloblast")
    np.testing.assert_array_equal(outputs["myeloblast_alert"].numpy(), (critical_p >= point["threshold"]) | argmax_is_critical)
    card = open(os.path.join(report_dir2, "model_card.md")).read()
    assert open(os.path.join(summary2["pushed_destination"], "assets.extra", "model_card.md")).read() == card
    assert f"Accuracy {100 * summary2['test_accuracy']:.2f}%" in card and f"{point['threshold']:.4f}" in card
    # The pushed model explains itself: a Grad-CAM map per image, at the CNN's input size.
    _, heatmap = explain_with_saved_model(summary2["pushed_destination"], files[0].read_bytes())
    assert heatmap.shape == (passing.preprocessing.image_size,) * 2 and 0.0 <= heatmap.min() <= heatmap.max() <= 1.0 + 1e-6

    # 3. TFMA cross-check: recompute accuracy and myeloblast recall from raw predictions on the test split.
    model_uri = sorted(store.get_artifacts_by_type("Model"), key=lambda a: a.id)[-1].uri
    examples_uri = sorted(store.get_artifacts_by_type("Examples"), key=lambda a: a.id)[-1].uri
    model = tf.saved_model.load(os.path.join(model_uri, "Format-Serving")).signatures["serving_examples"]
    serialized = list(
        tf.data.TFRecordDataset(glob.glob(os.path.join(examples_uri, "Split-test", "*.gz")), compression_type="GZIP")
    )
    spec = {"label": tf.io.FixedLenFeature([], tf.int64), "site": tf.io.FixedLenFeature([], tf.string)}
    parsed = [tf.io.parse_single_example(s, spec) for s in serialized]
    labels = np.array([int(p["label"]) for p in parsed])
    sites = np.array([p["site"].numpy().decode() for p in parsed])
    predicted = model(examples=tf.stack(serialized))["predicted_index"].numpy()
    critical = CLASSES.index("myeloblast")
    assert summary2["test_accuracy"] == pytest.approx(float(np.mean(predicted == labels)), abs=1e-6)
    for site, figures in summary2["sites"].items():
        assert figures["accuracy"] == pytest.approx(float(np.mean(predicted[sites == site] == labels[sites == site])))
    recall = float(np.mean(predicted[labels == critical] == critical))
    assert summary2["critical_recall"] == pytest.approx(recall, abs=1e-6)
    for k, name in enumerate(CLASSES):
        assert summary2["per_class"][name]["support"] == int(np.sum(labels == k))
    # The ServingGate scores the served model the same way TFMA scores the candidate.
    test_files = sorted(glob.glob(os.path.join(examples_uri, "Split-test", "*.gz")))
    scored = score_model(os.path.dirname(versions[0]), test_files, critical)
    assert scored == pytest.approx({"accuracy": summary2["test_accuracy"], "critical_recall": summary2["critical_recall"]})

    # 4. Nothing changed: the gate finds the candidate is the served model, nothing is pushed again.
    summary3, _ = run_local(passing)
    assert summary3["identical_to_served"] and not summary3["blessed"] and not summary3["pushed"]
    assert summary3["served_model"]["version"] == int(os.path.basename(summary2["pushed_destination"]))
    assert glob.glob(os.path.join(passing.paths.serving_root, passing.model_name, "*", "saved_model.pb")) == versions

    # 5. Run history from ML Metadata: three runs on the same data, one pushed.
    records = list_runs(metadata_path(passing))
    assert [(r.blessed, bool(r.pushed_version)) for r in records] == [(False, False), (True, True), (False, False)]
    assert records[1].pushed_version == os.path.basename(summary2["pushed_destination"])
    assert len({r.data_fingerprint for r in records}) == 1 and records[0].test_accuracy == summary["test_accuracy"]
    listed = CliRunner().invoke(app, ["runs", "--output-root", str(passing.paths.output_root), "--json"])
    assert [r["run_id"] for r in json.loads(listed.output)] == [r.run_id for r in records]
    compared = CliRunner().invoke(
        app, ["compare", records[0].run_id, records[2].run_id, "--output-root", str(passing.paths.output_root), "--json"]
    )
    deltas = {m["metric"]: m["delta"] for m in json.loads(compared.output)["metrics"]}
    assert deltas["test_accuracy"] == pytest.approx(summary3["test_accuracy"] - summary["test_accuracy"])

    # 6. MLflow: every run logged, tagged with its ML Metadata run id; the pushed model is registered.
    client = MlflowClient(tracking_uri(passing))
    experiment = client.get_experiment_by_name(passing.tracking.experiment)
    runs = {r.data.tags["tfx.pipeline_run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {r.run_id for r in records}
    pushed_run = runs[records[1].run_id]
    assert pushed_run.info.run_id == summary2["tracking"]["run_id"]
    assert pushed_run.data.metrics["test_accuracy"] == pytest.approx(summary2["test_accuracy"])
    assert pushed_run.data.metrics["blessed"] == 1.0 and runs[records[0].run_id].data.metrics["blessed"] == 0.0
    assert "accuracy = " in runs[records[0].run_id].data.tags["gate_failures"]
    assert pushed_run.data.params["evaluation.min_accuracy"] == "0.0"
    assert len(client.get_metric_history(pushed_run.info.run_id, "val_loss")) == summary2["epochs_trained"]
    logged = {a.path for a in client.list_artifacts(pushed_run.info.run_id)}
    assert {"model_card.md", "audit.json", "confusion_matrix.png", "training_curves.png", "ingestion"} <= logged
    version = client.get_model_version_by_alias(passing.model_name, "serving")
    assert version.source == summary2["pushed_destination"] and version.run_id == pushed_run.info.run_id


def test_a_held_out_site_is_scored_per_class_and_never_pushed(workspace, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bloodcell"])
    data, out = workspace
    result = CliRunner().invoke(
        app,
        ["run", *[a for d in data for a in ("--data-root", str(d))], "--hold-out-site", "munich-extra",
         "--output-root", str(out / "holdout"), "--epochs", "1",
         "--set", "evaluation.min_accuracy=0", "--set", "evaluation.min_critical_recall=0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    config = config_for(workspace, f"paths.output_root={out / 'holdout'}")
    summary, report_dir = latest_summary(config)
    held = summary["hold_out"]
    assert held["name"] == "munich-extra" and held["pooled"]["count"] == sum(1 for _ in data[2].glob("*/*"))
    assert set(held["recall"]) == set(CLASSES)  # training still had every class (from the other roots)
    assert held["called_critical"]["monocyte"] == held["pooled"]["confusion_matrix"][2][CLASSES.index("myeloblast")]
    assert set(held["sites"]) == {"munich"}
    assert summary["splits"]["test"] == sum(f["count"] for f in summary["sites"].values())
    assert not summary["blessed"] and not summary["pushed"]
    assert summary["gate_failures"] == ["hold-out run: trained without 'munich-extra', for measurement only, not for serving"]
    assert "held out 'munich-extra' (never trained on)" in result.output
    assert "## Held out: `munich-extra`" in open(os.path.join(report_dir, "model_card.md")).read()


def test_two_trial_search_on_a_tiny_real_subset(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bloodcell"])
    data = make_real_subset(tmp_path / "data", per_class=12)
    config = load_config(
        DEFAULT_CONFIG,
        [
            f"paths.data_roots={data}",
            f"paths.output_root={tmp_path / 'out'}",
            f"paths.serving_root={tmp_path / 'out' / 'serving'}",
            "training.epochs=1",
            "tuning.enabled=true",
            "tuning.max_trials=2",
            "tuning.epochs=1",
        ],
    )
    summary, report_dir = run_local(config)
    with open(os.path.join(report_dir, "tuner_trials.csv")) as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2
    assert {"trial_id", "score", "filters", "image_size", "dropout", "learning_rate", "augmentation_strength"} <= set(trials[0])
    # The Trainer trained with the best trial's values: the served input size is the best image_size.
    # (the trials are listed best first)
    model_uri = store_of(config).get_artifacts_by_type("Model")[-1].uri
    explain = tf.saved_model.load(os.path.join(model_uri, "Format-Serving")).signatures["explain"]
    heatmap = explain(**{SERVING_INPUT: tf.constant([real_files("basophil", 1)[0].read_bytes()])})["heatmap"]
    assert heatmap.shape[1] == int(trials[0]["image_size"])  # the CNN's input side
    client = MlflowClient(tracking_uri(config))
    assert "tuner_trials.csv" in {a.path for a in client.list_artifacts(summary["tracking"]["run_id"])}

    # The ablation script of docs/robustness.md trains and audits with the pipeline's code on this split.
    examples_uri = store_of(config).get_artifacts_by_type("Examples")[-1].uri
    overrides = ["training.epochs=1", "preprocessing.image_size=32"]
    done = subprocess.run(
        [sys.executable, "benchmarks/train_and_audit.py", examples_uri, "--output", str(tmp_path / "ablation")]
        + [arg for o in overrides for arg in ("--set", o)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    audit = json.loads((tmp_path / "ablation" / "audit.json").read_text())
    assert set(audit["stress"]) == {"grayscale", "stain_normalised", "geometry_swapped"}
    assert audit["clean"]["count"] == sum(g["count"] for g in audit["groups"].values())
    row = done.stdout.strip().splitlines()[-1]
    assert row.startswith(f"| {' '.join(overrides)} | {audit['clean']['accuracy']:.4f} | ")
    explain32 = tf.saved_model.load(str(tmp_path / "ablation" / "model")).signatures["explain"]
    assert explain32(**{SERVING_INPUT: tf.constant([real_files("basophil", 1)[0].read_bytes()])})["heatmap"].shape[1] == 32
