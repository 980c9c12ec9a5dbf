"""How a candidate answers cells that are none of the classes: on the out-of-scope test split, per site and
per cell type, the share called out of scope, caught (out of scope or sent to review) and raising the
critical alert; on the test split, the share of each site's in-scope images called out of scope. Read by the
serving gate, which bars them per site, and shown in the run report, MLflow and the model card."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np
import tensorflow as tf

from contracts import features
from contracts.config import OutOfScopeBars
from contracts.signatures import (
    EXAMPLES_INPUT,
    EXAMPLES_SIGNATURE,
    NEEDS_REVIEW,
    OUT_OF_SCOPE,
    OUT_OF_SCOPE_PROBABILITY,
    alert_output,
)

_SPEC = {
    features.SITE: tf.io.FixedLenFeature([], tf.string),
    features.CELL_TYPE: tf.io.FixedLenFeature([], tf.string, default_value=""),
    features.LABEL: tf.io.FixedLenFeature([], tf.int64),
}


@dataclasses.dataclass(frozen=True)
class OutOfScopeFigures:
    """Out-of-scope images of one site (or one cell type at one site) and how they were answered."""

    images: int
    out_of_scope: float  # called out of scope
    caught: float  # called out of scope, or sent to review (needs_review)
    alerts: float  # raised the critical alert


@dataclasses.dataclass(frozen=True)
class OutOfScopeReport:
    sites: dict[str, OutOfScopeFigures]  # out-of-scope test images, per site
    cell_types: dict[str, OutOfScopeFigures]  # per "<cell type> @ <site>"
    in_scope_called_out: dict[str, float]  # test images of the classes called out of scope, per site

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OutOfScopeReport:
        return cls(
            sites={k: OutOfScopeFigures(**v) for k, v in raw["sites"].items()},
            cell_types={k: OutOfScopeFigures(**v) for k, v in raw["cell_types"].items()},
            in_scope_called_out=dict(raw["in_scope_called_out"]),
        )


def answers(model_dir: str, files: list[str], critical_class: str, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per example of the files: site, cell type, label, and the served out_of_scope, needs_review, alert and
    out-of-scope probability."""
    predict = tf.saved_model.load(model_dir).signatures[EXAMPLES_SIGNATURE]
    keys = (OUT_OF_SCOPE, NEEDS_REVIEW, alert_output(critical_class))
    rows: dict[str, list[np.ndarray]] = defaultdict(list)
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size):
        parsed = tf.io.parse_example(batch, _SPEC)
        rows["site"].append(parsed[features.SITE].numpy().astype(str))
        rows["cell_type"].append(parsed[features.CELL_TYPE].numpy().astype(str))
        rows["label"].append(parsed[features.LABEL].numpy())
        outputs = predict(**{EXAMPLES_INPUT: batch})
        for key in keys:
            rows[key].append(outputs[key].numpy().astype(bool))
        rows[OUT_OF_SCOPE_PROBABILITY].append(outputs[OUT_OF_SCOPE_PROBABILITY].numpy())
    return {key: np.concatenate(parts) for key, parts in rows.items()}


def _figures(rows: dict[str, np.ndarray], chosen: np.ndarray, critical_class: str) -> OutOfScopeFigures:
    out = rows[OUT_OF_SCOPE][chosen]
    return OutOfScopeFigures(
        images=int(chosen.sum()),
        out_of_scope=float(out.mean()),
        caught=float((out | rows[NEEDS_REVIEW][chosen]).mean()),
        alerts=float(rows[alert_output(critical_class)][chosen].mean()),
    )


def report_of(out: dict[str, np.ndarray], inside: dict[str, np.ndarray], critical_class: str) -> OutOfScopeReport:
    """The report from the served answers (as `answers` gives them) to out-of-scope images and to images of
    the classes."""
    sites = {site: _figures(out, out["site"] == site, critical_class) for site in sorted(set(out["site"]))}
    cell_types = {
        f"{cell} @ {site}": _figures(out, (out["cell_type"] == cell) & (out["site"] == site), critical_class)
        for cell, site in sorted(set(zip(out["cell_type"], out["site"], strict=True)))
    }
    called_out = {site: float(inside[OUT_OF_SCOPE][inside["site"] == site].mean()) for site in sorted(set(inside["site"]))}
    return OutOfScopeReport(sites, cell_types, called_out)


def score_out_of_scope(
    model_dir: str, test_files: list[str], out_of_scope_files: list[str], critical_class: str
) -> OutOfScopeReport:
    """The candidate's out-of-scope figures (see the module) from its examples signature, as served."""
    return report_of(
        answers(model_dir, out_of_scope_files, critical_class), answers(model_dir, test_files, critical_class), critical_class
    )


def out_of_scope_failures(
    report: OutOfScopeReport, bars: OutOfScopeBars, critical_class: str, what: str = "test images"
) -> list[str]:
    """Each site's out-of-scope figure beyond its bar, in words (`what` names the images; empty: every site
    meets them)."""
    failures = []
    for site, f in report.sites.items():
        if not f.caught >= bars.min_out_of_scope_caught:
            failures.append(
                f"site {site}: out-of-scope cells caught (out of scope or review) = {f.caught:.4f} of {f.images} "
                f"{what}, required >= {bars.min_out_of_scope_caught}"
            )
        if not f.alerts <= bars.max_out_of_scope_alerts:
            failures.append(
                f"site {site}: {critical_class} alerts on out-of-scope cells = {f.alerts:.4f} of {f.images} {what}, "
                f"required <= {bars.max_out_of_scope_alerts}"
            )
    failures += [
        f"site {site}: in-scope {what} called out of scope = {share:.4f}, required <= {bars.max_in_scope_called_out}"
        for site, share in report.in_scope_called_out.items()
        if not share <= bars.max_in_scope_called_out
    ]
    return failures
