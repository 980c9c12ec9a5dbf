"""`bloodcell predict | status | serve | web`: query TF Serving over gRPC, serve models locally, run the web endpoint."""

from __future__ import annotations

import csv
import enum
import json
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer

from cli.options import CONFIG_OPTION, OVERRIDES_OPTION, load_config_or_exit
from contracts.config import Config

app = typer.Typer()

SERVER_HELP = "TF Serving gRPC address HOST:PORT [default: serving.grpc_target]."
SERVER_OPTION = typer.Option(None, help=SERVER_HELP)
MODEL_OPTION = typer.Option(None, help="Model name [default: model_name in config].")
VERSION_OPTION = typer.Option(None, help="A specific model version [default: the latest served].")
BATCH_SIZE_OPTION = typer.Option(None, help="Images per request [default: serving.batch_size].")
TLS_OPTION = typer.Option(False, help="Use TLS for the gRPC channel.")
ROOT_CERT_OPTION = typer.Option(None, help="PEM root certificates for --tls [default: system roots].")
SITE_OPTION = typer.Option(
    None, "--site", help="The images' site: its adapted model answers (`bloodcell sites`), else the base model."
)
EXIT_SERVING_ERROR, EXIT_NOT_CLASSIFIED = 1, 3


class OutputFormat(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"


def serving_client(
    config: Config,
    server: Optional[str],
    model: Optional[str],
    version: Optional[int],
    tls: bool,
    root_cert: Optional[Path],
    site: Optional[str] = None,
):
    """A gRPC client of TF Serving with the config's timeouts, retries and message size; with `site`, it asks
    the site's adapted model where there is one."""
    from contracts.signatures import SiteNameError
    from serving.client import ServingClient

    try:
        return ServingClient(
            server or config.serving.grpc_target,
            model or config.model_name,
            version=version,
            timeout_s=config.serving.timeout_s,
            retries=config.serving.retries,
            max_message_mb=config.serving.max_message_mb,
            tls=tls,
            root_certificates=root_cert.read_bytes() if root_cert else None,
            site=site,
        )
    except SiteNameError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def image_limits(config: Config):
    """What an image sent to the served model may be: its pixels, smallest side and file size."""
    from contracts.image_check import Limits

    return Limits(config.serving.max_image_pixels, config.ingestion.min_side, config.ingestion.max_file_bytes)


def _expand(paths: List[Path]) -> list[Path]:
    """Files as given, and every file under the given folders (sorted); a missing path is an error."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            typer.echo(f"error: {path}: no such file or folder", err=True)
            raise typer.Exit(2)
    return files


def _rows(outcomes, classes: list[str], critical_class: str) -> list[dict]:
    rows = []
    for o in outcomes:
        p = o.prediction
        row = {
            "file": o.name,
            "predicted_class": p.predicted_class if p else "",
            "myeloblast_alert": p.alert(critical_class) if p else "",
            "needs_review": p.needs_review if p else "",
            "out_of_scope": p.out_of_scope if p else "",
            "p_out_of_scope": p.out_of_scope_probability if p else "",
            "model": p.model_name if p else "",
            "model_version": p.model_version if p else "",
        }
        row.update({f"p_{c}": p.probabilities.get(c, "") if p else "" for c in classes})
        row["error"] = o.error
        rows.append(row)
    return rows


def _print_table(rows: list[dict], critical_class: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # Fits an 80-column terminal: the file name folds, classes and numbers never do.
    table = Table(title="Predictions", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("file", overflow="fold")
    table.add_column("answer", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    table.add_column(f"p({critical_class})", justify="right", no_wrap=True)
    table.add_column("alert", no_wrap=True)
    table.add_column("review", no_wrap=True)
    classified = [r for r in rows if not r["error"]]
    for row in classified:
        alert = row["myeloblast_alert"]
        answer = "[dim]out of scope" if row["out_of_scope"] else row["predicted_class"]
        probability = row["p_out_of_scope"] if row["out_of_scope"] else row["p_" + row["predicted_class"]]
        table.add_row(
            row["file"],
            f"[bold red]{answer}" if alert else answer,
            f"{probability:.3f}",
            f"{row['p_' + critical_class]:.3f}",
            "[bold white on red]MYELOBLAST" if alert else "",
            "[yellow]yes" if row["needs_review"] else "",
        )
    if classified:
        console.print(table)
    alerts = sum(1 for r in classified if r["myeloblast_alert"])
    if alerts:
        flagged = f"{alerts} of {len(classified)} image(s) flagged as {critical_class}"
        console.print(f"[bold red]{flagged}: refer for haematologist review.")
    else:
        console.print(f"No {critical_class} flagged among {len(classified)} classified image(s).")
    outside = sum(1 for r in classified if r["out_of_scope"])
    if outside:
        console.print(f"{outside} image(s) out of scope: none of the classes the model knows, no alert raised for them.")
    for model, version in sorted({(r["model"], r["model_version"]) for r in classified}):
        console.print(f"Answered by model {model} version {version}.", highlight=False)
    failed = [r for r in rows if r["error"]]
    if failed:
        console.print(f"[yellow]{len(failed)} image(s) not classified:")
        for row in failed:
            console.print(f"  {row['file']}: {row['error']}", highlight=False)


@app.command()
def predict(
    paths: List[Path] = typer.Argument(..., help="Image files or folders (every file under a folder)."),
    server: Optional[str] = SERVER_OPTION,
    model: Optional[str] = MODEL_OPTION,
    version: Optional[int] = VERSION_OPTION,
    out: OutputFormat = typer.Option(OutputFormat.table, help="table for people; csv or json for scripts."),
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    tls: bool = TLS_OPTION,
    root_cert: Optional[Path] = ROOT_CERT_OPTION,
    site: Optional[str] = SITE_OPTION,
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Classify images with the model in TF Serving (gRPC Predict) and flag myeloblasts.

    Exit codes: 0 all classified, 1 serving error, 2 bad arguments, 3 some images not classified."""
    from contracts.progress import progress
    from serving.client import ServingError
    from serving.screening import RequestCaps, screen_images

    config = load_config_or_exit(config_path, overrides)
    files = _expand(paths)
    limits = image_limits(config)
    size = batch_size or config.serving.batch_size
    outcomes = []
    try:
        with serving_client(config, server, model, version, tls, root_cert, site) as client, progress(
            total=len(files), unit="img", small=len(files) <= size
        ) as bar:
            for start in range(0, len(files), size):  # reads one batch of files at a time
                chunk = [(str(f), f.read_bytes()) for f in files[start : start + size]]
                outcomes += screen_images(client, chunk, limits, RequestCaps.of(config.serving, size))
                bar.update(len(chunk))
    except ServingError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_SERVING_ERROR) from None
    rows = _rows(outcomes, config.classes, config.critical_class)
    if out == OutputFormat.json:
        typer.echo(json.dumps(rows, indent=1))
    elif out == OutputFormat.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["file"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(rows, config.critical_class)
    if any(o.error for o in outcomes):
        raise typer.Exit(EXIT_NOT_CLASSIFIED)


@app.command()
def explain(
    image: Path = typer.Argument(..., help="An image file."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Overlay PNG [default: IMAGE.gradcam.png]."),
    server: Optional[str] = typer.Option(None, help="Ask TF Serving at HOST:PORT instead of loading a model here."),
    site: Optional[str] = typer.Option(None, "--site", help="With --server: the image's site (its adapted model)."),
    model_dir: Optional[Path] = typer.Option(
        None, help="A SavedModel folder [default: the newest version under <serving_root>/<model_name>]."
    ),
    config_path: Path = CONFIG_OPTION,
) -> None:
    """Write a Grad-CAM heat-map overlay showing what drove the model's prediction for IMAGE."""
    from contracts.artifacts import served_versions
    from contracts.image_check import ImageRejectedError, check_image
    from serving.client import ServingError
    from serving.explain import explain_with_saved_model, overlay_png

    config = load_config_or_exit(config_path)
    if not image.is_file():
        typer.echo(f"error: {image}: no such file", err=True)
        raise typer.Exit(2)
    data = image.read_bytes()
    try:
        check_image(data, image_limits(config))
    except ImageRejectedError as err:
        typer.echo(f"error: {image}: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        if server:
            with serving_client(config, server, None, None, False, None, site) as client:
                explanation = client.explain(data)
        else:
            base = Path(config.paths.serving_root) / config.model_name
            versions = served_versions(str(base))
            if model_dir is None and not versions:
                typer.echo(f"error: no pushed model under {base}: run the pipeline or pass --model-dir", err=True)
                raise typer.Exit(2)
            explanation = explain_with_saved_model(model_dir or base / str(versions[-1]), data)
    except ServingError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_SERVING_ERROR) from None
    target = out or image.with_name(image.stem + ".gradcam.png")
    target.write_bytes(overlay_png(data, explanation))
    answer = explanation.predicted_class
    if explanation.out_of_scope:
        answer = f"out of scope (closest class {answer})"
    typer.echo(f"{image}: predicted {answer}; Grad-CAM overlay written to {target}")


@app.command()
def status(
    server: Optional[str] = SERVER_OPTION,
    model: Optional[str] = MODEL_OPTION,
    tls: bool = TLS_OPTION,
    root_cert: Optional[Path] = typer.Option(None, help="PEM root certificates for --tls."),
    config_path: Path = CONFIG_OPTION,
) -> None:
    """Show the model's versions and states (GetModelStatus) and its signatures (GetModelMetadata)."""
    from serving.client import ServingError

    config = load_config_or_exit(config_path)
    try:
        with serving_client(config, server, model, None, tls, root_cert) as client:
            versions = client.status()
            typer.echo(f"model {client.model_name} at {client.target}")
            for v in versions:
                typer.echo(f"  version {v.version}: {v.state}" + (f"  ({v.error})" if v.error else ""))
            if not any(v.state == "AVAILABLE" for v in versions):
                return
            served, signatures = client.metadata()
    except ServingError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_SERVING_ERROR) from None
    typer.echo(f"signatures of version {served}:")
    for name, sides in signatures.items():
        typer.echo(f"  {name}")
        for side, tensors in sides.items():
            typer.echo(f"    {side}: " + ", ".join(f"{k} ({dtype})" for k, dtype in tensors.items()))


@app.command()
def serve(
    model_base_path: Optional[Path] = typer.Option(
        None, "--model-base-path", help="Folder of numbered versions [default: <serving_root>/<model_name>]."
    ),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="[default: model_name in config]"),
    port: int = typer.Option(8500, help="gRPC port."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (0.0.0.0 accepts other machines, without authentication)."
    ),
    poll_wait_s: Optional[float] = typer.Option(
        None, "--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds", help="[default: serving.poll_wait_s]"
    ),
    model_config_file: Optional[Path] = typer.Option(
        None,
        "--model-config-file",
        "--model_config_file",
        help="A ModelServerConfig listing the models (the base and its adapted sites), followed as it changes"
        " [default: <serving_root>/models.config when it exists and no --model-base-path is given].",
    ),  # fmt: skip
    config_path: Path = CONFIG_OPTION,
) -> None:
    """Serve pushed models over TF Serving's gRPC API (local runs and tests; production uses tensorflow/serving)."""
    from contracts.site_models import MODEL_CONFIG_FILE
    from serving.model_server import start_server

    config = load_config_or_exit(config_path)
    name = model_name or config.model_name
    base = model_base_path or Path(config.paths.serving_root) / name
    listed = Path(config.paths.serving_root) / MODEL_CONFIG_FILE
    if model_config_file is None and model_base_path is None and listed.is_file():
        model_config_file = listed
    serving = config.serving
    running = start_server(
        name, base, port, host, poll_wait_s or serving.poll_wait_s, serving.max_message_mb,
        serving.max_concurrent_predictions, serving.max_queued_requests, model_config_file, serving.precision,
    )  # fmt: skip
    served = f"the models of {model_config_file}" if model_config_file else f"model {name} from {base}"
    typer.echo(f"serving {served} on {host}:{running.port} (Ctrl-C to stop)", err=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        running.stop()


@app.command()
def web(
    grpc_target: Optional[str] = typer.Option(None, "--grpc", help=SERVER_HELP),
    model: Optional[str] = MODEL_OPTION,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 in a container)."),
    port: int = typer.Option(8000, help="HTTP port."),
    config_path: Path = CONFIG_OPTION,
) -> None:
    """Run the web endpoint and page (FastAPI): POST /predict, GET /healthz, /readyz, /docs and the page at /."""
    import uvicorn

    from serving.web_app import create_app, upload_limits

    config = load_config_or_exit(config_path)
    client = serving_client(config, grpc_target, model, None, False, None)
    app = create_app(client, config.critical_class, upload_limits(config))
    # Past web_max_connections uvicorn answers 503 at once; slow uploads hold a connection, not a worker.
    uvicorn.run(app, host=host, port=port, limit_concurrency=config.serving.web_max_connections)
