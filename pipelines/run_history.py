"""Past local pipeline runs, read from ML Metadata: when, on what data, with what result."""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

from ml_metadata.metadata_store import metadata_store
from tfx.orchestration import metadata

from bloodcell import RunSummary as RunSummaryArtifact
from contracts.artifacts import SUMMARY_FILE, read_json
from contracts.run_summary import RunSummary

PIPELINE_RUN = "pipeline_run"
INGESTION = "components.image_example_gen.ImageExampleGen"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    started: str  # ISO time, UTC
    data_fingerprint: str
    test_accuracy: float
    critical_recall: float
    weakest_site: str  # "<site> <accuracy>" of the site with the lowest test accuracy ("" for older runs)
    hold_out: str  # the root or site a hold-out run was trained without ("" for a normal run)
    blessed: bool
    pushed_version: str  # "" when nothing was pushed
    report_dir: str
    summary: RunSummary

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "summary"}


def _store(metadata_path: str) -> metadata_store.MetadataStore:
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}: no local run yet")
    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))


def list_runs(metadata_path: str) -> list[RunRecord]:
    """Every run that wrote a run report, oldest first."""
    store = _store(metadata_path)
    run_type = store.get_context_type(PIPELINE_RUN)
    records = []
    for artifact in store.get_artifacts_by_type(RunSummaryArtifact.TYPE_NAME):
        run = next(c for c in store.get_contexts_by_artifact(artifact.id) if c.type_id == run_type.id)
        ingestion = [
            e
            for e in store.get_executions_by_context(run.id)
            if store.get_execution_types_by_id([e.type_id])[0].name == INGESTION
        ]
        fingerprint = ingestion[0].custom_properties["input_fingerprint"].string_value if ingestion else ""
        summary = RunSummary.from_dict(read_json(artifact.uri, SUMMARY_FILE))
        started = datetime.datetime.fromtimestamp(run.create_time_since_epoch / 1000, datetime.timezone.utc)
        records.append(
            RunRecord(
                run_id=run.name,
                started=started.isoformat(timespec="seconds"),
                data_fingerprint=fingerprint.split(":")[0][:12],
                test_accuracy=summary.test_accuracy,
                critical_recall=summary.critical_recall,
                weakest_site=_weakest_site(summary.sites),
                hold_out=(summary.hold_out or {}).get("name", ""),
                blessed=summary.blessed,
                pushed_version=os.path.basename(summary.pushed_destination) if summary.pushed else "",
                report_dir=artifact.uri,
                summary=summary,
            )
        )
    return sorted(records, key=lambda r: r.started)


def _weakest_site(sites: dict[str, dict[str, Any]]) -> str:
    if not sites:
        return ""
    site = min(sites, key=lambda name: sites[name]["accuracy"])
    return f"{site} {sites[site]['accuracy']:.4f}"


def find_run(records: list[RunRecord], run_id: str) -> RunRecord:
    """The run with this id, or the only one whose id starts with it."""
    matches = [r for r in records if r.run_id == run_id] or [r for r in records if r.run_id.startswith(run_id)]
    if len(matches) != 1:
        known = ", ".join(r.run_id for r in records[-5:])
        raise KeyError(f"{len(matches)} runs match {run_id!r} (latest: {known})")
    return matches[0]


def compare(a: RunRecord, b: RunRecord) -> list[dict[str, Any]]:
    """Metric by metric: value in run A, in run B, and B - A."""
    pairs = {
        "test_accuracy": (a.test_accuracy, b.test_accuracy),
        f"{a.summary.critical_class}_recall": (a.critical_recall, b.critical_recall),
    }
    for name, figures in a.summary.per_class.items():
        for metric in ("precision", "recall", "f1"):
            pairs[f"{name}.{metric}"] = (figures[metric], b.summary.per_class[name][metric])
    sites_a, sites_b = a.summary.sites or {}, b.summary.sites or {}
    for site in sorted(set(sites_a) & set(sites_b)):
        pairs[f"site {site}.accuracy"] = (sites_a[site]["accuracy"], sites_b[site]["accuracy"])
    return [{"metric": k, "a": va, "b": vb, "delta": vb - va} for k, (va, vb) in pairs.items()]
