"""`bloodcell score`: the served model's figures on labelled images of a lab's own, over gRPC, per site."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from cli.options import CONFIG_OPTION, OVERRIDES_OPTION, load_config_or_exit
from cli.serving import (
    BATCH_SIZE_OPTION,
    EXIT_NOT_CLASSIFIED,
    EXIT_SERVING_ERROR,
    MODEL_OPTION,
    ROOT_CERT_OPTION,
    SERVER_OPTION,
    TLS_OPTION,
    VERSION_OPTION,
    image_limits,
    serving_client,
)
from contracts.config import Config

if TYPE_CHECKING:  # imported when a command runs: `bloodcell web` needs neither
    from components.image_verification import Candidate
    from components.labelled_scores import ScoredImage, ScoreReport
    from serving.client import ServingClient

app = typer.Typer()

EXIT_BARS_MISSED = 4
SCORE_FILE = "score.json"


class ReportFormat(str, enum.Enum):
    table = "table"
    json = "json"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_report(report: ScoreReport, classes: list[str], critical_class: str, target: str, bars: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from components.labelled_scores import called_instead

    console = Console(highlight=False)
    models = ", ".join(report.models) or "none"
    console.print(
        f"Served model {models} at {target}: {len(report.images) - len(report.not_scored)} of "
        f"{len(report.images)} image(s) scored"
    )
    summary = Table(title="Per site (top class; the alert is the served myeloblast_alert)")
    columns = ("site", "images", "accuracy", f"{critical_class} recall", "alert raised", "alert on other cells", "out of scope")
    for column in columns:
        summary.add_column(column, justify="left" if column == "site" else "right")
    rows = list(report.sites.items()) + ([("all", report.pooled)] if len(report.sites) > 1 else [])
    for site, figures in rows:
        summary.add_row(
            site,
            str(figures["count"]),
            _fraction(figures["accuracy"]),
            _fraction(figures["critical_recall"]),
            _fraction(figures["critical_alert_recall"]),
            _fraction(figures["other_alert_rate"]),
            _fraction(report.out_of_scope.in_scope_called_out.get(site)),
        )
    console.print(summary)
    if report.out_of_scope.cell_types:
        outside = Table(title="Cells that are none of the classes (--out-of-scope)")
        for column in ("cell type @ site", "images", "out of scope", "caught (or review)", "alert raised"):
            first = column.startswith("cell")
            outside.add_column(column, justify="left" if first else "right", no_wrap=first)
        for name, f in report.out_of_scope.cell_types.items():
            outside.add_row(name, str(f.images), _fraction(f.out_of_scope), _fraction(f.caught), _fraction(f.alerts))
        console.print(outside)
    for site, figures in report.sites.items():
        table = Table(title=f"site {site}: per class")
        for column in ("class", "images", "recall", "precision", "called instead"):
            table.add_column(column, justify="left" if column in ("class", "called instead") else "right")
        for name in classes:
            if name not in figures["support"]:
                continue
            wrong = ", ".join(f"{other} {count}" for other, count in called_instead(figures, classes, name))
            table.add_row(
                name,
                str(figures["support"][name]),
                _fraction(figures["recall"][name]),
                _fraction(figures["precision"].get(name)),
                wrong,
            )
        console.print(table)
    if report.failures:
        console.print(f"[bold red]Bars missed ({bars}):")
        for failure in report.failures:
            console.print(f"  {failure}")
    else:
        console.print(f"[green]Every site meets the bars ({bars}).")
    if report.not_scored:
        console.print(f"[yellow]{len(report.not_scored)} image(s) not scored:")
        for image in report.not_scored:
            console.print(f"  {image.path}: {image.error}")
    if report.outside_class_folders:
        console.print(f"Not in a class folder, not images of the set: {', '.join(report.outside_class_folders)}")


def _score(client: ServingClient, candidates: list[Candidate], config: Config, size: int) -> list[ScoredImage]:
    """Each candidate as a ScoredImage: the served answer, or why there is none. Reads `size` files at a time."""
    from components.image_verification import UnreadableFileError, listing_problem, read_candidate
    from components.labelled_scores import ScoredImage
    from contracts.image_check import ImageRejectedError
    from contracts.progress import progress
    from serving.screening import RequestCaps, screen_images

    limits, caps = image_limits(config), RequestCaps.of(config.serving, size)
    images = []
    with progress(total=len(candidates), unit="img", small=len(candidates) <= size) as bar:
        for start in range(0, len(candidates), size):
            chunk = candidates[start : start + size]
            scored = [ScoredImage(c.key, c.site, c.label_name) for c in chunk]
            ready = []
            for k, candidate in enumerate(chunk):
                problem = listing_problem(candidate)
                if not problem:
                    try:
                        ready.append((k, read_candidate(candidate, limits)))
                    except (UnreadableFileError, ImageRejectedError) as err:
                        problem = str(err)
                if problem:
                    scored[k] = dataclasses.replace(scored[k], error=problem)
            outcomes = screen_images(client, [(chunk[k].key, data) for k, data in ready], limits, caps)
            for (k, _), outcome in zip(ready, outcomes, strict=True):
                p = outcome.prediction
                scored[k] = dataclasses.replace(
                    scored[k],
                    predicted_class=p.predicted_class if p else "",
                    alert=p.alert(config.critical_class) if p else False,
                    out_of_scope=p.out_of_scope if p else False,
                    needs_review=p.needs_review if p else False,
                    model_version=p.model_version if p else None,
                    model=p.model_name if p else "",
                    error=outcome.error,
                )
            images += scored
            bar.update(len(chunk))
    return images


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_side_by_side(base: ScoreReport, adapted: ScoreReport, critical_class: str) -> None:
    """Per site: the base model's figures beside those of the model that answers the site (its adapted one)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    title = "Base model / the site's adapted model (`bloodcell adapt`)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    columns = ("site", "answered by", "accuracy", f"{critical_class}\nrecall", "alert\nraised", "alert on\nother cells")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right", no_wrap=column not in columns[:2])
    for site, figures in adapted.sites.items():
        before = base.sites[site]
        answered = sorted({i.model for i in adapted.images if i.site == site and i.model})
        cells = [
            f"{_short(before[key])}/{_short(figures[key])}"
            for key in ("accuracy", "critical_recall", "critical_alert_recall", "other_alert_rate")
        ]
        table.add_row(site, ", ".join(answered), *cells)
    Console(highlight=False).print(table)


def _save(report: ScoreReport, classes: list[str], folder: Path) -> None:
    from components.plots import confusion_matrix_png

    folder.mkdir(parents=True, exist_ok=True)
    (folder / SCORE_FILE).write_text(json.dumps(report.as_dict(), indent=1))
    for site, figures in report.sites.items():
        title = f"site {site}: {figures['count']} images, accuracy {figures['accuracy']:.3f}"
        confusion_matrix_png(figures["confusion_matrix"], classes, str(folder / confusion_file(site)), title)


def confusion_file(site: str) -> str:
    """`confusion_matrix_<site>.png`, with any character unsafe in a file name replaced by `_`."""
    return f"confusion_matrix_{re.sub(r'[^A-Za-z0-9_.-]', '_', site)}.png"


@app.command()
def score(
    roots: List[str] = typer.Argument(
        ..., help="Folders of labelled images, PATH or PATH=SITE: one sub-folder per class, as a data root."
    ),
    server: Optional[str] = SERVER_OPTION,
    model: Optional[str] = MODEL_OPTION,
    version: Optional[int] = VERSION_OPTION,
    out: ReportFormat = typer.Option(ReportFormat.table, help="table for people; json (every image too) for scripts."),
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    tls: bool = TLS_OPTION,
    root_cert: Optional[Path] = ROOT_CERT_OPTION,
    out_of_scope_roots: Optional[List[str]] = typer.Option(
        None,
        "--out-of-scope",
        help="Folder of cells that are none of the classes, PATH or PATH=SITE: one sub-folder per cell type; repeatable.",
    ),
    save: Optional[Path] = typer.Option(
        None, "--save", help="Folder to write score.json (every image's answer) and each site's confusion matrix PNG."
    ),
    adapted: bool = typer.Option(
        False,
        "--adapted",
        help="Also ask each site's adapted model (`bloodcell adapt`) and show base and adapted side"
        " by side; the report and its bars are then of the adapted answers (each site's own model, else the base).",
    ),  # fmt: skip
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Score the model in TF Serving on labelled images of your own scanner (gRPC Predict): accuracy, recall
    and precision per class, what each class was called instead, myeloblast recall by the top class and by
    the alert, per site, judged by the serving gate's bars (evaluation.min_accuracy, min_critical_recall);
    with --out-of-scope, how its cells are answered (out of scope, caught, alerts), by the gate's out-of-scope bars.

    A site's images are named by the folder's MANIFEST.csv `site` column, else by PATH=SITE, else by the
    folder's name. Every file is scored or listed with the reason it was not. Exit codes: 0 every site meets
    the bars, 1 serving error, 2 bad arguments, 3 bars met but some images not scored, 4 a site misses a bar."""
    from components.image_verification import IngestionError, find_candidates
    from components.labelled_scores import score_report
    from contracts.data_roots import DataRootError, check_roots, with_roots_given
    from serving.client import ServingError

    config = load_config_or_exit(config_path, overrides)
    try:
        data_roots = with_roots_given([], roots, out_of_scope_roots)
        check_roots(data_roots)
        candidates, loose = find_candidates(data_roots, config.classes, every_class=False)
    except (DataRootError, IngestionError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if not candidates:
        typer.echo(f"error: no files in class folders ({', '.join(config.classes)}) under {', '.join(roots)}", err=True)
        raise typer.Exit(2)
    size = batch_size or config.serving.batch_size
    try:
        with serving_client(config, server, model, version, tls, root_cert) as client:
            images = _score(client, candidates, config, size)
        by_site = []
        for site in sorted({c.site for c in candidates if c.site}) if adapted else []:
            with serving_client(config, server, model, version, tls, root_cert, site) as client:
                by_site += _score(client, [c for c in candidates if c.site == site], config, size)
    except ServingError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_SERVING_ERROR) from None
    evaluation = config.evaluation

    def report_of(scored: list[ScoredImage]) -> ScoreReport:
        return score_report(
            scored, config.classes, config.critical_class, evaluation.min_accuracy, evaluation.min_critical_recall,
            loose, evaluation.bars_of_sites(), evaluation.out_of_scope_bars(),
        )  # fmt: skip

    base = report_of(images)
    report = report_of(by_site + [i for i in images if not i.site]) if adapted else base
    if save:
        _save(report, config.classes, save)
    if out == ReportFormat.json:
        payload = report.as_dict() | ({"base": base.as_dict()} if adapted else {})
        typer.echo(json.dumps(payload, indent=1))
    else:
        bars = f"accuracy >= {evaluation.min_accuracy}, {config.critical_class} recall >= {evaluation.min_critical_recall}"
        bars += "".join(
            f"; {site}: accuracy >= {own.min_accuracy}, recall >= {own.min_critical_recall}"
            for site, own in evaluation.bars_of_sites().items()
        )
        bars += (
            f"; out of scope: caught >= {evaluation.min_out_of_scope_caught}, alerts <= "
            f"{evaluation.max_out_of_scope_alerts}, classes called out <= {evaluation.max_in_scope_called_out}"
        )
        if adapted:
            _print_side_by_side(base, report, config.critical_class)
        _print_report(report, config.classes, config.critical_class, server or config.serving.grpc_target, bars)
    if report.failures:
        raise typer.Exit(EXIT_BARS_MISSED)
    if report.not_scored:
        raise typer.Exit(EXIT_NOT_CLASSIFIED)
