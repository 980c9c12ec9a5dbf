"""The compiled Kubeflow pipeline executed step by step by the launcher (test tooling that plays the KFP v2
backend): every container command and argument as compiled, in this project's environment instead of the image,
on a small real subset of the three sites."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from contracts.artifacts import GATE_FILE, HISTORY_FILE, INGESTION_REPORT_FILE, SUMMARY_FILE, read_json
from contracts.run_summary import RunSummary
from pipelines.configs import trainer_config
from pipelines.kfp_launcher import (
    IMAGE_WORKDIR,
    REPO_ROOT,
    CompiledPipeline,
    LaunchError,
    PathMap,
    launch,
    task_order,
)
from pipelines.kubeflow_runner import compile_pipeline
from serving.model_server import start_server
from tests.helpers import CLASSES, CONFIG, make_site_subsets, real_files

PER_CLASS = {"blood-cells-5class": 20, "barcelona-extra": 6, "munich-extra": 4, "mll-marrow": 4, "other-cells": 4}
runner = CliRunner()


def trainer_parameter(epochs: int) -> str:
    settings = trainer_config(CONFIG).as_dict()
    settings["training"]["epochs"] = epochs
    return json.dumps(settings)


def image_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name != "MANIFEST.csv"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """The default spec, as `bloodcell compile` writes it."""
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    compile_pipeline(CONFIG, path)
    return path


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> dict[str, str]:
    """The data volume holds real subsets under the default data roots' folder names (and, by default, the
    pipeline root); the models volume is TF Serving's."""
    root = tmp_path_factory.mktemp("volumes")
    make_site_subsets(root / "data", PER_CLASS)
    (root / "models").mkdir()
    return {CONFIG.kubeflow.data_pvc: str(root / "data"), CONFIG.kubeflow.models_pvc: str(root / "models")}


@pytest.fixture(scope="module")
def default_run(compiled, volumes):
    """Every runtime parameter at its default but one training epoch and gate bars of 0, the marrow site's own
    too (a one-epoch model on a hundred images must still be pushed)."""
    parameters = {"trainer_config": trainer_parameter(1), "min_accuracy": 0.0, "min_critical_recall": 0.0}
    parameters["site_bars"] = json.dumps({"mll-marrow": {"min_accuracy": 0.0, "min_critical_recall": 0.0}})
    parameters["out_of_scope_bars"] = json.dumps(
        {"min_out_of_scope_caught": 0.0, "max_out_of_scope_alerts": 1.0, "max_in_scope_called_out": 1.0}
    )
    return launch(compiled, volumes, parameters)


@pytest.fixture(scope="module")
def refused_run(default_run, compiled, volumes):
    """`bloodcell kfp launch-local` as a user would call it: two of the four roots of the five classes (the
    out-of-scope root stays), two epochs, and a min_accuracy no model can meet."""
    result = runner.invoke(app, [
        "kfp", "launch-local", str(compiled),
        *[f"--volume={pvc}={path}" for pvc, path in volumes.items()],
        "--data-root", f"{CONFIG.kubeflow.data_mount}/blood-cells-5class",
        "--data-root", f"{CONFIG.kubeflow.data_mount}/barcelona-extra",
        "--set", "evaluation.min_accuracy=1.01", "--set", "training.epochs=2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    run_id, root = re.search(r"run (\S+): artifacts under (\S+)", result.output).groups()
    return result.output, Path(root) / CONFIG.pipeline_name / run_id


def test_the_default_spec_runs_through_every_task_in_dag_order(default_run, compiled):
    pipeline = CompiledPipeline.load(compiled)
    assert [t.name for t in default_run.tasks] == task_order(pipeline.tasks)
    assert {t.name: t.status for t in default_run.tasks} == {name: "succeeded" for name in pipeline.tasks}


def test_artifacts_go_under_the_spec_pipeline_root_on_the_data_volume(default_run, volumes):
    kf = CONFIG.kubeflow
    expected = Path(volumes[kf.data_pvc]) / Path(kf.pipeline_root).relative_to(kf.data_mount)
    assert default_run.pipeline_root == str(expected)
    assert default_run.uri("Trainer", "model").startswith(f"{expected}/{CONFIG.pipeline_name}/{default_run.run_id}/")


def test_ingestion_read_the_default_data_roots_parameter(default_run, volumes):
    report = read_json(default_run.uri("ImageExampleGen", "report"), INGESTION_REPORT_FILE)
    data = Path(volumes[CONFIG.kubeflow.data_pvc])
    assert report["found"] == sum(len(image_files(data / root.name)) for root in CONFIG.paths.data_roots)
    assert set(report["counts_by_site"]) == {"barcelona", "munich", "mll-marrow"}
    assert sum(report["counts_by_site"]["mll-marrow"]["myeloblast"].values()) == PER_CLASS["mll-marrow"]
    assert sum(report["counts_by_site"]["munich"]["basophil"].values()) == PER_CLASS["munich-extra"]
    assert report["found"] == report["ingested"] + report["duplicates"] + report["rejected"]


def test_the_trainer_ran_the_epochs_of_its_runtime_parameter(default_run):
    assert len(read_json(default_run.uri("Trainer", "model_run"), HISTORY_FILE)) == 1  # one entry per epoch


def test_the_pushed_version_loads_in_serve_and_answers_predict(default_run, volumes):
    summary = RunSummary.from_dict(read_json(default_run.uri("RunReport", "report"), SUMMARY_FILE))
    assert summary.pushed is True
    base = Path(volumes[CONFIG.kubeflow.models_pvc]) / CONFIG.model_name
    versions = sorted(p.name for p in base.iterdir() if p.name.isdigit())
    assert len(versions) == 1 and summary.pushed_destination == str(base / versions[0])
    running = start_server(CONFIG.model_name, base, port=0, host="127.0.0.1")
    try:
        files = [str(real_files(c, 1)[0]) for c in CLASSES]
        answer = runner.invoke(app, ["predict", *files, "--server", f"127.0.0.1:{running.port}", "--out", "json"])
    finally:
        running.stop()
    assert answer.exit_code == 0, answer.output
    rows = json.loads(answer.stdout)
    assert [r["file"] for r in rows] == files
    assert all(r["predicted_class"] in CLASSES and r["model_version"] == int(versions[0]) for r in rows)


def test_a_min_accuracy_above_one_pushes_nothing_and_says_why(refused_run, volumes):
    output, run_dir = refused_run
    gate = read_json(str(run_dir / "ServingGate" / "blessing"), GATE_FILE)
    assert gate["blessed"] is False
    assert any("required >= 1.01" in reason for reason in gate["failures"])
    summary = RunSummary.from_dict(read_json(str(run_dir / "RunReport" / "report"), SUMMARY_FILE))
    assert summary.pushed is False
    base = Path(volumes[CONFIG.kubeflow.models_pvc]) / CONFIG.model_name
    assert len([p for p in base.iterdir() if p.name.isdigit()]) == 1  # still the default run's version only


def test_the_trainer_config_parameter_changes_what_the_trainer_does(refused_run):
    _, run_dir = refused_run
    assert len(read_json(str(run_dir / "Trainer" / "model_run"), HISTORY_FILE)) == 2


def test_the_data_roots_parameter_changes_what_is_ingested(refused_run, volumes):
    _, run_dir = refused_run
    report = read_json(str(run_dir / "ImageExampleGen" / "report"), INGESTION_REPORT_FILE)
    data = Path(volumes[CONFIG.kubeflow.data_pvc])
    roots = ("blood-cells-5class", "barcelona-extra", "other-cells")
    assert report["found"] == sum(len(image_files(data / root)) for root in roots)
    outside = sum(report["split_totals"][f"out_of_scope_{s}"] for s in ("train", "eval", "test"))
    assert outside == len(image_files(data / roots[2]))
    assert sum(report["counts_by_site"]["munich"]["basophil"].values()) == 0  # munich basophils: munich-extra only


def test_caching_follows_the_spec(refused_run):
    output, _ = refused_run
    statuses = dict(re.findall(r"^(\w+)\s+(succeeded|cached|failed)\s", output, flags=re.MULTILINE))
    assert statuses["ImportSchemaGen"] == "cached"  # same inputs as the default run
    assert statuses["ImageExampleGen"] == statuses["ServingGate"] == "succeeded"  # caching off in the spec
    assert statuses["Trainer"] == "succeeded"  # its trainer_config changed


def test_every_module_the_spec_names_imports_from_the_install_alone(compiled, tmp_path):
    """Executor classes, the Trainer's run_fn and custom artifact types, imported as TFX's entrypoint does, from
    an empty folder: only what is installed (setup.py's packages and modules) counts, not the checkout."""
    pipeline = CompiledPipeline.load(compiled)
    paths = set()
    for executor in pipeline.spec["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        paths.add(args[args.index("--executor_class_path") + 1])
    for task in pipeline.tasks.values():
        paths |= {p["runtimeValue"]["constant"] for k, p in task["inputs"].get("parameters", {}).items() if k == "run_fn"}
    titles = {
        yaml.safe_load(d["artifactType"]["instanceSchema"])["title"]
        for c in pipeline.spec["components"].values()
        for d in c.get("outputDefinitions", {}).get("artifacts", {}).values()
    }
    assert {"bloodcell.IngestionReport", "bloodcell.ShortcutAuditReport", "bloodcell.RunSummary"} <= titles
    code = (
        "from tfx.orchestration.kubeflow.v2 import compiler_utils\n"
        "from tfx.utils import import_utils\n"
        f"for path in {sorted(paths)!r}:\n"
        "    import_utils.import_func_from_module(*path.rsplit('.', 1))\n"
        f"for title in {sorted(titles)!r}:\n"
        "    cls = import_utils.import_class_by_path(compiler_utils.TITLE_TO_CLASS_PATH.get(title, title))\n"
        "    assert cls.TYPE_NAME == title or title.startswith('tfx.'), title\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_every_top_level_module_the_spec_names_is_copied_into_the_image(compiled):
    pipeline = CompiledPipeline.load(compiled)
    text = compiled.read_text()
    named = set(re.findall(r"\b(contracts|training|components|pipelines|serving|bloodcell)\.[A-Za-z_.]+", text))
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    sources = [src for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for src in line.split()[:-1]]
    copied = {Path(src).with_suffix("").name for src in sources}
    assert named <= copied, f"not copied into the image: {named - copied}"
    assert f"WORKDIR {IMAGE_WORKDIR}" in dockerfile  # the launcher maps this folder to the checkout
    assert pipeline.name == CONFIG.pipeline_name


def test_an_artifact_type_that_names_no_module_fails_at_its_task_with_the_log(compiled, volumes, tmp_path):
    """The failure of the first dashboard run before the `bloodcell` package: a schema title the image cannot import."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(compiled.read_text().replace("title: bloodcell.IngestionReport", "title: nowhere.IngestionReport"))
    result = launch(broken, volumes, pipeline_root=str(tmp_path / "root"))
    assert not result.ok
    failed = result.failed()
    assert failed.name == "ImageExampleGen"
    assert "nowhere" in Path(failed.log).read_text()
    assert {t.status for t in result.tasks if t.name != failed.name} == {"not run"}


def test_what_the_launcher_refuses_before_running_anything(compiled, volumes, tmp_path):
    with pytest.raises(LaunchError, match=r"missing \['bloodcell-models'\]"):
        launch(compiled, {CONFIG.kubeflow.data_pvc: volumes[CONFIG.kubeflow.data_pvc]})
    with pytest.raises(LaunchError, match=r"volume folders that do not exist: \['bloodcell-models=/no/such/dir'\]"):
        launch(compiled, {**volumes, CONFIG.kubeflow.models_pvc: "/no/such/dir"})
    with pytest.raises(LaunchError, match=r"unknown runtime parameters \['epochs'\]"):
        launch(compiled, volumes, {"epochs": 3})
    with pytest.raises(LaunchError, match="min_accuracy: a number is expected"):
        launch(compiled, volumes, {"min_accuracy": "high"})
    spec, platform = yaml.safe_load_all(compiled.read_text())
    spec["deploymentSpec"]["executors"]["ImageExampleGen_executor"]["container"]["args"].append("{{$.pipeline_nowhere}}")
    unresolved = tmp_path / "unresolved.yaml"
    unresolved.write_text(yaml.safe_dump_all([spec, platform]))
    with pytest.raises(LaunchError, match=r"ImageExampleGen: placeholders in the container arguments do not resolve"):
        launch(unresolved, volumes, pipeline_root=str(tmp_path / "root"))
    spec["deploymentSpec"]["executors"]["ImageExampleGen_executor"]["container"]["args"][-1] = (
        "--split={{$.inputs.parameters['split_ratios']}}"  # a parameter the component does not have
    )
    unresolved.write_text(yaml.safe_dump_all([spec, platform]))
    with pytest.raises(LaunchError, match=r"ImageExampleGen: argument .* names inputs parameters 'split_ratios'"):
        launch(unresolved, volumes, pipeline_root=str(tmp_path / "root"))
    spec["deploymentSpec"]["executors"]["ImageExampleGen_executor"]["container"]["args"].pop()
    del spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]["custom_config"]
    unwired = tmp_path / "unwired.yaml"
    unwired.write_text(yaml.safe_dump_all([spec, platform]))
    with pytest.raises(LaunchError, match=r"Trainer: required inputs \['custom_config'\] are not wired"):
        launch(unwired, volumes, pipeline_root=str(tmp_path / "root2"))  # before ImageExampleGen runs
    assert not (tmp_path / "root2").exists()


def test_paths_in_the_cluster_map_to_local_folders_as_whole_segments(tmp_path):
    paths = PathMap({"/mnt/data": str(tmp_path / "d"), "/mnt/data/pipelines": str(tmp_path / "p"), "/app": "/repo"})
    local = str(tmp_path / "d")
    assert paths('[{"path": "/mnt/data/munich-extra", "site": ""}]') == f'[{{"path": "{local}/munich-extra", "site": ""}}]'
    assert paths("sqlite:////mnt/data/mlflow.db") == f"sqlite:///{local}/mlflow.db"
    assert paths("/mnt/data/pipelines/x") == f"{tmp_path / 'p'}/x"  # the longer mount wins
    assert paths("/app/pipelines/schema") == "/repo/pipelines/schema"
    for untouched in ("/mnt/database", "/x/mnt/data/y", "gs://b/mnt/data", "/apple"):
        assert paths(untouched) == untouched


def test_the_dag_order_puts_every_task_after_its_dependencies():
    tasks = {"c": {"dependentTasks": ["a", "b"]}, "b": {"dependentTasks": ["a"]}, "a": {}}
    assert task_order(tasks) == ["a", "b", "c"]
    with pytest.raises(LaunchError, match="cycle"):
        task_order({"a": {"dependentTasks": ["b"]}, "b": {"dependentTasks": ["a"]}})

