"""Kubeflow: the compiled pipeline (loaded by the kfp SDK) and `bloodcell kfp` against a KFP API test double."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest
import yaml
from kfp import components
from typer.testing import CliRunner

from cli.main import app
from contracts.data_roots import DataRoot, roots_from_json, roots_to_json
from pipelines.configs import trainer_config
from pipelines.kfp_client import KfpError, validate_cron
from pipelines.kfp_launcher import task_order
from tests.helpers import CONFIG, free_port
from tests.helpers.kfp_double import API, FakeKfp, serve

runner = CliRunner()
STEPS = [
    "ImageExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate",
    "Trainer", "Evaluator", "ShortcutAudit", "ServingGate", "Pusher", "RunReport",
]  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    result = runner.invoke(app, ["compile", "--target", "kubeflow", "-o", str(path), "--image", "registry.example/bloodcell:1"])
    assert result.exit_code == 0, result.output
    assert "11 steps" in result.output and "min_critical_recall = 0.99" in result.output
    return path


def test_compiled_pipeline_loads_in_kfp_with_all_steps_in_order(compiled):
    component = components.load_component_from_file(str(compiled))
    assert component.name == CONFIG.pipeline_name
    tasks = {name: task for name, task in component.pipeline_spec.root.dag.tasks.items()}
    assert set(tasks) == set(STEPS)  # no Resolver node: the open-source KFP v2 backend has none
    spec, platform = yaml.safe_load_all(compiled.read_text())
    for name, task in spec["root"]["dag"]["tasks"].items():  # STEPS is an order the DAG allows
        assert all(STEPS.index(dep) < STEPS.index(name) for dep in task.get("dependentTasks", [])), name
    order = task_order(spec["root"]["dag"]["tasks"])
    assert order.index("AnomaliesGate") < order.index("Trainer") < order.index("Evaluator") < order.index("ServingGate")
    assert order.index("ServingGate") < order.index("Pusher") < order.index("RunReport")


def test_images_parameters_caching_and_volumes(compiled):
    spec, platform = yaml.safe_load_all(compiled.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/bloodcell:1"}
    for executor in executors.values():  # the cluster's Beam options reach every step
        assert set(CONFIG.kubeflow.beam_pipeline_args) <= set(executor["container"]["args"])
    assert spec["defaultPipelineRoot"] == CONFIG.kubeflow.pipeline_root  # not KFP's minio:// default
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v["defaultValue"] for k, v in parameters.items() if k != "trainer_config"} == {
        "data_roots": roots_to_json(CONFIG.kubeflow.data_roots),
        "min_accuracy": CONFIG.evaluation.min_accuracy,
        "min_critical_recall": CONFIG.evaluation.min_critical_recall,
        "max_regression": CONFIG.evaluation.max_regression,
        "site_bars": json.dumps(CONFIG.evaluation.site_bars, sort_keys=True),
        "out_of_scope_bars": json.dumps(dataclasses.asdict(CONFIG.evaluation.out_of_scope_bars())),
    }
    assert json.loads(parameters["trainer_config"]["defaultValue"]) == trainer_config(CONFIG).as_dict()
    tasks = spec["root"]["dag"]["tasks"]
    wired = {
        ("ImageExampleGen", "data_roots_json"): "data_roots",
        ("ServingGate", "min_critical_recall"): "min_critical_recall",
        ("ServingGate", "max_regression"): "max_regression",
        ("ServingGate", "site_bars_json"): "site_bars",
        ("ServingGate", "out_of_scope_bars_json"): "out_of_scope_bars",
        ("Trainer", "custom_config"): "trainer_config",
    }
    for (task, name), parameter in wired.items():
        assert tasks[task]["inputs"]["parameters"][name] == {"componentInputParameter": parameter}
    run_fn = tasks["Trainer"]["inputs"]["parameters"]["run_fn"]["runtimeValue"]["constant"]
    assert run_fn == "training.trainer_module.run_fn"  # the image has the project installed
    serving_dir = tasks["ServingGate"]["inputs"]["parameters"]["serving_dir"]["runtimeValue"]["constant"]
    assert serving_dir == f"{CONFIG.kubeflow.serving_root}/{CONFIG.model_name}"
    assert {n for n, t in tasks.items() if not t["cachingOptions"].get("enableCache")} == {"ImageExampleGen", "ServingGate"}
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(mounts) == set(executors)
    assert mounts["Pusher_executor"]["pvcMount"] == [
        {"constant": CONFIG.kubeflow.data_pvc, "mountPath": CONFIG.kubeflow.data_mount},
        {"constant": CONFIG.kubeflow.models_pvc, "mountPath": CONFIG.kubeflow.models_mount},
    ]


def test_tuning_adds_a_tuner_that_feeds_the_trainer(tmp_path):
    path = tmp_path / "tuned.yaml"
    result = runner.invoke(app, ["compile", "-o", str(path), "--set", "tuning.enabled=true", "--set", "tuning.max_trials=4"])
    assert result.exit_code == 0, result.output
    spec, _ = yaml.safe_load_all(path.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {*STEPS, "Tuner"}
    tuner_fn = tasks["Tuner"]["inputs"]["parameters"]["tuner_fn"]["runtimeValue"]["constant"]
    assert tuner_fn == "training.trainer_module.tuner_fn"
    tuner_settings = json.loads(tasks["Tuner"]["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constant"])
    assert tuner_settings["tuning"]["max_trials"] == 4 and tuner_settings["tuning"]["search_space"] == CONFIG.tuning.search_space
    hyperparameters = tasks["Trainer"]["inputs"]["artifacts"]["hyperparameters"]["taskOutputArtifact"]
    assert hyperparameters == {"outputArtifactKey": "best_hyperparameters", "producerTask": "Tuner"}
    assert tasks["RunReport"]["inputs"]["artifacts"]["tuner_results"]["taskOutputArtifact"]["producerTask"] == "Tuner"
    trainer_settings = json.loads(spec["root"]["inputDefinitions"]["parameters"]["trainer_config"]["defaultValue"])
    assert trainer_settings["tuning"]["max_trials"] == 4


def test_cron_needs_six_fields_and_shows_the_next_fire_times():
    start = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)
    times = validate_cron("0 30 2 * * *", start=start)
    assert [t.isoformat() for t in times] == [
        "2026-11-27T02:30:00+00:00", "2026-11-28T02:30:00+00:00", "2026-11-29T02:30:00+00:00"
    ]  # fmt: skip
    with pytest.raises(KfpError, match="has 5 fields; Kubeflow Pipelines needs 6, seconds first"):
        validate_cron("30 2 * * *")
    with pytest.raises(KfpError, match="is not valid"):
        validate_cron("0 61 2 * * *")


@pytest.fixture
def kfp_api():
    fake = FakeKfp()
    server, url = serve(fake)
    yield fake, url
    server.shutdown()


def test_upload_run_schedule_list_and_disable_against_the_test_double(compiled, kfp_api):
    fake, url = kfp_api
    auth = ["--host", url, "--token", "secret-token", "--namespace", "screening"]

    first = runner.invoke(app, ["kfp", "upload", str(compiled), *auth])
    assert first.exit_code == 0, first.output
    assert "pipeline bloodcell: id pipeline-1, version version-2" in first.output
    assert fake.calls() == [
        ("GET", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload"), ("GET", f"{API}/pipelines/pipeline-1/versions")
    ]  # fmt: skip
    upload = fake.requests[1]
    assert upload.query["name"] == ["bloodcell"] and upload.headers["authorization"] == "Bearer secret-token"
    assert set(fake.uploaded_specs[0]["root"]["dag"]["tasks"]) == set(STEPS)

    second = runner.invoke(app, ["kfp", "upload", str(compiled), "--version", "v2", *auth])
    assert second.exit_code == 0 and "version version-3" in second.output
    assert fake.requests[-1].path == f"{API}/pipelines/upload_version"
    assert fake.requests[-1].query == {"name": ["v2"], "pipelineid": ["pipeline-1"]}

    fake.requests.clear()
    started = runner.invoke(
        app,
        ["kfp", "run", "--name", "try-1", "--data-root", "/mnt/data/new", "--data-root", "/mnt/data/lyon=lyon",
         "--set", "training.epochs=5", *auth],  # fmt: skip
    )
    assert started.exit_code == 0, started.output
    assert "run try-1: id run-" in started.output
    assert fake.calls()[-3:] == [("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"), ("POST", f"{API}/runs")]
    run = fake.requests[-1].json()
    assert run["display_name"] == "try-1"
    assert run["pipeline_version_reference"] == {"pipeline_id": "pipeline-1", "pipeline_version_id": "version-3"}
    parameters = run["runtime_config"]["parameters"]
    assert roots_from_json(parameters["data_roots"]) == [  # the configured out-of-scope root stays
        DataRoot("/mnt/data/new"), DataRoot("/mnt/data/lyon", "lyon"), DataRoot("/mnt/data/other-cells", role="out_of_scope")
    ]
    assert parameters["min_critical_recall"] == 0.99
    assert json.loads(parameters["trainer_config"])["training"]["epochs"] == 5
    assert fake.requests[-2].json() == {"display_name": "bloodcell", "namespace": "screening"}

    bad = runner.invoke(app, ["kfp", "schedule", "--cron", "0 2 * * *", *auth])
    assert bad.exit_code == 2 and "needs 6, seconds first" in bad.output
    fake.requests.clear()
    scheduled = runner.invoke(app, ["kfp", "schedule", "--cron", "0 0 2 * * *", *auth])
    assert scheduled.exit_code == 0, scheduled.output
    assert "next runs" in scheduled.output and "02:00:00 UTC" in scheduled.output
    recurring = fake.requests[-1].json()
    assert fake.requests[-1].path == f"{API}/recurringruns"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True and recurring["mode"] == "ENABLE"
    assert recurring["display_name"] == "bloodcell-nightly-retraining"

    listed = runner.invoke(app, ["kfp", "schedules", "--json", *auth])
    rows = json.loads(listed.output)
    assert [(r["name"], r["cron"]) for r in rows] == [("bloodcell-nightly-retraining", "0 0 2 * * *")]
    disabled = runner.invoke(app, ["kfp", "unschedule", rows[0]["id"], *auth])
    assert disabled.exit_code == 0
    assert fake.requests[-1].method == "POST" and fake.requests[-1].path == f"{API}/recurringruns/{rows[0]['id']}:disable"
    assert fake.recurring[rows[0]["id"]]["status"] == "DISABLED"


def test_run_before_upload_is_a_readable_error(kfp_api):
    fake, url = kfp_api
    result = runner.invoke(app, ["kfp", "run", "--host", url])
    assert result.exit_code == 1 and "no pipeline named 'bloodcell'" in result.output and "bloodcell kfp upload" in result.output


def test_unreachable_kfp_is_a_readable_error():
    result = runner.invoke(app, ["kfp", "schedules", "--host", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "error: cannot reach Kubeflow Pipelines at http://127.0.0.1:" in result.output
