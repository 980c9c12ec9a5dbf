"""Runs the pipeline on this machine: LocalDagRunner, ML Metadata in SQLite, Beam DirectRunner."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx

from bloodcell import RunSummary
from components.image_example_gen import code_fingerprint
from components.image_verification import fingerprint
from components.run_report import SUMMARY_FILE
from components.serving_gate import serving_state
from pipelines.configs import Config
from pipelines.pipeline import create_pipeline


def metadata_path(config: Config) -> str:
    return os.path.join(config.paths.output_root, "metadata.sqlite")


def pipeline_root(config: Config) -> str:
    return os.path.join(config.paths.output_root, "pipelines", config.pipeline_name)


def latest_summary(config: Config) -> tuple[dict[str, Any], str]:
    """The newest RunSummary artifact in ML Metadata: its summary.json and its folder."""
    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(config))
    )
    artifacts = sorted(store.get_artifacts_by_type(RunSummary.TYPE_NAME), key=lambda a: a.id)
    if not artifacts:
        raise RuntimeError(f"no run report in {metadata_path(config)}: the pipeline did not finish")
    uri = artifacts[-1].uri
    with open(os.path.join(uri, SUMMARY_FILE)) as f:
        return json.load(f), uri


def run_local(config: Config, enable_cache: bool = True) -> tuple[dict[str, Any], str]:
    """Runs the whole pipeline and returns the run's summary and report folder."""
    os.makedirs(config.paths.output_root, exist_ok=True)
    roots = config.paths.data_roots
    input_fingerprint = f"{fingerprint(roots)}:{code_fingerprint()}"
    logging.info("data roots %s, fingerprint %s", ", ".join(r.path for r in roots), input_fingerprint[:16])
    pipeline = create_pipeline(
        config,
        pipeline_root=pipeline_root(config),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(config)),
        input_fingerprint=input_fingerprint,
        serving_state=serving_state(os.path.join(config.paths.serving_root, config.model_name)),
        enable_cache=enable_cache,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return latest_summary(config)
