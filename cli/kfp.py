"""`bloodcell compile` and `bloodcell kfp upload|run|schedule|schedules|unschedule|launch-local`."""

from __future__ import annotations

import datetime
import enum
import json
from pathlib import Path
from typing import List, Optional

import typer

from cli.options import CONFIG_OPTION, OVERRIDES_OPTION, load_config_or_exit
from contracts.config import Config
from contracts.data_roots import roots_to_json, with_roots_given

app = typer.Typer()
kfp_app = typer.Typer(help="Drive Kubeflow Pipelines: upload, run, schedule retraining.", no_args_is_help=True)

HOST_OPTION = typer.Option(
    None, "--host", envvar="KFP_HOST", help="KFP API URL, e.g. http://localhost:8888 [default: from the kube config]."
)
NAMESPACE_OPTION = typer.Option("kubeflow", "--namespace", envvar="KFP_NAMESPACE", help="Kubernetes namespace.")
TOKEN_OPTION = typer.Option(None, "--token", envvar="KFP_TOKEN", help="Bearer token (e.g. `kubectl create token`).")
EXPERIMENT_OPTION = typer.Option("bloodcell", "--experiment", help="KFP experiment of the run.")


class Target(str, enum.Enum):
    kubeflow = "kubeflow"


@app.command("compile")
def compile_command(
    target: Target = typer.Option(Target.kubeflow, help="Orchestrator to compile for."),
    output: Path = typer.Option(Path("pipeline.yaml"), "-o", "--output", help="Pipeline YAML to write."),
    image: Optional[str] = typer.Option(None, help="Component image [default: kubeflow.image in config]."),
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Compile the pipeline for Kubeflow Pipelines (KubeflowV2DagRunner, the same create_pipeline as `run`)."""
    config = load_config_or_exit(config_path, overrides)
    from pipelines.kubeflow_runner import compile_pipeline

    spec = compile_pipeline(config, output, image)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    typer.echo(f"wrote {output} ({target.value}): {len(spec['root']['dag']['tasks'])} steps, runtime parameters:")
    for name, parameter in parameters.items():
        default = str(parameter["defaultValue"])
        typer.echo(f"  {name} = {default if len(default) < 60 else default[:57] + '...'}")


def _connection(host: Optional[str], namespace: str, token: Optional[str]):
    from pipelines.kfp_client import Connection

    return Connection(host=host, namespace=namespace, token=token)


DATA_ROOTS_OPTION = typer.Option(
    None,
    "--data-root",
    help="Data root of the five classes in the cluster, PATH or PATH=SITE; repeat for several [default: "
    "kubeflow.data_roots]; the out-of-scope roots of kubeflow.data_roots are kept.",
)


def _run_parameters(config: Config, data_roots: Optional[List[str]]) -> dict:
    """Runtime parameter values from the config (with --set overrides), as seen in the cluster."""
    from pipelines.kubeflow_runner import kubeflow_config, parameter_values

    values = parameter_values(kubeflow_config(config))
    if data_roots:  # the compiled Trainer reads the out-of-scope splits: their roots stay
        values["data_roots"] = roots_to_json(with_roots_given(config.kubeflow.data_roots, data_roots, None))
    return values


def _fail(err: Exception, connection=None) -> None:  # connection: pipelines.kfp_client.Connection
    from pipelines.kfp_client import describe_error

    typer.echo(f"error: {describe_error(err, connection) if connection else err}", err=True)
    raise typer.Exit(1) from None


@kfp_app.command()
def upload(
    package: Path = typer.Argument(Path("pipeline.yaml"), help="Compiled pipeline YAML (bloodcell compile)."),
    version: Optional[str] = typer.Option(None, help="Version name [default: UTC timestamp]."),
    host: Optional[str] = HOST_OPTION,
    namespace: str = NAMESPACE_OPTION,
    token: Optional[str] = TOKEN_OPTION,
    config_path: Path = CONFIG_OPTION,
) -> None:
    """Upload the pipeline, or a new version of it when it exists."""
    from pipelines.kfp_client import connect
    from pipelines.kfp_client import upload as upload_pipeline

    config = load_config_or_exit(config_path)
    if not package.is_file():
        _fail(FileNotFoundError(f"{package} not found: run `bloodcell compile -o {package}` first"))
    version = version or datetime.datetime.now(datetime.timezone.utc).strftime("v%Y%m%d-%H%M%S")
    connection = _connection(host, namespace, token)
    try:
        client = connect(connection)
        pipeline_id, version_id = upload_pipeline(client, str(package), config.pipeline_name, version)
    except Exception as err:  # noqa: BLE001 - kfp raises ApiException, urllib3 and ValueError errors; exit 1
        _fail(err, connection)
    typer.echo(f"pipeline {config.pipeline_name}: id {pipeline_id}, version {version_id}")


@kfp_app.command()
def run(
    run_name: Optional[str] = typer.Option(None, "--name", help="Run name [default: bloodcell-<timestamp>]."),
    data_roots: Optional[List[str]] = DATA_ROOTS_OPTION,
    host: Optional[str] = HOST_OPTION,
    namespace: str = NAMESPACE_OPTION,
    token: Optional[str] = TOKEN_OPTION,
    experiment: str = EXPERIMENT_OPTION,
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Start a run of the latest pipeline version (parameters from the config and --set, e.g. training.epochs=5)."""
    from pipelines.kfp_client import connect, start_run

    config = load_config_or_exit(config_path, overrides)
    name = run_name or datetime.datetime.now(datetime.timezone.utc).strftime(f"{config.pipeline_name}-%Y%m%d-%H%M%S")
    connection = _connection(host, namespace, token)
    try:
        parameters = _run_parameters(config, data_roots)
        run_id = start_run(connect(connection), connection, config.pipeline_name, experiment, name, parameters)
    except Exception as err:  # noqa: BLE001 - reported, exit 1
        _fail(err, connection)
    typer.echo(f"run {name}: id {run_id}")


@kfp_app.command()
def schedule(
    cron: str = typer.Option("0 0 2 * * *", help="KFP cron: six fields, seconds first [default: 02:00 daily, UTC]."),
    schedule_name: str = typer.Option("bloodcell-nightly-retraining", "--name", help="Recurring run name."),
    data_roots: Optional[List[str]] = DATA_ROOTS_OPTION,
    dry_run: bool = typer.Option(False, help="Only validate the cron expression and show the next fire times."),
    host: Optional[str] = HOST_OPTION,
    namespace: str = NAMESPACE_OPTION,
    token: Optional[str] = TOKEN_OPTION,
    experiment: str = EXPERIMENT_OPTION,
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Create a recurring run (scheduled retraining) of the latest pipeline version."""
    from pipelines.kfp_client import KfpError, connect, validate_cron
    from pipelines.kfp_client import schedule as create_schedule

    config = load_config_or_exit(config_path, overrides)
    try:
        fire_times = validate_cron(cron)
    except KfpError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"cron '{cron}': next runs " + ", ".join(t.strftime("%Y-%m-%d %H:%M:%S UTC") for t in fire_times))
    if dry_run:
        return
    connection = _connection(host, namespace, token)
    try:
        client = connect(connection)
        recurring_id = create_schedule(
            client, connection, config.pipeline_name, experiment, schedule_name, cron, _run_parameters(config, data_roots)
        )
    except Exception as err:  # noqa: BLE001 - reported, exit 1
        _fail(err, connection)
    typer.echo(f"recurring run {schedule_name}: id {recurring_id} (enabled, one run at a time, no catch-up)")


@kfp_app.command()
def schedules(
    host: Optional[str] = HOST_OPTION,
    namespace: str = NAMESPACE_OPTION,
    token: Optional[str] = TOKEN_OPTION,
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
) -> None:
    """List recurring runs."""
    from pipelines.kfp_client import connect, list_schedules

    connection = _connection(host, namespace, token)
    try:
        rows = list_schedules(connect(connection), connection)
    except Exception as err:  # noqa: BLE001 - reported, exit 1
        _fail(err, connection)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        typer.echo("no recurring runs")
    for row in rows:
        typer.echo(f"{row['id']}  {row['name']}  cron '{row['cron']}'  {row['status']}")


@kfp_app.command()
def unschedule(
    recurring_run_id: str = typer.Argument(..., help="Recurring run id (bloodcell kfp schedules)."),
    host: Optional[str] = HOST_OPTION,
    namespace: str = NAMESPACE_OPTION,
    token: Optional[str] = TOKEN_OPTION,
) -> None:
    """Disable a recurring run."""
    from pipelines.kfp_client import connect
    from pipelines.kfp_client import unschedule as disable

    connection = _connection(host, namespace, token)
    try:
        disable(connect(connection), recurring_run_id)
    except Exception as err:  # noqa: BLE001 - reported, exit 1
        _fail(err, connection)
    typer.echo(f"recurring run {recurring_run_id} disabled")


@kfp_app.command("launch-local")
def launch_local(
    package: Path = typer.Argument(Path("pipeline.yaml"), help="Compiled pipeline YAML (bloodcell compile)."),
    volumes: List[str] = typer.Option(
        ..., "--volume", help="PVC=LOCAL_DIR for each volume the pipeline mounts (e.g. bloodcell-data=/srv/data)."
    ),
    pipeline_root: Optional[str] = typer.Option(
        None, help="Local folder for the run's artifacts [default: the spec's pipeline root on its volume]."
    ),
    data_roots: Optional[List[str]] = DATA_ROOTS_OPTION,
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every task, even where the spec allows caching."),
    config_path: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Test tooling: execute a compiled pipeline here, step by step, as the KFP v2 backend would.

    Each step runs its container command exactly as compiled, in this project's environment instead of the
    image; parameters as `kfp run` would send them. Production runs stay on Kubeflow Pipelines.
    """
    from pipelines.kfp_launcher import LaunchError, launch, task_table

    config = load_config_or_exit(config_path, overrides)
    mapping = dict(v.partition("=")[::2] for v in volumes)
    if not package.is_file() or not all(mapping.values()):
        _fail(ValueError(f"need a compiled {package} (bloodcell compile) and --volume PVC=LOCAL_DIR, got {volumes}"))
    try:
        result = launch(
            package, mapping, _run_parameters(config, data_roots), pipeline_root, enable_cache=not no_cache, echo=typer.echo
        )
    except LaunchError as err:
        _fail(err)
    typer.echo(task_table(result))
    typer.echo(f"run {result.run_id}: artifacts under {result.pipeline_root}")
    if not result.ok:
        raise typer.Exit(1)


app.add_typer(kfp_app, name="kfp")
