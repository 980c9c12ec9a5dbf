"""Test tooling, not an orchestrator: executes a compiled Kubeflow pipeline on this machine as the KFP v2 backend
would, so that a wrong placeholder, argument, parameter or import path fails here and not on a cluster.

For each task in DAG order it builds the ExecutorInput the KFP launcher builds (runtime parameters with their
defaults and overrides, upstream output artifacts with their URIs and metadata, output URIs under the pipeline
root), runs the executor's container command and arguments exactly as compiled as a subprocess of this project's
environment in place of the image, and reads the executor's output metadata to feed the next task. The PVC mount
paths of the platform spec, and the image's working directory, are mapped to local folders in parameter values.
Production stays Kubeflow Pipelines; docs/kubeflow.md says what this does not prove.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.local import placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_WORKDIR = "/app"  # the Dockerfile's WORKDIR: where the component image holds the project
EXECUTOR_OUTPUT = "executor_output.json"
CACHE_DIR = ".launcher-cache"
LOG_TAIL_LINES = 40


class LaunchError(RuntimeError):
    """The compiled pipeline cannot be executed as written (before or while a task runs)."""


@dataclasses.dataclass(frozen=True)
class TaskRun:
    name: str
    status: str  # "succeeded", "cached", "failed" or "not run"
    seconds: float
    log: str  # file of the executor's stdout and stderr ("" when it did not run here)


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    run_id: str
    pipeline_root: str
    tasks: list[TaskRun]
    outputs: dict[str, dict[str, dict[str, Any]]]  # task -> output key -> runtime artifact (name, type, uri, metadata)

    @property
    def ok(self) -> bool:
        return all(t.status in ("succeeded", "cached") for t in self.tasks)

    def uri(self, task: str, key: str) -> str:
        return self.outputs[task][key]["uri"]

    def failed(self) -> TaskRun | None:
        return next((t for t in self.tasks if t.status == "failed"), None)


@dataclasses.dataclass(frozen=True)
class CompiledPipeline:
    """The two documents of a compiled pipeline YAML: the pipeline spec and the Kubernetes platform spec."""

    spec: dict[str, Any]
    platform: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> CompiledPipeline:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        if not documents or "root" not in documents[0]:
            raise LaunchError(f"{path}: not a compiled pipeline (no pipeline spec)")
        json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())  # a malformed spec fails here
        platform = documents[1] if len(documents) > 1 else {}
        return cls(spec=documents[0], platform=platform)

    @property
    def name(self) -> str:
        return self.spec["pipelineInfo"]["name"]

    @property
    def tasks(self) -> dict[str, Any]:
        return self.spec["root"]["dag"]["tasks"]

    def volume_mounts(self) -> dict[str, str]:
        """PVC name -> mount path, over every executor of the platform spec (one path per PVC)."""
        mounts: dict[str, str] = {}
        executors = self.platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        for label, executor in executors.items():
            for mount in executor.get("pvcMount", []):
                pvc, path = mount["constant"], mount["mountPath"]
                if mounts.setdefault(pvc, path) != path:
                    raise LaunchError(f"{label}: PVC {pvc} mounted at {path} and at {mounts[pvc]}")
        return mounts


def task_order(tasks: Mapping[str, Any]) -> list[str]:
    """The tasks in an order the DAG allows (each after its dependencies; ties by name)."""
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and set(t.get("dependentTasks", [])) <= done)
        if not ready:
            raise LaunchError(f"the DAG has a cycle or an unknown dependency among {sorted(set(tasks) - done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order


class PathMap:
    """Rewrites paths inside the cluster (mount paths, the image's working directory) to local folders."""

    def __init__(self, mapping: Mapping[str, str]):
        self.mapping = {k.rstrip("/"): str(Path(v).resolve()) for k, v in mapping.items()}
        # Longest first; a container path counts only as a whole path segment, not inside another name.
        self.patterns = [
            (re.compile(r"(?<![\w.-])" + re.escape(container) + r"(?=/|\"|'|$)"), local)
            for container, local in sorted(self.mapping.items(), key=lambda kv: -len(kv[0]))
        ]

    def __call__(self, text: str) -> str:
        for pattern, local in self.patterns:
            text = pattern.sub(local.replace("\\", r"\\"), text)
        return text


def _runtime_parameters(spec: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The run's parameter values: each runtime parameter's default, replaced by the overrides given."""
    definitions = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(overrides) - set(definitions))
    if unknown:
        raise LaunchError(f"unknown runtime parameters {unknown}; the pipeline has {sorted(definitions)}")
    values = {}
    for name, definition in definitions.items():
        if name in overrides:
            value = overrides[name]
        elif "defaultValue" in definition:
            value = definition["defaultValue"]
        else:
            raise LaunchError(f"runtime parameter {name} has no default and no value was given")
        kind = definition.get("parameterType", "STRING")
        if kind == "STRING" and not isinstance(value, str):
            raise LaunchError(f"runtime parameter {name}: a string is expected, got {value!r}")
        if kind.startswith("NUMBER") and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise LaunchError(f"runtime parameter {name}: a number is expected, got {value!r}")
        values[name] = value
    return values


def check_wiring(pipeline: CompiledPipeline) -> None:
    """Before anything runs: every task's required inputs are wired, and every upstream output it reads is
    declared by the producing task's component."""
    components = pipeline.spec["components"]
    for name, task in pipeline.tasks.items():
        definitions = components[task["componentRef"]["name"]].get("inputDefinitions", {})
        wired = task.get("inputs", {})
        missing = sorted(
            key
            for kind in ("parameters", "artifacts")
            for key, d in definitions.get(kind, {}).items()
            if key not in wired.get(kind, {}) and not d.get("isOptional")
        )
        if missing:
            raise LaunchError(f"{name}: required inputs {missing} are not wired in the spec")
        for key, source in wired.get("artifacts", {}).items():
            upstream = source.get("taskOutputArtifact", {})
            producer = pipeline.tasks.get(upstream.get("producerTask", ""))
            outputs = components[producer["componentRef"]["name"]].get("outputDefinitions", {}) if producer else {}
            if upstream.get("outputArtifactKey") not in outputs.get("artifacts", {}):
                raise LaunchError(f"{name}: input artifact {key} reads {upstream or source}, which no task declares")


def _input_parameters(name: str, task: dict, runtime: dict, produced: dict, paths: PathMap) -> dict:
    values = {}
    for key, source in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in source:
            value = runtime[source["componentInputParameter"]]
        elif "runtimeValue" in source:
            value = source["runtimeValue"]["constant"]
        elif "taskOutputParameter" in source:
            upstream = source["taskOutputParameter"]
            value = produced[upstream["producerTask"]]["parameters"][upstream["outputParameterKey"]]
        else:
            raise LaunchError(f"{name}: input parameter {key} has a source this launcher does not know: {source}")
        values[key] = paths(value) if isinstance(value, str) else value
    return values


def _input_artifacts(task: dict, component: dict, produced: dict) -> dict:
    """Each input artifact as its producer wrote it (`check_wiring` made sure the producer declares it)."""
    artifacts = {}
    definitions = component.get("inputDefinitions", {}).get("artifacts", {})
    for key, source in task.get("inputs", {}).get("artifacts", {}).items():
        upstream = source["taskOutputArtifact"]
        artifact = dict(produced[upstream["producerTask"]]["artifacts"][upstream["outputArtifactKey"]])
        artifact["type"] = definitions[key]["artifactType"]
        artifacts[key] = {"artifacts": [artifact]}
    return artifacts


_IO_PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\]")


def _check_io_placeholders(name: str, arguments: list, executor_input: dict) -> None:
    """kfp's resolver drops an argument whose placeholder names an input or output the task lacks; KFP's
    backend fails the task. Fail here, naming the argument."""
    for argument in (a for a in arguments if isinstance(a, str)):
        for io, kind, key in _IO_PLACEHOLDER.findall(argument):
            field = "parameterValues" if (io, kind) == ("inputs", "parameters") else kind
            if key not in executor_input.get(io, {}).get(field, {}):
                raise LaunchError(f"{name}: argument {argument!r} names {io} {kind} {key!r}, which the task does not have")


def _container_command(name: str, container: dict, executor_input: dict, pipeline_name: str, root: str) -> list[str]:
    """The container's command and arguments with every placeholder resolved as the KFP launcher would."""
    arguments = container.get("command", []) + container.get("args", [])
    _check_io_placeholders(name, arguments, executor_input)
    try:
        command = placeholder_utils.replace_placeholders(arguments, executor_input, pipeline_name, name, root)
    except (KeyError, IndexError, ValueError) as err:
        raise LaunchError(f"{name}: placeholders in the container arguments do not resolve: {err!r}") from None
    unresolved = [arg for arg in command if "{{$" in arg]
    if unresolved:
        raise LaunchError(f"{name}: placeholders in the container arguments do not resolve: {unresolved}")
    return command


def _cache_key(component: dict, executor: dict, inputs: dict) -> str:
    """What KFP's cache keys on: the component and its container, the input parameters and input artifacts."""
    artifacts = {k: [(a["uri"], a.get("metadata", {})) for a in v["artifacts"]] for k, v in inputs["artifacts"].items()}
    key = {"component": component, "executor": executor, "parameters": inputs["parameterValues"], "artifacts": artifacts}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _executor_env() -> dict[str, str]:
    """This project's environment in place of the image: its interpreter first on PATH, nothing from the
    checkout on sys.path (the subprocess imports only what is installed, as in the image)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _read_outputs(output_file: Path, outputs: dict) -> dict:
    """The task's outputs: the output artifacts given, updated with the executor's output metadata."""
    artifacts = {key: dict(value["artifacts"][0]) for key, value in outputs["artifacts"].items()}
    parameters: dict[str, Any] = {}
    if output_file.is_file():
        executor_output = json.loads(output_file.read_text())
        for key, value in executor_output.get("artifacts", {}).items():
            written = value["artifacts"][0]
            artifacts[key]["uri"] = written.get("uri", artifacts[key]["uri"])
            artifacts[key]["metadata"] = written.get("metadata", {})
        parameters = executor_output.get("parameterValues", {})
    return {"artifacts": artifacts, "parameters": parameters}


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return "\n".join(lines[-LOG_TAIL_LINES:])


def launch(
    package: str | Path,
    volumes: Mapping[str, str],
    parameters: Mapping[str, Any] | None = None,
    pipeline_root: str | None = None,
    image_root: str | Path = REPO_ROOT,
    enable_cache: bool = True,
    echo: Callable[[str], None] = print,
) -> LaunchResult:
    """Executes every task of the compiled pipeline `package`; stops at the first failed task.

    `volumes` maps each PVC of the platform spec to a local folder; `parameters` overrides runtime parameters;
    `pipeline_root` replaces the spec's default pipeline root (else mapped through the volumes).
    """
    pipeline = CompiledPipeline.load(package)
    mounts = pipeline.volume_mounts()
    unmapped = sorted(set(mounts) - set(volumes))
    if unmapped:
        raise LaunchError(f"map every volume of the pipeline to a local folder: missing {unmapped} (mounted at "
                          + ", ".join(mounts[p] for p in unmapped) + ")")  # fmt: skip
    absent = sorted(f"{p}={volumes[p]}" for p in mounts if not Path(volumes[p]).is_dir())
    if absent:
        raise LaunchError(f"volume folders that do not exist: {absent}")
    paths = PathMap({**{mounts[p]: volumes[p] for p in mounts}, IMAGE_WORKDIR: str(image_root)})
    root = pipeline_root or paths(pipeline.spec.get("defaultPipelineRoot", ""))
    if not root or "://" in root or not Path(root).is_absolute():
        raise LaunchError(f"pipeline root {root!r} is not a local folder: pass one")
    check_wiring(pipeline)
    runtime = _runtime_parameters(pipeline.spec, parameters or {})
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("launch-%Y%m%d-%H%M%S-%f")
    executors = pipeline.spec["deploymentSpec"]["executors"]
    produced: dict[str, dict] = {}
    runs: list[TaskRun] = []
    order = task_order(pipeline.tasks)
    for name in order:
        task = pipeline.tasks[name]
        component = pipeline.spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]]["container"]
        task_root = Path(root) / pipeline.name / run_id / name
        inputs = {
            "parameterValues": _input_parameters(name, task, runtime, produced, paths),
            "artifacts": _input_artifacts(task, component, produced),
        }
        outputs = {
            "artifacts": {
                key: {"artifacts": [{"name": f"{run_id}/{name}/{key}", "type": d["artifactType"],
                                     "uri": str(task_root / key), "metadata": {}}]}
                for key, d in component.get("outputDefinitions", {}).get("artifacts", {}).items()
            },
            "outputFile": str(task_root / EXECUTOR_OUTPUT),
        }  # fmt: skip
        executor_input = json_format.MessageToDict(
            json_format.ParseDict({"inputs": inputs, "outputs": outputs}, pipeline_spec_pb2.ExecutorInput())
        )
        cache_file = Path(root) / CACHE_DIR / f"{_cache_key(component, container, inputs)}.json"
        cacheable = enable_cache and task.get("cachingOptions", {}).get("enableCache", False)
        if cacheable and cache_file.is_file():
            produced[name] = json.loads(cache_file.read_text())
            runs.append(TaskRun(name, "cached", 0.0, ""))
            echo(f"{name}: cached")
            continue
        command = _container_command(name, container, executor_input, pipeline.name, root)
        task_root.mkdir(parents=True, exist_ok=True)
        workdir = task_root / ".workdir"  # an empty folder: nothing importable from the checkout by accident
        workdir.mkdir(exist_ok=True)
        log = task_root / "launcher.log"
        echo(f"{name}: running ({' '.join(command[:3])} ...)")
        start = time.monotonic()
        with log.open("w") as out:
            code = subprocess.run(command, cwd=workdir, env=_executor_env(), stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - start
        shutil.rmtree(workdir, ignore_errors=True)
        if code != 0:
            runs.append(TaskRun(name, "failed", seconds, str(log)))
            echo(f"{name}: FAILED after {seconds:.0f} s (exit {code}); log {log}:\n{_tail(log)}")
            runs += [TaskRun(n, "not run", 0.0, "") for n in order[len(runs):]]
            break
        produced[name] = _read_outputs(Path(outputs["outputFile"]), outputs)
        if cacheable:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps(produced[name]))
        runs.append(TaskRun(name, "succeeded", seconds, str(log)))
        echo(f"{name}: succeeded in {seconds:.0f} s")
    outputs_by_task = {task: value["artifacts"] for task, value in produced.items()}
    return LaunchResult(run_id=run_id, pipeline_root=root, tasks=runs, outputs=outputs_by_task)


def task_table(result: LaunchResult) -> str:
    """One line per task: name, status, duration."""
    width = max(len(t.name) for t in result.tasks)
    lines = [f"{'task':<{width}}  {'status':<9}  seconds"]
    lines += [f"{t.name:<{width}}  {t.status:<9}  {t.seconds:7.1f}" for t in result.tasks]
    return "\n".join(lines)
