"""The serving gate's decision (out-of-scope bars included), the served-version lookup and the model digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.out_of_scope_scores import OutOfScopeFigures, out_of_scope_failures, score_out_of_scope
from components.serving_gate import decide, gate_result, model_digest, newest_loadable, serving_state
from contracts.artifacts import served_versions
from contracts.config import DEFAULT_CONFIG, ConfigError, SiteBars, load_config, site_bars
from tests.helpers import CLASSES, DATA_ROOTS, real_files, write_examples

BARS = {"min_accuracy": 0.95, "min_critical_recall": 0.99, "max_regression": 0.01, "critical_class": "myeloblast"}
BARS_DICT = {k: v for k, v in BARS.items() if k != "critical_class"}


def test_bars_without_a_served_model():
    assert decide({"accuracy": 0.97, "critical_recall": 1.0}, None, **BARS) == []
    failures = decide({"accuracy": 0.94, "critical_recall": 0.98}, None, **BARS)
    assert failures == ["accuracy = 0.9400, required >= 0.95", "myeloblast recall = 0.9800, required >= 0.99"]


def test_regression_against_the_served_model():
    served = {"accuracy": 0.99, "critical_recall": 1.0}
    assert decide({"accuracy": 0.985, "critical_recall": 1.0}, served, **BARS) == []  # within max_regression
    failures = decide({"accuracy": 0.97, "critical_recall": 1.0}, served, **BARS)
    assert failures == ["accuracy = 0.9700, served model 0.9900: drop > max_regression 0.01"]


def test_nan_recall_fails():
    assert decide({"accuracy": 1.0, "critical_recall": float("nan")}, None, **BARS) == [
        "myeloblast recall = nan, required >= 0.99"
    ]


def test_served_versions_need_a_saved_model(tmp_path, model_exports):
    assert served_versions(str(tmp_path / "none")) == [] and serving_state(str(tmp_path / "none")) == ""
    shutil.copytree(model_exports["random"], tmp_path / "7")
    shutil.copytree(model_exports["basophil"], tmp_path / "12")
    (tmp_path / "20").mkdir()  # being copied: no saved_model.pb yet
    (tmp_path / "tmp").mkdir()
    assert served_versions(str(tmp_path)) == [7, 12] and serving_state(str(tmp_path)) == "12"
    assert model_digest(str(tmp_path / "7")) == model_digest(str(model_exports["random"]))
    assert model_digest(str(tmp_path / "7")) != model_digest(str(tmp_path / "12"))


def test_one_failing_site_blocks_although_the_pool_passes():
    sites = {
        "barcelona": {"count": 300, "accuracy": 0.99, "critical_recall": None},  # no myeloblast: accuracy alone
        "munich": {"count": 60, "accuracy": 0.90, "critical_recall": 1.0},
    }
    pooled = {"accuracy": 0.975, "critical_recall": 1.0}
    assert decide(pooled, None, **BARS) == []
    assert decide(pooled, None, **BARS, sites=sites) == [
        "site munich: accuracy = 0.9000 on 60 test images, required >= 0.95"
    ]
    sites["munich"] |= {"accuracy": 0.96, "critical_recall": 0.98}
    assert decide(pooled, None, **BARS, sites=sites) == [
        "site munich: myeloblast recall = 0.9800 on 60 test images, required >= 0.99"
    ]


def test_a_site_with_its_own_bars_is_judged_by_them_and_the_others_by_the_pooled_bars():
    """The marrow site's bars (config `evaluation.site_bars`) are lower; Munich keeps the pooled ones."""
    own = {"mll-marrow": SiteBars(min_accuracy=0.85, min_critical_recall=0.97)}
    sites = {
        "munich": {"count": 310, "accuracy": 0.96, "critical_recall": 0.98},
        "mll-marrow": {"count": 143, "accuracy": 0.86, "critical_recall": 0.975},
    }
    pooled = {"accuracy": 0.975, "critical_recall": 1.0}
    assert decide(pooled, None, **BARS, sites=sites, site_bars=own) == [
        "site munich: myeloblast recall = 0.9800 on 310 test images, required >= 0.99"
    ]
    sites["mll-marrow"] |= {"accuracy": 0.84, "critical_recall": 0.96}
    assert decide(pooled, None, **BARS, sites=sites, site_bars=own)[1:] == [
        "site mll-marrow: accuracy = 0.8400 on 143 test images, required >= 0.85",
        "site mll-marrow: myeloblast recall = 0.9600 on 143 test images, required >= 0.97",
    ]
    # Without its own bars the marrow site would be held to the pooled ones.
    assert len(decide(pooled, None, **BARS, sites=sites)) == 3


def test_the_default_config_gives_the_marrow_site_its_own_bars():
    bars = load_config(DEFAULT_CONFIG).evaluation.bars_of_sites()
    assert set(bars) == {"mll-marrow"} and bars["mll-marrow"].min_accuracy < load_config(DEFAULT_CONFIG).evaluation.min_accuracy


def test_a_hold_out_run_is_never_blessed():
    assert decide({"accuracy": 1.0, "critical_recall": 1.0}, None, **BARS, hold_out="munich-extra") == [
        "hold-out run: trained without 'munich-extra', for measurement only, not for serving"
    ]


def test_a_broken_newest_version_is_named_and_the_gate_compares_with_the_last_that_loads(tmp_path, model_exports):
    """A truncated saved_model.pb in the serving folder: TF Serving keeps the previous version, so does the gate."""
    base = tmp_path / "bloodcell"
    shutil.copytree(model_exports["myeloblast"], base / "5")
    shutil.copytree(model_exports["random"], base / "9")
    pb = base / "9" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:500])
    files = [real_files("myeloblast", 2)[1], real_files("basophil", 1)[0]]
    write_examples(tmp_path / "test.gz", files)
    served, broken = newest_loadable(str(base), [str(tmp_path / "test.gz")], CLASSES.index("myeloblast"))
    assert served["version"] == 5 and served["accuracy"] == 0.5 and served["critical_recall"] == 1.0
    assert served["digest"] == model_digest(str(model_exports["myeloblast"]))
    assert [b["version"] for b in broken] == [9] and broken[0]["error"]


def test_a_candidate_scored_on_fewer_images_than_the_test_split_holds_is_refused():
    """TFMA's count of the images it scored against the test split's records: a lost Beam write blocks."""
    complete = {"accuracy": 1.0, "critical_recall": 1.0, "count": 1165}
    assert decide(complete, None, **BARS, test_images=1165) == []
    assert decide(complete | {"count": 830}, None, **BARS, test_images=1165) == [
        "the Evaluator scored 830 of the 1165 test images: its Beam job lost some; "
        "run again without the cache (bloodcell run --no-cache)"
    ]


def test_site_bars_with_a_missing_or_out_of_range_bar_are_refused():
    with pytest.raises(ConfigError, match="site_bars: need"):
        site_bars(["lyon"], "site_bars")  # the gate's runtime parameter, as a dashboard user may type it
    with pytest.raises(ConfigError, match="evaluation.site_bars.lyon: need"):
        load_config(DEFAULT_CONFIG, ['evaluation.site_bars={"lyon": {"min_accuracy": 0.9}}'])
    with pytest.raises(ConfigError, match="evaluation.site_bars.lyon: bars are fractions"):
        load_config(DEFAULT_CONFIG, ['evaluation.site_bars={"lyon": {"min_accuracy": 90, "min_critical_recall": 1}}'])


def test_the_gate_bars_alerts_on_out_of_scope_cells_and_in_scope_cells_called_out(tmp_path, model_exports):
    """Real other cells of two sites and real cells of the five, scored by the served signature: a model that
    calls everything myeloblast raises the alarm on every lymphocyte (blocked); one that calls everything out of
    scope catches them all but calls the five out of scope too (blocked)."""
    others = Path(next(r for r in DATA_ROOTS if r.out_of_scope).path)
    write_examples(tmp_path / "other.gz", real_files("lymphocyte", 2, others) + real_files("platelet", 2, others))
    write_examples(tmp_path / "test.gz", [real_files(c, 1)[0] for c in CLASSES])
    files = ([str(tmp_path / "test.gz")], [str(tmp_path / "other.gz")])
    bars = load_config(DEFAULT_CONFIG).evaluation.out_of_scope_bars()

    alarmed = score_out_of_scope(str(model_exports["myeloblast"]), *files, "myeloblast")
    assert set(alarmed.sites) == {"barcelona", "mll-marrow"}  # the first lymphocytes are marrow's, platelets Barcelona's
    assert alarmed.cell_types["lymphocyte @ mll-marrow"] == OutOfScopeFigures(images=2, out_of_scope=0.0, caught=0.0, alerts=1.0)
    assert alarmed.in_scope_called_out == {"barcelona": 0.0, "munich": 0.0}
    failures = out_of_scope_failures(alarmed, bars, "myeloblast")
    bar = bars.max_out_of_scope_alerts
    assert f"site mll-marrow: myeloblast alerts on out-of-scope cells = 1.0000 of 2 test images, required <= {bar}" in failures
    assert len(failures) == 4  # caught and alerts at both sites

    silent = score_out_of_scope(str(model_exports["out_of_scope"]), *files, "myeloblast")
    assert all(f == OutOfScopeFigures(2, 1.0, 1.0, 0.0) for f in silent.sites.values())
    assert out_of_scope_failures(silent, bars, "myeloblast") == [
        f"site {site}: in-scope test images called out of scope = 1.0000, required <= {bars.max_in_scope_called_out}"
        for site in ("barcelona", "munich")
    ]
    result = gate_result(
        {"accuracy": 1.0, "critical_recall": 1.0, "count": 5}, {}, None, [], False, BARS_DICT, "myeloblast",
        out_of_scope=silent, out_of_scope_bars=bars,
    )  # fmt: skip
    assert not result["blessed"] and result["out_of_scope"]["in_scope_called_out"] == {"barcelona": 1.0, "munich": 1.0}
