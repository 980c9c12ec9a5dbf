"""The end-of-run figures as readable text (shared by the run report and the command line)."""

from __future__ import annotations

from typing import Any

from contracts.run_summary import RunSummary


def format_classification_report(per_class: dict[str, dict[str, float]], accuracy: float) -> str:
    """Per-class precision, recall, F1 and support, then overall accuracy (NaN where undefined)."""
    lines = [f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, f in per_class.items():
        lines.append(f"{name:<16}{f['precision']:>10.4f}{f['recall']:>10.4f}{f['f1']:>10.4f}{f['support']:>10d}")
    total = sum(f["support"] for f in per_class.values())
    lines.append(f"{'accuracy':<16}{'':>20}{accuracy:>10.4f}{total:>10d}")
    return "\n".join(lines) + "\n"


def render_summary(summary: RunSummary, report_dir: str) -> str:
    """The end-of-run figures as readable text."""
    splits = summary.splits
    ingestion = summary.ingestion
    lines = [
        "",
        "=== bloodcell run summary ===",
        f"images: found {ingestion['found']}, ingested {ingestion['ingested']}, "
        f"duplicates removed {ingestion['duplicates']}, rejected {ingestion['rejected']}",
        "splits: " + " / ".join(f"{name.replace('_', ' ')} {n}" for name, n in splits.items()),
        f"epochs trained: {summary.epochs_trained}",
        f"test accuracy: {summary.test_accuracy:.4f}",
        format_classification_report(summary.per_class, summary.test_accuracy),
    ]
    critical = summary.critical_class
    lines.append(f"{critical} recall: {summary.critical_recall:.4f}")
    lines += site_lines(summary.sites, critical, "per site (test split)")
    if summary.hold_out:
        lines += hold_out_lines(summary.hold_out, critical)
    point = summary.operating_point
    lines.append(
        f"{critical} alert: calibrated p >= {point['threshold']:.4f} (eval recall {point['recall']:.4f}, "
        f"precision {point['precision']:.4f}); ECE {point['ece_before']:.4f} -> {point['ece_after']:.4f} "
        f"(temperature {point['temperature']:.3f})"
    )
    if summary.out_of_scope:
        lines += out_of_scope_lines(summary.out_of_scope, critical, point)
    lines += audit_lines(summary.audit, critical)
    served = summary.served_model
    if served:
        lines.append(
            f"served model (version {served['version']}) on this test split: accuracy {served['accuracy']:.4f}, "
            f"{summary.critical_class} recall {served['critical_recall']:.4f}"
        )
    lines += [
        f"served version {b['version']} does not load and was skipped (TF Serving keeps the last version that "
        f"loads): {b['error']}"
        for b in summary.broken_served_versions
    ]
    # "Already served" only explains a refusal when every bar was met; a failed bar is always shown as one.
    unchanged = summary.identical_to_served and not summary.gate_failures
    if summary.blessed:
        lines.append("gate: BLESSED")
    elif unchanged:
        lines.append(f"gate: passed, but this model is the one already served (version {served['version']})")
    else:
        lines.append("gate: NOT BLESSED")
        lines += [f"  failed: {failure}" for failure in summary.gate_failures]
        if summary.identical_to_served:
            lines.append(f"  (this model is also the one already served, version {served['version']})")
    if summary.pushed:
        lines.append(f"pushed: {summary.pushed_destination}")
    else:
        lines.append("pushed: no (" + ("already served" if unchanged else "model not blessed") + ")")
    tracking = summary.tracking
    if "error" in tracking:
        lines.append(f"MLflow: NOT logged to {tracking['uri']}: {tracking['error']}")
    elif tracking:
        registered = f", registered version {tracking['registered_version']}" if tracking["registered_version"] else ""
        lines.append(f"MLflow: run {tracking['run_id']} in {tracking['uri']}{registered}")
    lines.append(
        f"report: {report_dir} (summary.json, model_card.md, audit.json, classification_report.txt, "
        "confusion_matrix.png, training_curves.png)"
    )
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def site_lines(sites: dict[str, dict[str, Any]], critical: str, title: str) -> list[str]:
    """A table: one row per site with its images, accuracy, critical recall and recall per class."""
    classes = list(dict.fromkeys(c for f in sites.values() for c in f["recall"]))
    lines = [f"{title}:", f"  {'site':<14}{'images':>8}{'accuracy':>10}{critical + ' recall':>20}  recall per class"]
    for site, f in sites.items():
        recalls = ", ".join(f"{c} {f['recall'][c]:.3f} ({f['support'][c]})" for c in classes if c in f["recall"])
        lines.append(f"  {site:<14}{f['count']:>8}{f['accuracy']:>10.4f}{_figure(f['critical_recall']):>20}  {recalls}")
    return lines


def hold_out_lines(hold_out: dict[str, Any], critical: str) -> list[str]:
    """The held-out root or site: recall of each class that training still had, and per site."""
    pooled = hold_out["pooled"]
    lines = [
        f"held out {hold_out['name']!r} (never trained on): {pooled['count']} images, accuracy {pooled['accuracy']:.4f}",
        "  recall per class that training had: "
        + ", ".join(
            f"{c} {r:.4f} ({round(r * pooled['support'][c])}/{pooled['support'][c]})" for c, r in hold_out["recall"].items()
        ),
    ]
    if hold_out["untrained_classes"]:
        lines.append(f"  not in training, so not recognisable: {', '.join(hold_out['untrained_classes'])}")
    called = ", ".join(f"{c} {n}/{pooled['support'][c]}" for c, n in hold_out["called_critical"].items())
    lines.append(f"  other cells called {critical}: {called or 'none'}")
    return lines + site_lines(hold_out["sites"], critical, "  held out, per site")


def out_of_scope_lines(figures: dict[str, Any], critical: str, point: dict[str, float]) -> list[str]:
    """Cells that are none of the classes (out-of-scope test split), per cell type and site."""
    lines = [
        f"out of scope (calibrated p > {point['out_of_scope_threshold']:.4f}; no alert then), out-of-scope test split:",
        f"  {'cell type @ site':<26}{'images':>8}{'out of scope':>14}{'caught':>8}{'alert':>8}",
    ]
    for name, f in figures["cell_types"].items():
        lines.append(f"  {name:<26}{f['images']:>8}{f['out_of_scope']:>14.4f}{f['caught']:>8.4f}{f['alerts']:>8.4f}")
    called = ", ".join(f"{site} {share:.4f}" for site, share in figures["in_scope_called_out"].items())
    return [*lines, f"  test images of the classes called out of scope: {called}"]


def audit_lines(audit: dict[str, Any], critical: str) -> list[str]:
    """The shortcut audit's figures (audit.json) as text lines."""
    lines = [
        f"shortcut audit: colour-histogram baseline {audit['colour_baseline']['accuracy']:.4f} "
        f"(CNN {audit['clean']['accuracy']:.4f})"
    ]
    for group, g in audit["groups"].items():
        lines.append(f"  group {group}: {g['count']} images, accuracy {g['accuracy']:.4f}")
    for name, v in audit["stress"].items():
        alert = v.get("critical_alert_recall")  # absent from audits written before it was measured
        lines.append(
            f"  stress {name}: accuracy {v['accuracy']:.4f} (drop {v['drop']:+.4f}), {critical} recall "
            f"{_figure(v['critical_recall'])}" + ("" if alert is None else f", alert raised for {alert:.4f}")
            + ("" if v["passes"] else "  FAILS the bar")
        )
    return lines
