"""The real pipeline on a small real subset: gate blocks, cache reuses, gate passes and pushes, and
TFMA's figures agree with a recomputation from raw predictions, and an unchanged model is not pushed twice."""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import os
import re
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
from tfx.orchestration import metadata
from typer.testing import CliRunner

from cli.main import app
from components.experiment_tracking import REGISTRY_ALIAS
from components.serving_gate import score_model
from contracts import features
from contracts.artifacts import AUDIT_FILE, GATE_FILE, MODEL_CARD_FILE, SERVING_FORMAT, SUMMARY_FILE, example_files
from contracts.config import DEFAULT_CONFIG, Config, load_config
from contracts.run_summary import RunSummary
from contracts.signatures import (
    EXAMPLES_INPUT,
    EXAMPLES_SIGNATURE,
    OUT_OF_SCOPE,
    OUT_OF_SCOPE_PROBABILITY,
    PREDICTED_INDEX,
    PROBABILITIES,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    alert_output,
)
from contracts.site_models import MODEL_CONFIG_FILE, read_model_server_config
from pipelines.configs import tracking_uri
from pipelines.local_runner import latest_summary, metadata_path, run_local
from pipelines.run_history import list_runs
from serving.client import ServingClient
from serving.explain import explain_with_saved_model
from serving.model_server import start_server
from tests.helpers import CLASSES, DATA_ROOTS, make_real_subset, make_site_subsets, real_files, subset_roots

pytestmark = pytest.mark.slow


# Real images of the three configured sites: the five-class folder, Barcelona's extra classes, Munich's, and
# the marrow site's blasts, monocytes and neutrophils (judged by its own bars, config `evaluation.site_bars`).
PER_CLASS = {"blood-cells-5class": 40, "barcelona-extra": 12, "munich-extra": 10, "mll-marrow": 8, "other-cells": 6}
BLOODCELL = os.path.join(os.path.dirname(sys.executable), "bloodcell")
MARROW = Path(next(r.path for r in DATA_ROOTS if r.name == "mll-marrow"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return make_site_subsets(root / "data", PER_CLASS), root / "out"


def config_for(workspace, *overrides):
    data, out = workspace
    return load_config(
        DEFAULT_CONFIG,
        [
            f"paths.data_roots={json.dumps([dataclasses.asdict(r) for r in subset_roots(data)])}",
            f"paths.output_root={out}",
            f"paths.serving_root={out / 'serving'}",
            "training.epochs=2",
            *overrides,
        ],
    )


def run_cli_in_subprocess(config) -> subprocess.CompletedProcess:
    """`bloodcell run` in its own process on the config's data and output roots."""
    data = json.dumps([dataclasses.asdict(r) for r in config.paths.data_roots])
    sets = [
        f"paths.data_roots={data}",
        f"paths.output_root={config.paths.output_root}",
        f"paths.serving_root={config.paths.serving_root}",
    ]
    command = [BLOODCELL, "run", *(a for s in sets for a in ("--set", s))]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def log_lines(text: str) -> list[str]:
    """Lines as a log file has them (split at "\n" only: a progress bar redraws its line with "\r"), each
    without its timestamp."""
    return [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line) for line in text.rstrip("\n").split("\n")]


def store_of(config):
    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path(config)))


def last_execution_state(store, type_name):
    executions = sorted(store.get_executions_by_type(type_name), key=lambda e: e.id)
    return executions[-1].last_known_state


@pytest.fixture(scope="module")
def no_pytest_argv():
    """TFX executors parse sys.argv with absl flags, which would read pytest's own options (-v)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["bloodcell"])
        yield


@pytest.fixture(scope="module")
def blocked(workspace, no_pytest_argv):
    """Phase 1: a bar no model can pass, while a second `bloodcell run` on the same output root is tried."""
    config = config_for(workspace, "evaluation.min_accuracy=1.01")
    second: dict = {}
    concurrent = threading.Thread(target=lambda: second.update(done=run_cli_in_subprocess(config)))
    concurrent.start()
    summary, report_dir = run_local(config)
    concurrent.join()
    return Phase(config, summary, report_dir, second["done"])


@pytest.fixture(scope="module")
def pushed(blocked, workspace):
    """Phase 2: thresholds any model passes, on the same data: the model is pushed, and a site with unlabelled
    images of its own (real marrow cells, one folder) is adapted to it by the pipeline's SiteAdapter."""
    site = workspace[1].parent / "paris-unlabelled"
    site.mkdir(exist_ok=True)
    for name in ("monocyte", "myeloblast", "seg_neutrophil"):
        for f in real_files(name, 8, MARROW):
            (site / f"{name}-{f.name}").write_bytes(f.read_bytes())
    config = config_for(
        workspace, "evaluation.min_accuracy=0.0", "evaluation.min_critical_recall=0.0", "evaluation.max_regression=1.0",
        'evaluation.site_bars={"mll-marrow": {"min_accuracy": 0.0, "min_critical_recall": 0.0}}',
        "evaluation.min_out_of_scope_caught=0.0", "evaluation.max_out_of_scope_alerts=1.0",
        "evaluation.max_in_scope_called_out=1.0", f'adaptation.sites={{"paris": "{site}"}}', "adaptation.min_images=20",
        "adaptation.max_confident_alerts_lost=1.0", "adaptation.max_alert_share_drop=1.0", "adaptation.max_drift=10",
    )  # fmt: skip
    return Phase(config, *run_local(config))


@pytest.fixture(scope="module")
def unchanged(pushed):
    """Phase 3: the same run again: nothing changed."""
    return Phase(pushed.config, *run_local(pushed.config))


@dataclasses.dataclass
class Phase:
    config: Config
    summary: RunSummary
    report_dir: str
    concurrent: subprocess.CompletedProcess | None = None

    def versions(self) -> list[str]:
        return glob.glob(os.path.join(self.config.paths.serving_root, self.config.model_name, "*", "saved_model.pb"))


def test_a_second_run_on_the_same_output_root_is_refused_at_once(blocked):
    assert blocked.concurrent.returncode == 1, blocked.concurrent.stderr[-2000:]
    assert f"is in use by another run (pid {os.getpid()}, started " in " ".join(blocked.concurrent.stderr.split())


def test_a_bar_no_model_passes_blocks_the_push_and_says_why(blocked, workspace):
    summary, config = blocked.summary, blocked.config
    data, _ = workspace
    found = sum(1 for root in data for _ in root.glob("*/*"))
    assert sum(summary.splits.values()) == found and min(summary.splits.values()) > 0
    assert summary.ingestion == {"found": found, "ingested": found, "duplicates": 0, "rejected": 0}
    assert not summary.blessed and not summary.pushed
    bar = f"required >= {config.evaluation.min_accuracy}"
    assert any(f.startswith("accuracy = ") and bar in f for f in summary.gate_failures)
    assert not os.path.exists(os.path.join(config.paths.serving_root, config.model_name))
    for name in (SUMMARY_FILE, "classification_report.txt", "confusion_matrix.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(blocked.report_dir, name)) > 0
    assert sum(map(sum, summary.confusion_matrix)) == summary.splits["test"]
    assert summary.epochs_trained == config.training.epochs


def test_every_site_is_scored_in_the_summary_and_in_gate_json(blocked):
    """TFMA's site slice: every site's test images, counted once, and the gate judges each site."""
    summary = blocked.summary
    assert set(summary.sites) == {"barcelona", "munich", "mll-marrow"}
    assert sum(f["count"] for f in summary.sites.values()) == summary.splits["test"]
    assert summary.sites["barcelona"]["critical_recall"] is None  # no myeloblast at this site
    gate_file = glob.glob(os.path.join(blocked.config.paths.output_root, "pipelines", "*", "ServingGate", "*", "*", GATE_FILE))
    gate = json.loads(Path(gate_file[0]).read_text())
    keys = ("count", "accuracy", "critical_recall")
    assert gate["sites"] == {site: {k: f[k] for k in keys} for site, f in summary.sites.items()}
    assert gate["candidate"]["count"] == summary.splits["test"]  # TFMA scored every test image
    assert any(f.startswith("site barcelona: accuracy = ") for f in summary.gate_failures)
    # The other cells' test split (Barcelona's ig and platelets, the marrow's lymphocytes and eosinophils),
    # scored as served and barred per site.
    outside = gate["out_of_scope"]
    assert set(outside["sites"]) == {"barcelona", "mll-marrow"} and summary.out_of_scope == outside
    assert sum(f["images"] for f in outside["sites"].values()) == summary.splits["out_of_scope_test"] > 0
    assert {name.split(" @ ")[0] for name in outside["cell_types"]} <= {"eosinophil", "ig", "lymphocyte", "platelet"}
    assert set(outside["in_scope_called_out"]) == set(summary.sites)
    bars = blocked.config.evaluation.out_of_scope_bars()
    for site, f in outside["sites"].items():
        caught = f"site {site}: out-of-scope cells caught (out of scope or review) = {f['caught']:.4f}"
        assert any(x.startswith(caught) for x in summary.gate_failures) == (f["caught"] < bars.min_out_of_scope_caught)
    # The marrow site is held to its own bars, the others to the run's.
    assert gate["site_bars"] == {"mll-marrow": {"min_accuracy": 0.85, "min_critical_recall": 0.97}}
    own = ("site mll-marrow: accuracy", "site mll-marrow: myeloblast recall")
    marrow = [f for f in summary.gate_failures if f.startswith(own)]
    assert all(f.endswith(("required >= 0.85", "required >= 0.97")) for f in marrow)
    figures = summary.sites["mll-marrow"]
    recall = figures["critical_recall"]  # None where the subset's split left no marrow blast in the test split
    assert bool(marrow) == (figures["accuracy"] < 0.85 or (recall is not None and recall < 0.97))


def test_passing_bars_reuse_ingestion_and_training_and_push_the_model(blocked, pushed):
    store = store_of(pushed.config)
    cached = metadata_store_pb2.Execution.CACHED
    assert last_execution_state(store, "tfx.components.trainer.component.Trainer") == cached
    assert last_execution_state(store, "components.image_example_gen.ImageExampleGen") == cached
    assert pushed.summary.blessed and pushed.summary.pushed
    assert pushed.summary.test_accuracy == blocked.summary.test_accuracy
    versions = pushed.versions()
    assert len(versions) == 1 and pushed.summary.pushed_destination == os.path.dirname(versions[0])


def test_the_pipeline_adapts_each_configured_site_to_the_pushed_model(pushed):
    store = store_of(pushed.config)
    [artifact] = store.get_artifacts_by_type("bloodcell.SiteAdaptations")
    outcome = json.loads(open(os.path.join(artifact.uri, "adaptations.json")).read())
    record = outcome["sites"]["paris"]["record"]
    assert outcome["pushed"] and record["images_used"] == 24 and record["base_version"] == int(pushed.summary.pushed_version)
    assert record["base_model"] == pushed.summary.pushed_destination
    root = pushed.config.paths.serving_root
    assert os.path.isfile(os.path.join(root, "bloodcell-site-paris", str(record["version"]), "saved_model.pb"))
    listed = read_model_server_config(os.path.join(root, MODEL_CONFIG_FILE))
    assert sorted(listed) == ["bloodcell", "bloodcell-site-paris"]
    run = MlflowClient(tracking_uri(pushed.config)).get_run(outcome["sites"]["paris"]["tracking"]["run_id"])
    assert run.data.tags["site"] == "paris" and run.data.metrics["images_used"] == 24


def test_the_pushed_model_answers_in_process_and_over_grpc_alike(pushed):
    destination, model_name = pushed.summary.pushed_destination, pushed.config.model_name
    served = tf.saved_model.load(destination).signatures[SERVING_SIGNATURE]
    files = [real_files(c, 1)[0] for c in CLASSES]
    outputs = served(**{SERVING_INPUT: tf.constant([f.read_bytes() for f in files])})
    np.testing.assert_allclose(outputs[PROBABILITIES].numpy().sum(axis=1), 1.0, atol=1e-5)
    running = start_server(model_name, os.path.dirname(destination), port=0, host="127.0.0.1")
    try:
        with ServingClient(f"127.0.0.1:{running.port}", model_name) as client:
            predictions = client.predict([f.read_bytes() for f in files])
    finally:
        running.stop()
    assert {p.model_version for p in predictions} == {int(pushed.summary.pushed_version)}
    np.testing.assert_allclose(
        [[p.probabilities[c] for c in CLASSES] for p in predictions], outputs[PROBABILITIES].numpy(), atol=1e-5
    )
    # The served alert is the operating point the run calibrated.
    point = pushed.summary.operating_point
    critical = pushed.config.critical_index
    probabilities = outputs[PROBABILITIES].numpy()
    expected = (probabilities[:, critical] >= point["threshold"]) | (probabilities.argmax(axis=1) == critical)
    outside = outputs[OUT_OF_SCOPE_PROBABILITY].numpy() > point["out_of_scope_threshold"]
    np.testing.assert_array_equal(outputs[OUT_OF_SCOPE].numpy(), outside)
    np.testing.assert_array_equal(outputs[alert_output(pushed.config.critical_class)].numpy(), expected & ~outside)


def test_the_audit_operating_point_model_card_and_explanation_come_with_the_push(pushed):
    summary, config = pushed.summary, pushed.config
    audit = summary.audit
    assert audit["clean"]["accuracy"] == pytest.approx(summary.test_accuracy)
    assert sum(g["count"] for g in audit["groups"].values()) == summary.splits["test"]
    assert audit["sites"].keys() == summary.sites.keys()
    # Under 30 training images of a class from a site do not make it a source: on this small subset each
    # class has one (the marrow site's 8 per class, Munich's 10, Barcelona's 12 neutrophils are too few).
    single = {"basophil": "barcelona", "erythroblast": "barcelona", "monocyte": "barcelona"}
    assert audit["single_site_classes"] == single | {config.critical_class: "munich", "seg_neutrophil": "munich"}
    assert set(audit["stress"]) == {"grayscale", "stain_normalised", "geometry_swapped", "look_swapped", "stain_swapped"}
    point = summary.operating_point
    assert point["recall"] >= config.screening.alert_recall and 0.0 < point["threshold"] <= 0.5
    card = open(os.path.join(pushed.report_dir, MODEL_CARD_FILE)).read()
    assert open(os.path.join(summary.pushed_destination, "assets.extra", MODEL_CARD_FILE)).read() == card
    assert f"Accuracy {100 * summary.test_accuracy:.2f}%" in card and f"{point['threshold']:.4f}" in card
    heatmap = explain_with_saved_model(summary.pushed_destination, real_files(CLASSES[0], 1)[0].read_bytes()).heatmap
    size = config.preprocessing.image_size
    assert heatmap.shape == (size, size) and 0.0 <= heatmap.min() <= heatmap.max() <= 1.0 + 1e-6


def test_tfma_figures_and_the_gate_agree_with_a_recomputation_from_raw_predictions(pushed):
    summary, store = pushed.summary, store_of(pushed.config)
    model_uri = sorted(store.get_artifacts_by_type("Model"), key=lambda a: a.id)[-1].uri
    examples_uri = sorted(store.get_artifacts_by_type("Examples"), key=lambda a: a.id)[-1].uri
    model = tf.saved_model.load(os.path.join(model_uri, SERVING_FORMAT)).signatures[EXAMPLES_SIGNATURE]
    test_files = example_files(examples_uri, "test")
    serialized = list(tf.data.TFRecordDataset(test_files, compression_type="GZIP"))
    spec = {features.LABEL: tf.io.FixedLenFeature([], tf.int64), features.SITE: tf.io.FixedLenFeature([], tf.string)}
    parsed = [tf.io.parse_single_example(s, spec) for s in serialized]
    labels = np.array([int(p[features.LABEL]) for p in parsed])
    sites = np.array([p[features.SITE].numpy().decode() for p in parsed])
    predicted = model(**{EXAMPLES_INPUT: tf.stack(serialized)})[PREDICTED_INDEX].numpy()
    critical = pushed.config.critical_index
    assert summary.test_accuracy == pytest.approx(float(np.mean(predicted == labels)), abs=1e-6)
    for site, figures in summary.sites.items():
        assert figures["accuracy"] == pytest.approx(float(np.mean(predicted[sites == site] == labels[sites == site])))
    recall = float(np.mean(predicted[labels == critical] == critical))
    assert summary.critical_recall == pytest.approx(recall, abs=1e-6)
    for k, name in enumerate(CLASSES):
        assert summary.per_class[name]["support"] == int(np.sum(labels == k))
    # The ServingGate scores the served model the same way TFMA scores the candidate.
    scored = score_model(summary.pushed_destination, test_files, critical)
    assert scored == pytest.approx({"accuracy": summary.test_accuracy, "critical_recall": summary.critical_recall})


def test_an_unchanged_model_is_not_pushed_again(pushed, unchanged):
    summary = unchanged.summary
    assert summary.identical_to_served and not summary.blessed and not summary.pushed
    assert summary.served_model["version"] == int(pushed.summary.pushed_version)
    assert unchanged.versions() == pushed.versions()


def test_run_history_lists_and_compares_the_three_runs(blocked, pushed, unchanged):
    output_root = str(pushed.config.paths.output_root)
    records = list_runs(metadata_path(pushed.config))
    assert [(r.blessed, bool(r.pushed_version)) for r in records] == [(False, False), (True, True), (False, False)]
    assert records[1].pushed_version == pushed.summary.pushed_version
    assert len({r.data_fingerprint for r in records}) == 1 and records[0].test_accuracy == blocked.summary.test_accuracy
    listed = CliRunner().invoke(app, ["runs", "--output-root", output_root, "--json"])
    assert [r["run_id"] for r in json.loads(listed.output)] == [r.run_id for r in records]
    table = CliRunner().invoke(app, ["runs", "--output-root", output_root], env={"COLUMNS": "80"})
    whole = [r.run_id for r in records] + [records[1].pushed_version] + [f"{r.test_accuracy:.4f}" for r in records]
    assert all(text in table.output for text in whole), table.output  # in an 80-column terminal
    assert max(len(line) for line in table.output.splitlines()) <= 80
    compared = CliRunner().invoke(app, ["compare", records[0].run_id, records[2].run_id, "--output-root", output_root, "--json"])
    deltas = {m["metric"]: m["delta"] for m in json.loads(compared.output)["metrics"]}
    assert deltas["test_accuracy"] == pytest.approx(unchanged.summary.test_accuracy - blocked.summary.test_accuracy)


def test_mlflow_logged_every_run_and_registered_the_pushed_model(blocked, pushed, unchanged):
    config, summary = pushed.config, pushed.summary
    records = list_runs(metadata_path(config))
    client = MlflowClient(tracking_uri(config))
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    logged = client.search_runs([experiment.experiment_id])
    adaptations = [r for r in logged if r.data.tags.get("kind") == "site_adaptation"]  # the SiteAdapter's
    runs = {r.data.tags["tfx.pipeline_run_id"]: r for r in logged if r not in adaptations}
    assert set(runs) == {r.run_id for r in records} and [r.data.tags["site"] for r in adaptations] == ["paris"]
    pushed_run = runs[records[1].run_id]
    assert pushed_run.info.run_id == summary.tracking["run_id"]
    assert pushed_run.data.metrics["test_accuracy"] == pytest.approx(summary.test_accuracy)
    assert pushed_run.data.metrics["blessed"] == 1.0 and runs[records[0].run_id].data.metrics["blessed"] == 0.0
    assert "accuracy = " in runs[records[0].run_id].data.tags["gate_failures"]
    assert pushed_run.data.params["evaluation.min_accuracy"] == str(config.evaluation.min_accuracy)
    assert len(client.get_metric_history(pushed_run.info.run_id, "val_loss")) == summary.epochs_trained
    logged = {a.path for a in client.list_artifacts(pushed_run.info.run_id)}
    assert {MODEL_CARD_FILE, AUDIT_FILE, "confusion_matrix.png", "training_curves.png", "ingestion"} <= logged
    version = client.get_model_version_by_alias(config.model_name, REGISTRY_ALIAS)
    assert version.source == summary.pushed_destination and version.run_id == pushed_run.info.run_id


def test_a_held_out_site_is_scored_per_class_and_never_pushed_with_a_clean_log(workspace):
    """`bloodcell run --hold-out-site` as a user types it; its log says each thing once."""
    data, out = workspace
    command = [
        BLOODCELL, "run", *[a for d in data[:-1] for a in ("--data-root", str(d))], "--out-of-scope-root", str(data[-1]),
        "--hold-out-site", "munich-extra",
        "--output-root", str(out / "holdout"), "--epochs", "1",
        "--set", "evaluation.min_accuracy=0", "--set", "evaluation.min_critical_recall=0",
        "--set", 'evaluation.site_bars={"mll-marrow": {"min_accuracy": 0, "min_critical_recall": 0}}',
        "--set", "evaluation.min_out_of_scope_caught=0", "--set", "evaluation.max_out_of_scope_alerts=1",
        "--set", "evaluation.max_in_scope_called_out=1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, timeout=1200)  # bytes: "\r" stays a redraw, not a line
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr[-3000:]
    log = log_lines(stderr)
    repeated = {line: n for line, n in collections.Counter(log + log_lines(stdout)).items() if n > 3}
    assert repeated == {}, stderr[-3000:]
    for component in ("ImageExampleGen", "Trainer", "HoldOutEvaluator", "ServingGate", "RunReport"):
        assert f"INFO {component} started" in log
        assert any(re.fullmatch(rf"INFO {component} finished in \d+ s", line) for line in log), component
    config = config_for(workspace, f"paths.output_root={out / 'holdout'}")
    summary, report_dir = latest_summary(config)
    held = summary.hold_out
    assert held["name"] == "munich-extra" and held["pooled"]["count"] == sum(1 for _ in data[2].glob("*/*"))
    assert set(held["recall"]) == set(CLASSES)  # training still had every class (from the other roots)
    assert held["called_critical"]["monocyte"] == held["pooled"]["confusion_matrix"][2][CLASSES.index("myeloblast")]
    assert set(held["sites"]) == {"munich"}
    assert summary.splits["test"] == sum(f["count"] for f in summary.sites.values())
    assert not summary.blessed and not summary.pushed
    assert summary.gate_failures == ["hold-out run: trained without 'munich-extra', for measurement only, not for serving"]
    assert "held out 'munich-extra' (never trained on)" in stdout
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
    assert "tuner_trials.csv" in {a.path for a in client.list_artifacts(summary.tracking["run_id"])}

    # The ablation script of docs/robustness.md trains and audits with the pipeline's code on this split.
    examples_uri = store_of(config).get_artifacts_by_type("Examples")[-1].uri
    overrides = ["training.epochs=1", "preprocessing.image_size=32"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_and_audit", examples_uri, "--output", str(tmp_path / "ablation")]
        + [arg for o in overrides for arg in ("--set", o)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    audit = json.loads((tmp_path / "ablation" / "audit.json").read_text())
    assert set(audit["stress"]) == {"grayscale", "stain_normalised", "geometry_swapped", "look_swapped", "stain_swapped"}
    assert audit["clean"]["count"] == sum(g["count"] for g in audit["groups"].values())
    # The served alert is raised at least whenever the top class is the critical one.
    assert all(v["critical_alert_recall"] >= v["critical_recall"] for v in [audit["clean"], *audit["stress"].values()])
    row = done.stdout.strip().splitlines()[-1]
    assert row.startswith(f"| {' '.join(overrides)} | {audit['clean']['accuracy']:.4f} | ")
    explain32 = tf.saved_model.load(str(tmp_path / "ablation" / "model")).signatures["explain"]
    assert explain32(**{SERVING_INPUT: tf.constant([real_files("basophil", 1)[0].read_bytes()])})["heatmap"].shape[1] == 32


def test_hold_out_benchmark_trains_without_a_root_and_scores_it(blocked, workspace, tmp_path):
    """benchmarks/hold_out_root.py (docs/robustness.md) on a run's split: every image of the named root is
    held out, whatever its split, and scored per class, but for one per class trained on (--onboard 1)."""
    data, _ = workspace
    examples_uri = store_of(blocked.config).get_artifacts_by_type("Examples")[0].uri
    in_splits = [tf.train.Example.FromString(r.numpy()) for s in ("train", "eval", "test")
                 for r in tf.data.TFRecordDataset(example_files(examples_uri, s), compression_type="GZIP")]  # fmt: skip
    root = data[1].name
    paths = [e.features.feature[features.RELPATH].bytes_list.value[0].decode() for e in in_splits]
    in_root = [e for e, path in zip(in_splits, paths, strict=True) if path.startswith(root + "/")]
    onboarded = len({e.features.feature[features.LABEL].int64_list.value[0] for e in in_root})
    expected = len(in_root) - onboarded
    overrides = ["training.epochs=1", "preprocessing.image_size=32"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.hold_out_root", examples_uri, root, "--output", str(tmp_path / "bench")]
        + ["--onboard", "1"] + [arg for o in overrides for arg in ("--set", o)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"onboarded: {onboarded} images of {root} trained on (1 per class)" in done.stdout
    assert expected > 0 and f"held out {root}: {expected} images, accuracy " in done.stdout
    held_lines = done.stdout.split(f"held out {root}:")[1].splitlines()[1:]
    assert {line.split()[0] for line in held_lines} <= set(CLASSES) and held_lines
    assert "test split without it: " in done.stdout and (tmp_path / "bench" / "model" / "saved_model.pb").exists()


def test_train_step_benchmark_times_the_stream_and_each_kernel_and_precision_setting(blocked):
    """benchmarks/train_step.py (docs/results.md) times the Trainer's own training stream and CNN on a run's
    split in a process without oneDNN's kernels, one with them and one at training.precision auto."""
    examples_uri = store_of(blocked.config).get_artifacts_by_type("Examples")[0].uri
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", examples_uri, "--steps", "2", "--epochs", "1"]
        + ["--set", "preprocessing.image_size=32", "--set", "training.batch_size=4"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    names = [line.split(":")[0].removesuffix(" (bfloat16)") for line in lines]
    settings = (("0", "float32"), ("1", "float32"), ("1", "auto"))
    assert names == [f"TF_ENABLE_ONEDNN_OPTS={onednn}, training.precision={precision}" for onednn, precision in settings]
    assert all(float(line.split(": ")[1].split()[0]) > 0 and " s per epoch of " in line for line in lines)
    assert all(float(line.split("the input stream alone ")[1].split()[0]) > 0 for line in lines)


def test_leave_one_site_out_trains_without_the_site_scores_it_and_pushes_nothing(blocked, tmp_path):
    """benchmarks/leave_one_site_out.py on a run's split: the marrow site held out of training, every one of its
    images (all splits) scored per class, the table written as JSON and Markdown, no model pushed."""
    examples_uri = store_of(blocked.config).get_artifacts_by_type("Examples")[0].uri
    rows = [tf.train.Example.FromString(r.numpy()) for s in ("train", "eval", "test")
            for r in tf.data.TFRecordDataset(example_files(examples_uri, s), compression_type="GZIP")]  # fmt: skip
    marrow = [e for e in rows if e.features.feature[features.SITE].bytes_list.value[0] == b"mll-marrow"]
    out = tmp_path / "loso"
    overrides = ["training.epochs=1", "preprocessing.image_size=32"]
    served = os.path.join(blocked.config.paths.serving_root, blocked.config.model_name, "*")
    versions = sorted(glob.glob(served))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.leave_one_site_out", examples_uri, "--output", str(out), "--site", "mll-marrow"]
        + [arg for o in overrides for arg in ("--set", o)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads((out / "loso.json").read_text())
    (site,) = table["sites"]
    assert site["site"] == "mll-marrow" and site["images"] == len(marrow) == 3 * PER_CLASS["mll-marrow"]
    assert {name: c["images"] for name, c in site["classes"].items()} == dict.fromkeys(
        ["monocyte", "myeloblast", "seg_neutrophil"], PER_CLASS["mll-marrow"]
    )
    for name, figures in site["classes"].items():  # every image right or called something else, once
        assert figures["right"] + sum(figures["called_instead"].values()) == figures["images"]
        assert site["recall"][name] == figures["right"] / figures["images"]
    assert site["untrained_classes"] == [] and 0 <= site["alert_rate_non_critical"] <= 1
    assert "| `mll-marrow` | 24 | " in (out / "loso.md").read_text() and "| `mll-marrow` | 24 | " in done.stdout
    assert (out / "mll-marrow" / "model" / "saved_model.pb").exists()
    assert sorted(glob.glob(served)) == versions  # nothing pushed
    held_out_sha = {e.features.feature[features.SHA256].bytes_list.value[0] for e in marrow}
    trained = tf.data.TFRecordDataset(str(out / "mll-marrow" / "train.gz"), compression_type="GZIP")
    trained_on = [tf.train.Example.FromString(r.numpy()) for r in trained]
    assert trained_on and not held_out_sha & {e.features.feature[features.SHA256].bytes_list.value[0] for e in trained_on}
    # The other sites' out-of-scope cells are learnt as in the pipeline; the marrow's are held out with it.
    outside = [e for e in trained_on if e.features.feature[features.LABEL_NAME].bytes_list.value[0] == b"out_of_scope"]
    assert outside and {e.features.feature[features.SITE].bytes_list.value[0] for e in outside} == {b"barcelona"}
