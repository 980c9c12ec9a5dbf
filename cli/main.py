"""The `bloodcell` command line. Commands import the pipeline or serving code they need when they run, so
the web image (serving only, see requirements-serving.lock) runs `bloodcell web` without TFX."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from cli.adaptation import app as adaptation_app
from cli.kfp import app as kfp_app
from cli.options import CONFIG_OPTION, OVERRIDES_OPTION, load_config_or_exit
from cli.run_log import configure_process
from cli.scoring import app as scoring_app
from cli.serving import app as serving_app
from contracts.data_roots import roots_to_json, with_roots_given

app = typer.Typer(
    help="Leukemia screening of blood-cell images: a TFX pipeline for local runs and Kubeflow.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _commands() -> None:
    """Keeps `bloodcell COMMAND` form as commands are added."""


app.add_typer(serving_app)
app.add_typer(scoring_app)
app.add_typer(kfp_app)
app.add_typer(adaptation_app)


@app.command()
def run(
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
    data_roots: Optional[List[str]] = typer.Option(
        None,
        "--data-root",
        help="Folder with one sub-folder per class, as PATH or PATH=SITE; repeat for several (replaces the roots of "
        "the classes in paths.data_roots).",
    ),
    out_of_scope_roots: Optional[List[str]] = typer.Option(
        None,
        "--out-of-scope-root",
        help="Folder with one sub-folder per cell type that is none of the classes, as PATH or PATH=SITE; repeat for "
        "several (replaces the out-of-scope roots in paths.data_roots).",
    ),
    hold_out_site: Optional[str] = typer.Option(
        None,
        "--hold-out-site",
        help="A data root's folder name or a site: trained without it, scored on it per class, not pushed.",
    ),
    output_root: Optional[str] = typer.Option(None, help="Where artifacts, metadata and reports go."),
    epochs: Optional[int] = typer.Option(None, help="Maximum training epochs."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute every step instead of reusing cached results."),
    tune: bool = typer.Option(False, "--tune", help="Search hyperparameters first (tuning section of the config)."),
) -> None:
    """Run the full pipeline locally: ingest, validate, [tune], train, evaluate (per site) and audit, gate, push.

    With --hold-out-site, the run measures how the model does on a site it has not seen, and pushes nothing."""
    roots = None
    if data_roots or out_of_scope_roots:
        configured = load_config_or_exit(config_path, list(overrides or [])).paths.data_roots
        roots = roots_to_json(with_roots_given(configured, data_roots, out_of_scope_roots))
    shortcuts = {
        "paths.data_roots": roots,
        "evaluation.hold_out": json.dumps(hold_out_site) if hold_out_site else None,
        "paths.output_root": output_root,
        "training.epochs": epochs,
        "tuning.enabled": "true" if tune else None,
    }
    extra = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    if output_root is not None and not any(o.startswith("paths.serving_root=") for o in overrides or []):
        extra.append(f"paths.serving_root={os.path.join(output_root, 'serving')}")
    config = load_config_or_exit(config_path, list(overrides or []) + extra)
    from components.summary_text import render_summary  # the pipeline's imports only when running
    from pipelines.local_runner import RunLockedError, run_local

    try:
        summary, report_dir = run_local(config, enable_cache=not no_cache)
    except RunLockedError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render_summary(summary, report_dir))


@app.command()
def runs(
    config_path: Path = CONFIG_OPTION,
    output_root: Optional[str] = typer.Option(None, help="Output root of the runs [default: paths.output_root]."),
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
) -> None:
    """List past local pipeline runs (from ML Metadata): accuracy, myeloblast recall, weakest site, push."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    config, records, where = _history(config_path, output_root)
    if as_json:
        typer.echo(json.dumps([r.row() for r in records], indent=1))
        return
    # Fits an 80-column terminal: whole run ids and numbers never wrap (the start time is in the id, the data
    # fingerprint in --json); a site and its accuracy on two lines; "pushed": the version, or why not.
    table = Table(title=f"Runs in {where}", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("run id", no_wrap=True)
    table.add_column("accuracy", justify="right", no_wrap=True)
    table.add_column(f"{config.critical_class}\nrecall", justify="right", no_wrap=True)
    table.add_column("weakest\nsite", min_width=10)
    table.add_column("held\nout", overflow="fold")
    table.add_column("pushed", no_wrap=True)
    for r in records:
        pushed = r.pushed_version or ("blessed" if r.blessed else "no")
        weakest = r.weakest_site.replace(" ", "\n") if r.weakest_site else "-"
        table.add_row(r.run_id, f"{r.test_accuracy:.4f}", f"{r.critical_recall:.4f}", weakest, r.hold_out or "-", pushed)
    Console().print(table)


@app.command()
def compare(
    run_a: str = typer.Argument(..., help="Run id (or a unique prefix), from `bloodcell runs`."),
    run_b: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    config_path: Path = CONFIG_OPTION,
    output_root: Optional[str] = typer.Option(None, help="Output root of the runs [default: paths.output_root]."),
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
) -> None:
    """Show two runs' test metrics side by side with the change from A to B."""
    from rich.console import Console
    from rich.table import Table

    from pipelines.run_history import compare as compare_runs
    from pipelines.run_history import find_run

    _, records, _ = _history(config_path, output_root)
    try:
        a, b = find_run(records, run_a), find_run(records, run_b)
    except KeyError as err:
        typer.echo(f"error: {err.args[0]}", err=True)
        raise typer.Exit(2) from None
    rows = compare_runs(a, b)
    if as_json:
        typer.echo(json.dumps({"a": a.run_id, "b": b.run_id, "metrics": rows}, indent=1))
        return
    table = Table(title=f"A = {a.run_id}   B = {b.run_id}")
    for column in ("metric", "A", "B", "B - A"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        delta = row["delta"]
        style = "green" if delta > 0 else "red" if delta < 0 else ""
        table.add_row(row["metric"], f"{row['a']:.4f}", f"{row['b']:.4f}", f"[{style}]{delta:+.4f}" if style else f"{delta:+.4f}")
    Console().print(table)


def _history(config_path: Path, output_root: Optional[str]):
    """The config, the runs recorded under its output root and the metadata store's path."""
    from pipelines.local_runner import metadata_path
    from pipelines.run_history import list_runs

    config = load_config_or_exit(config_path, [f"paths.output_root={output_root}"] if output_root else [])
    try:
        return config, list_runs(metadata_path(config)), metadata_path(config)
    except FileNotFoundError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    configure_process()
    app()


if __name__ == "__main__":
    main()
