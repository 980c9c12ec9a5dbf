"""Ingestion on several Beam workers, run again and again: the pipeline of `bloodcell run` (same process set-up,
LocalDagRunner) up to its ImageExampleGen step, on every default data root.

    .venv/bin/python -m benchmarks.ingestion_workers --runs 20 --workers 2 [--mode multi_processing]

Each run counts the records its first write left out (the read-back check before any second attempt), the
attempts it needed and its wall time. Prints a line per run and the total; exits 1 when a run lost records or
failed. Run it alone on the cores.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import typer

from cli.options import CONFIG_OPTION, load_config_or_exit
from cli.run_log import configure_process
from contracts.config import Config

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def ingest_once(config: Config, workdir: str) -> dict:
    """The pipeline of `bloodcell run`, up to its ImageExampleGen step, into `workdir`; the ingestion report."""
    from contracts.artifacts import INGESTION_REPORT_FILE
    from pipelines.local_runner import pipeline_root, run_pipeline

    paths = dataclasses.replace(config.paths, output_root=workdir, serving_root=os.path.join(workdir, "serving"))
    config = dataclasses.replace(config, paths=paths)
    run_pipeline(config, enable_cache=False, last_step="ImageExampleGen")
    (path,) = glob.glob(os.path.join(pipeline_root(config), "ImageExampleGen", "report", "*", INGESTION_REPORT_FILE))
    return json.loads(Path(path).read_text())


@app.command()
def main(
    runs: int = typer.Option(20, help="ingestions, one after the other"),
    workers: int = typer.Option(2, help="--direct_num_workers"),
    mode: str = typer.Option("multi_processing", help="--direct_running_mode"),
    config_path: Path = CONFIG_OPTION,
    override: Optional[List[str]] = typer.Option(None, "--set", help="config override key=value"),
) -> None:
    configure_process()
    beam_args = [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
    config = dataclasses.replace(load_config_or_exit(config_path, override or []), beam_pipeline_args=beam_args)
    lost_runs = failed = 0
    for run in range(1, runs + 1):
        with tempfile.TemporaryDirectory() as workdir:
            start = time.monotonic()
            try:
                report = ingest_once(config, workdir)
            except Exception as error:  # noqa: BLE001 - a failed run is a result of this benchmark
                failed += 1
                print(f"run {run:2d}: failed after {time.monotonic() - start:.0f} s: {error}", flush=True)
                continue
        short = report["short_in_first_write"]
        lost_runs += bool(short)
        print(
            f"run {run:2d}: {report['found']} files, {report['ingested']} ingested, "
            f"{sum(report['split_totals'].values())} records written in {report['write_attempts']} attempt(s), "
            f"{short} short in the first write, {time.monotonic() - start:.0f} s",
            flush=True,
        )
    print(f"{runs} runs with {beam_args}: {runs - failed} completed, {lost_runs} lost records in the first write")
    raise typer.Exit(1 if lost_runs or failed else 0)


if __name__ == "__main__":
    app()
