"""Runs the pipeline on this machine: LocalDagRunner, ML Metadata in SQLite, Beam DirectRunner."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import sys
import tempfile
from typing import IO, Iterator

from ml_metadata.metadata_store import metadata_store
from tfx.dsl.placeholder import placeholder as ph
from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline, RunOptions

from bloodcell import RunSummary as RunSummaryArtifact
from components.image_example_gen import code_fingerprint
from components.image_verification import fingerprint
from components.serving_gate import serving_state
from contracts.artifacts import SUMMARY_FILE, read_json
from contracts.config import Config
from contracts.run_summary import RunSummary
from pipelines.configs import run_settings, serving_dir
from pipelines.pipeline import TrainerCode, create_pipeline

# TFX packages the module file with its folder (the whole training layer) for the Trainer and the Tuner.
TRAINER_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "trainer_module.py")


def metadata_path(config: Config) -> str:
    return os.path.join(config.paths.output_root, "metadata.sqlite")


def pipeline_root(config: Config) -> str:
    return os.path.join(config.paths.output_root, "pipelines", config.pipeline_name)


def latest_summary(config: Config) -> tuple[RunSummary, str]:
    """The newest RunSummary artifact in ML Metadata: its summary.json and its folder."""
    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(metadata_path(config))
    )
    artifacts = sorted(store.get_artifacts_by_type(RunSummaryArtifact.TYPE_NAME), key=lambda a: a.id)
    if not artifacts:
        raise RuntimeError(f"no run report in {metadata_path(config)}: the pipeline did not finish")
    uri = artifacts[-1].uri
    return RunSummary.from_dict(read_json(uri, SUMMARY_FILE)), uri


class RunLockedError(RuntimeError):
    """Another run holds the output root or the serving folder; the message names it."""


def _acquire(path: str) -> IO[str]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunLockedError(
            f"{os.path.dirname(path)} is in use by another run ({holder}): wait for it to finish, or give this run its "
            "own paths.output_root and paths.serving_root"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, started {datetime.datetime.now().isoformat(timespec='seconds')}\n")
    handle.flush()
    return handle


def lock_files(config: Config) -> list[str]:
    """The run's lock files: one in the output root, one beside the model's serving folder (not inside it,
    where TF Serving looks for versions)."""
    return sorted(
        {
            os.path.abspath(os.path.join(config.paths.output_root, ".bloodcell-run.lock")),
            os.path.abspath(os.path.join(config.paths.serving_root, f".bloodcell-{config.model_name}-push.lock")),
        }
    )


@contextlib.contextmanager
def run_lock(config: Config) -> Iterator[None]:
    """Holds an exclusive lock on the output root and on the model's serving folder for one run: two runs
    on one of them would race between gate and push and could read each other's results. Refuses at once
    (RunLockedError) when another run holds either; the OS releases the locks if the process dies."""
    with contextlib.ExitStack() as stack:
        for path in lock_files(config):
            stack.callback(stack.enter_context(_acquire(path)).truncate, 0)
        yield


def run_local(config: Config, enable_cache: bool = True) -> tuple[RunSummary, str]:
    """Runs the whole pipeline, holding the run lock, and returns the run's summary and report folder."""
    with run_lock(config):
        return _run(config, enable_cache)


def _run(config: Config, enable_cache: bool) -> tuple[RunSummary, str]:
    run_pipeline(config, enable_cache)
    return latest_summary(config)


def run_pipeline(config: Config, enable_cache: bool = True, last_step: str | None = None) -> None:
    """Builds the pipeline as `bloodcell run` does and runs it, or its steps up to `last_step` (a node id)."""
    roots = config.paths.data_roots
    input_fingerprint = f"{fingerprint(roots)}:{code_fingerprint()}"
    logging.info("data roots %s, fingerprint %s", ", ".join(r.path for r in roots), input_fingerprint[:16])
    pipeline = create_pipeline(
        config,
        pipeline_root=pipeline_root(config),
        settings=run_settings(config),
        trainer_code=TrainerCode(module_file=TRAINER_MODULE),
        pipeline_run_id=ph.execution_invocation().pipeline_run_id,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(metadata_path(config)),
        input_fingerprint=input_fingerprint,
        serving_state=serving_state(serving_dir(config)),
        enable_cache=enable_cache,
    )
    package_module_files(pipeline)
    LocalDagRunner().run(pipeline, run_options=RunOptions(to_nodes=[last_step]) if last_step else None)


def package_module_files(pipeline: Pipeline) -> None:
    """Builds the wheels of the Trainer's (and Tuner's) module file before the run, as the runner would,
    with the output of TFX's `setup.py bdist_wheel` subprocess held back (about 40 lines; shown if the
    build fails). The runner then finds them built."""
    with tempfile.TemporaryFile() as captured:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        try:
            for component in pipeline.components:
                component._resolve_pip_dependencies(pipeline.pipeline_info.pipeline_root)  # noqa: SLF001 - as TFX's runners do
        except Exception:
            captured.seek(0)
            os.write(saved[1], captured.read())
            raise
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
