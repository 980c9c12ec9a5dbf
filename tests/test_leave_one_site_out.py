"""benchmarks/leave_one_site_out.py: the figures of a held-out site and its table (training: e2e suite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.leave_one_site_out import HeldOutSite, markdown_table, score_site, write_table

CLASSES = ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]
MONOCYTE, MYELOBLAST, NEUTROPHIL = 2, 3, 4


def marrow_like() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 monocytes (4 called myeloblast, 1 neutrophil), 6 blasts (1 called monocyte), 4 neutrophils; the
    alert raised for every cell called myeloblast and for one monocyte called monocyte."""
    labels = np.array([MONOCYTE] * 10 + [MYELOBLAST] * 6 + [NEUTROPHIL] * 4)
    predicted = np.array([MYELOBLAST] * 4 + [NEUTROPHIL] + [MONOCYTE] * 5 + [MONOCYTE] + [MYELOBLAST] * 5 + [NEUTROPHIL] * 4)
    alerts = predicted == MYELOBLAST
    alerts[5] = True
    return labels, predicted, alerts


def test_a_held_out_site_is_scored_per_class_with_what_each_was_called_instead():
    accuracy, figures, precision, alert_rate = score_site(*marrow_like(), CLASSES, MYELOBLAST)
    assert accuracy == (5 + 5 + 4) / 20
    assert set(figures) == {"monocyte", "myeloblast", "seg_neutrophil"}  # only the classes the site has
    assert figures["monocyte"].recall == 0.5 and figures["monocyte"].called_instead == {"myeloblast": 4, "seg_neutrophil": 1}
    assert figures["myeloblast"].right == 5 and figures["myeloblast"].called_instead == {"monocyte": 1}
    assert precision == 5 / 9  # 9 answers of myeloblast, 5 of them blasts
    assert alert_rate == 5 / 14  # 4 monocytes called myeloblast and one alert on a monocyte, of 14 non-blasts


def test_a_site_without_blasts_has_no_precision_when_never_called_and_an_alert_rate():
    labels = np.array([0, 1, 1])
    _, figures, precision, alert_rate = score_site(labels, labels, np.array([False, False, True]), CLASSES, MYELOBLAST)
    assert precision is None and alert_rate == 1 / 3 and set(figures) == {"basophil", "erythroblast"}


def test_the_table_and_json_hold_every_held_out_site(tmp_path):
    _, figures, precision, alert_rate = score_site(*marrow_like(), CLASSES, MYELOBLAST)
    row = HeldOutSite("mll-marrow", 20, 0.7, figures, precision, alert_rate, [], 0.98, 1.0, {"a": 0.97, "b": 1.0}, 12, 3.5)
    no_blasts = HeldOutSite("barcelona", 3, 1.0, {}, None, 0.0, ["basophil"], 0.95, None, {"c": 0.95}, 8, 1.0)
    write_table(tmp_path, [row, no_blasts], CLASSES, "myeloblast", "note")
    table = (tmp_path / "loso.md").read_text()
    assert table == markdown_table([row, no_blasts], CLASSES, "myeloblast", "note")
    marrow = "| `mll-marrow` | 20 | 0.700 | – | – | 0.500 (5/10) | 0.833 (5/6) | 1.000 (4/4) | 0.556 | 0.357 | "
    assert marrow + "0.980 (a 0.970, b 1.000) / 1.000 | 12, 3.5 |" in table
    assert "| `barcelona` | 3 | 1.000 | " in table and "| – | 0.000 | 0.950 (c 0.950) / – | 8, 1.0 |" in table
    assert "- `mll-marrow`: monocyte: 4 myeloblast, 1 seg_neutrophil; myeloblast: 1 monocyte" in table
    assert "- `barcelona`: none wrong" in table
    saved = json.loads((tmp_path / "loso.json").read_text())
    assert [s["site"] for s in saved["sites"]] == ["mll-marrow", "barcelona"]
    assert saved["sites"][0]["recall"] == {"monocyte": 0.5, "myeloblast": 5 / 6, "seg_neutrophil": 1.0}


def test_a_held_out_site_is_adapted_on_one_half_and_the_other_half_scored_without_and_with(tmp_path):
    """Real marrow cells through the ingestion's examples and a small exported model: the half scored, both
    scorings of it, the outcome (adapted, or refused with the reason) and its table."""
    import tensorflow as tf

    from benchmarks.leave_one_site_out import adapted_half, halves
    from tests.helpers import CONFIG, DATA_ROOTS, export_model, real_files, write_examples

    marrow = next(r.path for r in DATA_ROOTS if r.name == "mll-marrow")
    files = [f for name in ("monocyte", "myeloblast") for f in real_files(name, 20, Path(marrow))]
    write_examples(tmp_path / "held.gz", files)
    held = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(tmp_path / "held.gz"), "GZIP")]
    found = adapted_half(held, export_model(tmp_path / "model", seed=2), CONFIG)
    scored = halves(held)[1]
    assert found.images == len(scored) and 0 < len(scored) < 40
    assert sum(f.images for f in found.without.classes.values()) == len(scored)
    assert found.refused or found.adapted != found.without  # adapted: its own answers; refused: the base model's
    _, figures, precision, alert_rate = score_site(*marrow_like(), CLASSES, MYELOBLAST)
    row = HeldOutSite("mll-marrow", 40, 0.7, figures, precision, alert_rate, [], 0.98, 1.0, {}, 1, 0.1, found)
    table = markdown_table([row], CLASSES, "myeloblast", "note")
    assert f"| `mll-marrow` | {found.images} | {'refused: ' if found.refused else 'adapted'}" in table
