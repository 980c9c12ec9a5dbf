"""A served model's figures on labelled images of a lab's own (the data-root layout), per site, judged by the
serving gate's bars: what `bloodcell score` reports before a lab trusts the model with its scanner's images."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from components.evaluation import matrix_figures
from components.image_verification import cell_type
from components.out_of_scope_scores import OutOfScopeReport, out_of_scope_failures, report_of
from components.serving_gate import site_failures
from contracts.config import OutOfScopeBars, SiteBars
from contracts.features import OUT_OF_SCOPE
from contracts.signatures import NEEDS_REVIEW, alert_output
from contracts.signatures import OUT_OF_SCOPE as OUT_OF_SCOPE_ANSWER


@dataclasses.dataclass(frozen=True)
class ScoredImage:
    """One listed file: its class folder (OUT_OF_SCOPE for a cell-type folder of an out-of-scope root) and
    site, and the served model's answer, or why it has none."""

    path: str  # <root name>/<class folder>/...
    site: str | None
    true_class: str | None
    predicted_class: str = ""  # "" when not scored
    alert: bool = False  # the served `<critical class>_alert`
    model_version: int | None = None
    error: str = ""  # why the image was not scored ("" = scored)
    out_of_scope: bool = False  # the served `out_of_scope`
    needs_review: bool = False  # the served `needs_review`
    model: str = ""  # the served model that answered (the base model, or the site's adapted model)


@dataclasses.dataclass(frozen=True)
class ScoreReport:
    images: list[ScoredImage]
    pooled: dict[str, Any]  # the figures of every scored image (`figures`)
    sites: dict[str, dict[str, Any]]  # the figures of each site's scored images, by site
    failures: list[str]  # the gate's bars a site misses, in words (empty: every site meets them)
    outside_class_folders: list[str]  # `<root name>/<file>` beside the class folders (documentation): not images
    out_of_scope: OutOfScopeReport  # the answers to out-of-scope cells, and the classes' images called out of scope

    @property
    def not_scored(self) -> list[ScoredImage]:
        return [i for i in self.images if i.error]

    @property
    def model_versions(self) -> list[int]:
        return sorted({i.model_version for i in self.images if i.model_version is not None})

    @property
    def models(self) -> list[str]:
        """Each served model that answered, as `name version`."""
        return sorted({f"{i.model} {i.model_version}" for i in self.images if i.model_version is not None})

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_versions": self.model_versions,
            "models": self.models,
            "pooled": self.pooled,
            "sites": self.sites,
            "failures": self.failures,
            "outside_class_folders": self.outside_class_folders,
            "out_of_scope": self.out_of_scope.as_dict(),
            "images": [dataclasses.asdict(i) for i in self.images],
        }


def figures(images: list[ScoredImage], classes: list[str], critical_class: str) -> dict[str, Any]:
    """Of scored images: count, accuracy, recall, precision and support per class present, the confusion
    matrix (rows: true class), the critical class's recall by the top class and by the served alert, and
    the share of the other images the alert is raised for (None where there are no such images)."""
    index = {name: k for k, name in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for image in images:
        matrix[index[image.true_class]][index[image.predicted_class]] += 1
    result = matrix_figures(matrix, classes, critical_class)
    called = {name: sum(row[k] for row in matrix) for k, name in enumerate(classes)}
    result["precision"] = {name: matrix[k][k] / called[name] for k, name in enumerate(classes) if called[name]}
    critical = [i.alert for i in images if i.true_class == critical_class]
    others = [i.alert for i in images if i.true_class != critical_class]
    result["critical_alert_recall"] = sum(critical) / len(critical) if critical else None
    result["other_alert_rate"] = sum(others) / len(others) if others else None
    return result


def called_instead(figures_of: dict[str, Any], classes: list[str], true_class: str) -> list[tuple[str, int]]:
    """The classes a class's images were called instead, most often first, with their counts."""
    row = figures_of["confusion_matrix"][classes.index(true_class)]
    wrong = Counter({name: row[k] for k, name in enumerate(classes) if name != true_class and row[k]})
    return wrong.most_common()


def out_of_scope_report(scored: list[ScoredImage], critical_class: str) -> OutOfScopeReport:
    """Of scored images: the out-of-scope ones' figures per site and per cell type and site, and per site the
    share of the classes' images called out of scope (`out_of_scope_scores.report_of`)."""

    def rows(images: list[ScoredImage]) -> dict[str, np.ndarray]:
        return {
            "site": np.array([str(i.site) for i in images], dtype=str),
            "cell_type": np.array([cell_type(i.path) for i in images], dtype=str),
            OUT_OF_SCOPE_ANSWER: np.array([i.out_of_scope for i in images], bool),
            NEEDS_REVIEW: np.array([i.needs_review for i in images], bool),
            alert_output(critical_class): np.array([i.alert for i in images], bool),
        }

    outside = [i for i in scored if i.true_class == OUT_OF_SCOPE]
    return report_of(rows(outside), rows([i for i in scored if i.true_class != OUT_OF_SCOPE]), critical_class)


def score_report(
    images: list[ScoredImage],
    classes: list[str],
    critical_class: str,
    min_accuracy: float,
    min_critical_recall: float,
    outside_class_folders: list[str] | None = None,
    site_bars: dict[str, SiteBars] | None = None,
    out_of_scope_bars: OutOfScopeBars | None = None,
) -> ScoreReport:
    """Pooled and per-site figures of the scored images of the classes, the answers to out-of-scope cells,
    and every site's bars missed (a site in `site_bars` by its own; a site without critical-class images on
    accuracy alone, as by the gate; with `out_of_scope_bars`, the gate's out-of-scope bars)."""
    scored = [i for i in images if not i.error]
    inside = [i for i in scored if i.true_class != OUT_OF_SCOPE]
    sites = {
        site: figures([i for i in inside if i.site == site], classes, critical_class)
        for site in sorted({str(i.site) for i in inside})
    }
    failures = site_failures(sites, min_accuracy, min_critical_recall, critical_class, "images", site_bars)
    outside = out_of_scope_report(scored, critical_class)
    if out_of_scope_bars is not None:
        failures += out_of_scope_failures(outside, out_of_scope_bars, critical_class, "images")
    if not scored:
        failures.append(f"no image could be scored ({len(images)} listed)")
    pooled = figures(inside, classes, critical_class)
    return ScoreReport(images, pooled, sites, failures, list(outside_class_folders or []), outside)
