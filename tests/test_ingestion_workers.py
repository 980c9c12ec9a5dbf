"""benchmarks/ingestion_workers.py: the pipeline of `bloodcell run` up to its ingestion, and what the report says
of the first write."""

from __future__ import annotations

import dataclasses
import sys

from benchmarks.ingestion_workers import ingest_once
from tests.helpers import CONFIG, make_site_subsets, subset_roots


def test_the_benchmark_ingests_through_the_runs_pipeline_and_reports_the_first_write(tmp_path, monkeypatch):
    # TFX's Beam executor parses absl flags from sys.argv: pytest's `-v` would read as absl's verbosity flag.
    monkeypatch.setattr(sys, "argv", ["ingestion_workers"])
    subsets = make_site_subsets(tmp_path / "data", {"blood-cells-5class": 6, "barcelona-extra": 3, "munich-extra": 2})
    paths = dataclasses.replace(CONFIG.paths, data_roots=subset_roots(subsets))
    config = dataclasses.replace(CONFIG, paths=paths)
    report = ingest_once(config, str(tmp_path / "work"))
    assert report["found"] == sum(1 for root in subsets for f in root.rglob("*") if f.is_file() and f.parent != root)
    assert report["ingested"] == sum(report["split_totals"].values()) > 0
    assert (report["write_attempts"], report["short_in_first_write"]) == (1, 0)
    assert not (tmp_path / "work" / "serving").exists()  # ingestion only: nothing trained, nothing pushed
