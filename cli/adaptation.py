"""`bloodcell adapt` and `bloodcell sites`: a site's own model from its unlabelled images, served beside the base
model to requests that name the site; the adapted sites, their versions and what each version is; rollback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from cli.options import CONFIG_OPTION, OVERRIDES_OPTION, load_config_or_exit
from cli.serving import image_limits

app = typer.Typer()
SITE_HELP = "The site's name: requests that name it (`bloodcell predict --site`) get its adapted model."
EXIT_REFUSED = 3


@app.command()
def adapt(
    folder: Optional[Path] = typer.Argument(
        None, exists=True, file_okay=False, help="Unlabelled images of the site (any layout; folder names are not read)."
    ),
    site: str = typer.Option(..., "--site", help=SITE_HELP),
    model_dir: Optional[Path] = typer.Option(
        None,
        "--model",
        exists=True,
        file_okay=False,
        help="The exported model to adapt [default: the newest version under <serving_root>/<model_name>].",
    ),  # fmt: skip
    rollback: bool = typer.Option(False, "--rollback", help="Take the site's newest adapted version back instead."),
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Adapt the served model to one site's look from its unlabelled images, and serve it to that site.

    The base model's answers for every other site stay exactly what they were. Refused, with the cause, for too
    few usable images, images that are not blood cells of this kind, or an adaptation that would lose alerts."""
    config = load_config_or_exit(config_path, overrides)
    from components.site_adapter import AdaptationRefusedError, adapt_site, rollback_site
    from contracts.artifacts import served_versions
    from contracts.signatures import SiteNameError, site_model_name

    serving_root = config.paths.serving_root
    try:
        served_name = site_model_name(config.model_name, site)
    except SiteNameError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if rollback:
        try:
            taken, now = rollback_site(serving_root, config.model_name, site)
        except AdaptationRefusedError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_REFUSED) from None
        answering = f"version {now} of {served_name}" if now else f"the base model {config.model_name}"
        typer.echo(f"{site}: version {taken} rolled back; {answering} answers the site")
        return
    if folder is None:
        typer.echo("error: FOLDER of the site's images is needed (or --rollback)", err=True)
        raise typer.Exit(2)
    base_version = None
    if model_dir is None:
        base_path = os.path.join(serving_root, config.model_name)
        versions = served_versions(base_path)
        if not versions:
            typer.echo(f"error: no served model under {base_path}: push one (`bloodcell run`) or give --model", err=True)
            raise typer.Exit(2)
        base_version, model_dir = versions[-1], Path(base_path) / str(versions[-1])
    try:
        record = adapt_site(
            str(model_dir), str(folder), site, config.adaptation, image_limits(config), serving_root,
            config.model_name, base_version,
        )  # fmt: skip
    except AdaptationRefusedError as err:
        typer.echo(f"refused: {err}", err=True)
        raise typer.Exit(EXIT_REFUSED) from None
    from components.experiment_tracking import log_adaptation
    from pipelines.configs import tracking_uri

    published = os.path.join(serving_root, served_name, str(record.version))
    tracked = log_adaptation(tracking_uri(config), config.tracking.experiment, served_name, record, published)
    critical = config.critical_class
    lines = [
        f"{site}: adapted ({record.method}, first {record.blocks} blocks) from {record.base_model}",
        f"  images: {record.images_used} used, {len(record.images_rejected)} rejected, {record.duplicates} repeats",
        f"  drift from the training sites: {record.drift_summary:.2f} (per block {', '.join(f'{d:.2f}' for d in record.drift)};"
        f" refused over {config.adaptation.max_drift:g})",
        f"  {critical} alert on the site's images: base {record.critical_share_base:.1%},"
        f" adapted {record.critical_share_adapted:.1%}; of the {record.confident_alerts} confident alerts of the base model"
        f" {record.confident_alerts_kept} kept",
        f"  served as {served_name} version {record.version} ({published})",
        f"  MLflow: {tracked.get('run_id') or tracked.get('error')}",
        f"  ask it: bloodcell predict IMAGE --site {site}; take it back: bloodcell adapt --site {site} --rollback",
    ]
    lines += [f"  rejected {path}: {reason}" for path, reason in sorted(record.images_rejected.items())]
    typer.echo("\n".join(lines))


@app.command()
def sites(
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """List the sites with an adapted model: their versions, the one served, and what it was adapted from."""
    config = load_config_or_exit(config_path, overrides)
    from contracts.artifacts import ADAPTATION_FILE, read_json
    from contracts.signatures import site_model_name
    from contracts.site_models import adapted_sites, model_base_path

    rows = []
    for site, versions in adapted_sites(config.paths.serving_root, config.model_name).items():
        base_path = model_base_path(config.paths.serving_root, site_model_name(config.model_name, site))
        record = read_json(os.path.join(base_path, str(versions[-1])), ADAPTATION_FILE) if versions else {}
        rows.append({"site": site, "versions": versions, "served": versions[-1] if versions else None, "record": record})
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        typer.echo(f"no adapted site under {config.paths.serving_root}: every site gets the base model")
    for row in rows:
        record = row["record"]
        if not record:
            typer.echo(f"{row['site']}: every version rolled back (the base model answers)")
            continue
        typer.echo(
            f"{row['site']}: version {row['served']} of {len(row['versions'])} ({record['created']}), {record['method']},"
            f" {record['images_used']} images, drift {sum(record['drift']) / len(record['drift']):.2f},"
            f" base version {record['base_version']}"
        )
