"""Compiles the pipeline for Kubeflow Pipelines (KubeflowV2DagRunner): the same `create_pipeline` as the
local run, settings from runtime parameters, volumes mounted in every pod, a YAML `kfp.Client` uploads."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from tfx.orchestration.data_types import RuntimeParameter
from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import KubeflowV2DagRunner, KubeflowV2DagRunnerConfig

from contracts.config import Config
from pipelines.configs import RunSettings, run_settings
from pipelines.pipeline import UNCACHEABLE, TrainerCode, create_pipeline

# In the component image the project is installed: the Trainer and the Tuner import their functions from it.
TRAINER_CODE = TrainerCode(run_fn="training.trainer_module.run_fn", tuner_fn="training.trainer_module.tuner_fn")


def parameter_values(config: Config) -> dict[str, str | float]:
    """`run_settings` as Kubeflow parameter values by name (the Trainer's settings as JSON)."""
    values = dataclasses.asdict(run_settings(config))
    return {k: json.dumps(v) if isinstance(v, dict) else v for k, v in values.items()}


def kubeflow_config(config: Config) -> Config:
    """The config as seen from inside the cluster: paths on the mounted volumes, the cluster's Beam args."""
    kf = config.kubeflow
    paths = dataclasses.replace(
        config.paths,
        data_roots=kf.data_roots,
        output_root=kf.pipeline_root,
        serving_root=kf.serving_root,
        schema_dir=kf.schema_dir,
    )
    adaptation = dataclasses.replace(config.adaptation, sites=dict(kf.adaptation_sites))
    return dataclasses.replace(config, paths=paths, adaptation=adaptation, beam_pipeline_args=list(kf.beam_pipeline_args))


def runtime_parameters(config: Config) -> RunSettings:
    """The run's settings as Kubeflow runtime parameters, the config's values as defaults."""
    values = parameter_values(config)
    return RunSettings(**{name: RuntimeParameter(name=name, ptype=type(value), default=value) for name, value in values.items()})


def _pipeline_spec(pipeline_job: dict[str, Any], cluster: Config) -> dict[str, Any]:
    """The PipelineSpec of TFX's PipelineJob with the runtime parameters' defaults filled in (the dashboard
    shows them) and caching off where the result depends on state outside the artifacts."""
    spec = pipeline_job["pipelineSpec"]
    defaults = parameter_values(cluster)
    for name, parameter in spec["root"]["inputDefinitions"]["parameters"].items():
        parameter["defaultValue"] = defaults[name]
        parameter["isOptional"] = True
    for name, task in spec["root"]["dag"]["tasks"].items():
        if name in UNCACHEABLE:
            task["cachingOptions"] = {"enableCache": False}
    # The run's artifacts go under the configured root (TFX's runtimeConfig, which the spec alone would lose).
    spec["defaultPipelineRoot"] = pipeline_job["runtimeConfig"]["gcsOutputDirectory"]
    spec["pipelineInfo"]["description"] = "Blood-cell leukemia screening: ingest, validate, train, evaluate, gate, push"
    return spec


def _platform_spec(spec: dict[str, Any], config: Config) -> dict[str, Any]:
    """KFP's Kubernetes platform config: the data and model volumes mounted in every pipeline pod."""
    kf = config.kubeflow
    mounts = [{"constant": kf.data_pvc, "mountPath": kf.data_mount}, {"constant": kf.models_pvc, "mountPath": kf.models_mount}]
    executors = {name: {"pvcMount": mounts} for name in spec["deploymentSpec"]["executors"]}
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}


def compile_pipeline(config: Config, output: str | Path, image: str | None = None) -> dict[str, Any]:
    """Writes the pipeline YAML for Kubeflow Pipelines and returns its PipelineSpec."""
    cluster = kubeflow_config(config)
    # KFP v2 cannot compile placeholders in parameters: the report finds a Kubeflow run by its artifact paths.
    pipeline = create_pipeline(
        cluster, pipeline_root=cluster.paths.output_root, settings=runtime_parameters(cluster), trainer_code=TRAINER_CODE
    )
    runner_config = KubeflowV2DagRunnerConfig(
        default_image=image or config.kubeflow.image, use_pipeline_spec_2_1=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        job_file = Path(tmp) / "pipeline_job.json"
        KubeflowV2DagRunner(runner_config, output_filename=str(job_file)).run(pipeline)
        pipeline_job = json.loads(job_file.read_text())
    spec = _pipeline_spec(pipeline_job, cluster)
    Path(output).write_text(yaml.safe_dump_all([spec, _platform_spec(spec, config)], sort_keys=False))
    return spec
