"""Choosing runs by id and comparing their figures (records as `bloodcell runs` reads them)."""

from __future__ import annotations

import pytest

from pipelines.run_history import RunRecord, _weakest_site, compare, find_run
from tests.helpers import CLASSES
from tests.helpers.summaries import summary as figures


def record(run_id: str, accuracy: float, recall: float) -> RunRecord:
    per_class = {c: {"precision": accuracy, "recall": accuracy, "f1": accuracy} for c in CLASSES}
    sites = {"barcelona": {"accuracy": accuracy + 0.01}, "munich": {"accuracy": accuracy - 0.02}}
    summary = figures(True, per_class=per_class, sites=sites)
    return RunRecord(run_id, run_id, "abc", accuracy, recall, f"munich {accuracy - 0.02:.4f}", "", True, "", "/r", summary)


def test_find_run_by_id_or_unique_prefix():
    runs = [record("2026-11-26T10:00:00", 0.9, 1.0), record("2026-11-26T11:00:00", 0.95, 1.0)]
    assert find_run(runs, "2026-11-26T11").run_id == "2026-11-26T11:00:00"
    assert find_run(runs, "2026-11-26T10:00:00").test_accuracy == 0.9
    with pytest.raises(KeyError, match="2 runs match '2026-11-26'"):
        find_run(runs, "2026-11-26")
    with pytest.raises(KeyError, match="0 runs match 'x'"):
        find_run(runs, "x")


def test_compare_lists_every_metric_with_its_change():
    rows = compare(record("a", 0.90, 0.98), record("b", 0.95, 1.0))
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["test_accuracy"]["delta"] == pytest.approx(0.05)
    assert by_metric["myeloblast_recall"] == {"metric": "myeloblast_recall", "a": 0.98, "b": 1.0, "delta": pytest.approx(0.02)}
    assert len(rows) == 2 + 3 * len(CLASSES) + 2 and "seg_neutrophil.f1" in by_metric
    assert by_metric["site munich.accuracy"]["delta"] == pytest.approx(0.05)


def test_weakest_site_names_the_site_with_the_lowest_accuracy():
    assert _weakest_site({"barcelona": {"accuracy": 0.99}, "munich": {"accuracy": 0.971}}) == "munich 0.9710"
    assert _weakest_site({}) == ""
