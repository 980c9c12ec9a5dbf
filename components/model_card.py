"""The model card of a run's model (markdown), written from the run summary's figures only."""

from __future__ import annotations

from typing import Any

from contracts.run_summary import RunSummary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _recalls(recall: dict[str, float], support: dict[str, int] | None = None) -> str:
    """`name recall%`, with ` (n images)` when the support is given."""
    return ", ".join(f"{name} {_pct(value)}" + (f" ({support[name]})" if support else "") for name, value in recall.items())


def _per_site(counts: dict[str, int]) -> str:
    return ", ".join(f"{site} {n or 'none'}" for site, n in counts.items())


def _site_table(sites: dict[str, dict[str, Any]], critical: str) -> list[str]:
    lines = [f"| site | images | accuracy | {critical} recall | recall per class (images) |", "|---|---|---|---|---|"]
    for site, f in sites.items():
        recall = _pct(f["critical_recall"])
        lines.append(f"| {site} | {f['count']} | {_pct(f['accuracy'])} | {recall} | {_recalls(f['recall'], f['support'])} |")
    return lines


def _out_of_scope_section(figures: dict[str, Any] | None, critical: str, point: dict[str, float]) -> list[str]:
    """How the model answers cells that are none of the classes, on the out-of-scope test split."""
    if not figures:
        return ["", "## Cells that are none of the classes", "Not trained: every cell is called one of the classes."]
    lines = [
        "",
        "## Cells that are none of the classes",
        f"`out_of_scope` is set when the calibrated out-of-scope probability is over {point['out_of_scope_threshold']:.4f}; "
        f"then no `{critical}_alert` is raised. Out-of-scope test images (their share called out of scope, caught: "
        "out of scope or sent to review, and raising the alert):",
        "",
        f"| cell type @ site | images | out of scope | caught | {critical} alert |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {f['images']} | {_pct(f['out_of_scope'])} | {_pct(f['caught'])} | {_pct(f['alerts'])} |"
        for name, f in figures["cell_types"].items()
    ]
    called_out = ", ".join(f"{site} {_pct(v)}" for site, v in figures["in_scope_called_out"].items())
    return [*lines, "", f"Test images of the classes called out of scope: {called_out}."]


def render_model_card(summary: RunSummary, model_name: str, pipeline_run_id: str) -> str:
    """Intended use, data and its confound, metrics, shortcut audit, operating point, gate, limitations."""
    critical = summary.critical_class
    splits, ingestion = summary.splits, summary.ingestion
    audit, point = summary.audit, summary.operating_point
    version = summary.pushed_destination.rstrip("/").rsplit("/", 1)[-1] if summary.pushed else "not pushed"
    lines = [
        f"# Model card: {model_name} (serving version {version})",
        "",
        f"Pipeline run `{pipeline_run_id or 'unknown'}`. Every figure below was measured by that run.",
        "",
        "## Intended use",
        f"Screening aid for microscope images of single white blood cells: five classes, with an alert for "
        f"`{critical}` (leukemic blast). Every result is for review by a haematologist; it is not a diagnosis. "
        "Not validated on images from scanners, stains or magnifications other than those in the training data.",
        "",
        "## Data",
        f"Images found {ingestion['found']}, ingested {ingestion['ingested']}, exact duplicates removed "
        f"{ingestion['duplicates']}, rejected {ingestion['rejected']}. "
        f"Split train {splits['train']} / eval {splits['eval']} / test {splits['test']} (stratified, after deduplication).",
        "",
        "**Sites.** Each image comes from a site (hospital and scanner) with its own stain, background, "
        "magnification and JPEG encoding. Where a class comes from one site only, the site's look predicts the "
        "class: a colour-histogram classifier with no shape information scores "
        f"{_pct(audit['colour_baseline']['accuracy'])} on this test split. Training images per class and site: "
        + "; ".join(f"{c}: {_per_site(s)}" for c, s in audit["train_sites_per_class"].items())
        + ".",
        "",
        "## Metrics (test split)",
        f"Accuracy {_pct(summary.test_accuracy)}; {critical} recall {_pct(summary.critical_recall)}.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, f in summary.per_class.items():
        lines.append(f"| {name} | {f['precision']:.4f} | {f['recall']:.4f} | {f['f1']:.4f} | {f['support']} |")
    lines += ["", "Per site (the release gate applies its bars to each):", ""]
    lines += _site_table(summary.sites, critical)
    hold_out = summary.hold_out
    if hold_out:
        pooled = hold_out["pooled"]
        lines += [
            "",
            f"## Held out: `{hold_out['name']}` (never trained on)",
            f"The estimate for a site the model has not seen: {pooled['count']} images, accuracy "
            f"{_pct(pooled['accuracy'])}. Recall of each class training had: {_recalls(hold_out['recall'])}. "
            f"Other cells called {critical}: "
            + (", ".join(f"{c} {n} of {pooled['support'][c]}" for c, n in hold_out["called_critical"].items()) or "none")
            + ".",
            "",
        ]
        lines += _site_table(hold_out["sites"], critical)
    lines += [
        "",
        "## Shortcut audit",
        f"Colour-only baseline {_pct(audit['colour_baseline']['accuracy'])} versus this CNN "
        f"{_pct(audit['clean']['accuracy'])} (gain from morphology {100 * audit['morphology_gain']:.2f} points).",
        "",
        "| acquisition group (size, background) | images | accuracy | recall per class |",
        "|---|---|---|---|",
    ]
    for group, g in audit["groups"].items():
        lines.append(f"| {group} | {g['count']} | {_pct(g['accuracy'])} | {_recalls(g['recall'])} |")
    bars = audit["bars"]
    lines += [
        "",
        f"Stress variants of the test split (bar: accuracy drop <= {100 * bars['max_stress_drop']:.0f} points and "
        f"{critical} recall >= {_pct(bars['min_stress_critical_recall'])}, of the top class; \"alert raised\": the "
        f"{critical} images for which the served `{critical}_alert` of the operating point below is raised):",
        "",
        f"| variant | accuracy | drop (points) | {critical} recall | {critical} alert raised | passes |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in audit["stress"].items():
        lines.append(
            f"| {name} | {_pct(v['accuracy'])} | {100 * v['drop']:.2f} | {_pct(v['critical_recall'])} | "
            f"{_pct(v.get('critical_alert_recall'))} | {'yes' if v['passes'] else 'NO'} |"
        )
    lines += [
        "",
        "## Operating point",
        f"`{critical}_alert` is raised when the calibrated {critical} probability is at least "
        f"{point['threshold']:.4f} (or {critical} is the top class), chosen on the eval split for "
        f"{_pct(point['recall'])} recall at {_pct(point['precision'])} precision. Probabilities are "
        f"temperature-scaled (T = {point['temperature']:.3f}; expected calibration error on the eval split "
        f"{point['ece_before']:.4f} before, {point['ece_after']:.4f} after). `needs_review` is set when the top "
        f"probability is under {point['review_confidence']:.2f}.",
        *_out_of_scope_section(summary.out_of_scope, critical, point),
        "",
        "## Release gate",
        "Blessed and pushed." if summary.blessed else "Not blessed: " + "; ".join(summary.gate_failures or ["see gate"]),
        "",
        "## Limitations",
        "- Trained and tested on images from the sites above only; the test figures do not show performance on "
        "another hospital's images (a held-out run, `bloodcell run --hold-out-site`, estimates it). Before use "
        "with another scanner, score the served model on labelled cells of that scanner: `bloodcell score`.",
        "- Single, centred white cells only; smears with several or no white cells are out of scope.",
        "- Input is resized to the training resolution; fine chromatin detail below it is not seen.",
    ]
    for name, site in audit["single_site_classes"].items():
        others = {s: n for s, n in audit["train_sites_per_class"][name].items() if s != site}
        lacks = f" (other sites: {_per_site(others)})" if others else ""
        lines.append(
            f"- {name} is trained from site `{site}` alone{lacks}: the model may have learnt that site's look for "
            f"{name}. Expect lower {name} recall on images from other sites; it lacks {name} images from them."
        )
    failed = [name for name, v in audit["stress"].items() if not v["passes"]]
    if failed:
        lines.append(f"- Fails the stress bar on: {', '.join(failed)}. Expect lower accuracy on such images.")
    return "\n".join(lines) + "\n"
