"""Figures of served answers on labelled images: per class, per site, the alert, and the gate's bars."""

from __future__ import annotations

import pytest

from components.labelled_scores import ScoredImage, called_instead, figures, score_report
from tests.helpers import CLASSES

CRITICAL = "myeloblast"


def answers(site: str, true_class: str, predicted: list[str], alerts: list[bool] | None = None) -> list[ScoredImage]:
    alerts = alerts or [p == CRITICAL for p in predicted]
    return [
        ScoredImage(f"lab/{true_class}/{site}_{k}.jpg", site, true_class, p, a, 7)
        for k, (p, a) in enumerate(zip(predicted, alerts, strict=True))
    ]


def test_figures_count_classes_precision_and_the_alert():
    images = (
        answers("paris", "myeloblast", ["myeloblast", "myeloblast", "monocyte"], [True, True, True])
        + answers("paris", "monocyte", ["monocyte", "myeloblast", "myeloblast", "monocyte"], [False, True, True, True])
    )
    result = figures(images, CLASSES, CRITICAL)
    assert result["count"] == 7
    assert result["accuracy"] == pytest.approx(4 / 7)
    assert result["recall"] == {"monocyte": 0.5, "myeloblast": pytest.approx(2 / 3)}
    assert result["precision"] == {"monocyte": pytest.approx(2 / 3), "myeloblast": 0.5}
    assert result["critical_recall"] == pytest.approx(2 / 3)
    assert result["critical_alert_recall"] == 1.0  # the alert also flags the myeloblast called monocyte
    assert result["other_alert_rate"] == 0.75
    assert called_instead(result, CLASSES, "monocyte") == [("myeloblast", 2)]
    assert called_instead(result, CLASSES, "basophil") == []


def test_every_site_is_judged_by_the_gates_bars_and_a_site_without_myeloblasts_on_accuracy_alone():
    images = (
        answers("paris", "myeloblast", ["myeloblast"] * 9 + ["monocyte"])
        + answers("paris", "monocyte", ["monocyte"] * 10)
        + answers("lyon", "seg_neutrophil", ["seg_neutrophil"] * 19 + ["erythroblast"])
    )
    report = score_report(images, CLASSES, CRITICAL, min_accuracy=0.95, min_critical_recall=0.99)
    assert list(report.sites) == ["lyon", "paris"]
    assert report.sites["lyon"]["critical_recall"] is None and report.sites["lyon"]["critical_alert_recall"] is None
    assert report.failures == [
        "site paris: myeloblast recall = 0.9000 on 20 images, required >= 0.99",
    ]
    assert report.pooled["count"] == 40 and report.pooled["accuracy"] == pytest.approx(38 / 40)
    assert report.model_versions == [7]


def test_images_not_scored_are_kept_with_their_reason_and_count_in_no_figure():
    refused = ScoredImage("lab/basophil/empty.jpg", "paris", "basophil", error="empty file (0 bytes)")
    unknown = ScoredImage("lab/lymphocyte/a.jpg", "paris", None, error="unknown class folder 'lymphocyte'")
    images = answers("paris", "basophil", ["basophil"] * 4) + [refused, unknown]
    report = score_report(images, CLASSES, CRITICAL, 0.95, 0.99, ["lab/MANIFEST.csv"])
    assert report.not_scored == [refused, unknown]
    assert report.as_dict()["outside_class_folders"] == ["lab/MANIFEST.csv"]
    assert report.pooled["count"] == 4 and report.failures == []
    assert len(report.as_dict()["images"]) == 6

    nothing = score_report([refused, unknown], CLASSES, CRITICAL, 0.95, 0.99)
    assert nothing.sites == {} and nothing.failures == ["no image could be scored (2 listed)"]
