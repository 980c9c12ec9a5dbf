"""Drives a Kubeflow Pipelines deployment with `kfp.Client`: upload the compiled pipeline (or a new version
of it), start runs, create, list and disable recurring runs (scheduled retraining)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import kfp
import kfp_server_api
import urllib3
from croniter import croniter


class KfpError(RuntimeError):
    """A Kubeflow Pipelines request that cannot be done, with a readable reason."""


def validate_cron(expression: str, count: int = 3, start: datetime.datetime | None = None) -> list[datetime.datetime]:
    """Checks a KFP cron expression (six fields, seconds first) and returns its next `count` fire times (UTC)."""
    fields = expression.split()
    if len(fields) != 6:
        raise KfpError(
            f"cron {expression!r} has {len(fields)} fields; Kubeflow Pipelines needs 6, seconds first "
            "(e.g. '0 0 2 * * *' for 02:00 every day)"
        )
    try:
        schedule = croniter(expression, start or datetime.datetime.now(datetime.timezone.utc), second_at_beginning=True)
        return [schedule.get_next(datetime.datetime) for _ in range(count)]
    except (ValueError, KeyError) as err:
        raise KfpError(f"cron {expression!r} is not valid: {err}") from None


@dataclasses.dataclass(frozen=True)
class Connection:
    host: str | None  # None: from the kube config (in-cluster or ~/.kube/config)
    namespace: str = "kubeflow"
    token: str | None = None  # bearer token (e.g. from `kubectl create token`)


def describe_error(err: Exception, connection: Connection) -> str:
    """A one-line reason for a failed KFP call: unreachable, an HTTP error from the API, or the error itself."""
    where = connection.host or "the cluster in the kube config"
    if isinstance(err, urllib3.exceptions.MaxRetryError):
        return f"cannot reach Kubeflow Pipelines at {where}: {err.reason}"
    if isinstance(err, kfp_server_api.ApiException):
        return f"Kubeflow Pipelines at {where} answered {err.status} {err.reason}: {(err.body or '').strip()[:300]}"
    return str(err)


def connect(connection: Connection) -> kfp.Client:
    return kfp.Client(host=connection.host, namespace=connection.namespace, existing_token=connection.token)


def _pipeline_id(client: kfp.Client, name: str) -> str | None:
    return client.get_pipeline_id(name)


def upload(client: kfp.Client, package: str, name: str, version: str, description: str = "") -> tuple[str, str]:
    """Uploads the compiled pipeline as `name` (first time) or as a new version `version` of it.
    Returns (pipeline_id, version_id)."""
    pipeline_id = _pipeline_id(client, name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(package, pipeline_name=name, description=description)
        pipeline_id = pipeline.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1).pipeline_versions or []
        if not versions:
            raise KfpError(f"pipeline {name} uploaded but it has no version")
        return pipeline_id, versions[0].pipeline_version_id
    created = client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline_id)
    return pipeline_id, created.pipeline_version_id


def _latest_version(client: kfp.Client, name: str) -> tuple[str, str]:
    pipeline_id = _pipeline_id(client, name)
    if pipeline_id is None:
        raise KfpError(f"no pipeline named {name!r} in Kubeflow Pipelines: upload it first (bloodcell kfp upload)")
    versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
    if not versions:
        raise KfpError(f"pipeline {name!r} has no versions")
    return pipeline_id, versions[0].pipeline_version_id


def _experiment_id(client: kfp.Client, experiment: str, namespace: str) -> str:
    return client.create_experiment(experiment, namespace=namespace).experiment_id


def start_run(
    client: kfp.Client, connection: Connection, name: str, experiment: str, run_name: str, params: dict[str, Any]
) -> str:
    """Starts one run of the latest version of the pipeline; returns the run id."""
    pipeline_id, version_id = _latest_version(client, name)
    run = client.run_pipeline(
        experiment_id=_experiment_id(client, experiment, connection.namespace),
        job_name=run_name,
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
    )
    return run.run_id


def schedule(
    client: kfp.Client,
    connection: Connection,
    name: str,
    experiment: str,
    schedule_name: str,
    cron: str,
    params: dict[str, Any],
) -> str:
    """Creates an enabled recurring run (one run at a time, no catch-up of missed runs); returns its id."""
    validate_cron(cron)
    pipeline_id, version_id = _latest_version(client, name)
    recurring = client.create_recurring_run(
        experiment_id=_experiment_id(client, experiment, connection.namespace),
        job_name=schedule_name,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        enabled=True,
    )
    return recurring.recurring_run_id


def list_schedules(client: kfp.Client, connection: Connection) -> list[dict[str, str]]:
    response = client.list_recurring_runs(page_size=100, namespace=connection.namespace)
    return [
        {
            "id": r.recurring_run_id,
            "name": r.display_name,
            "cron": r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else "",
            "status": str(r.status),
        }
        for r in response.recurring_runs or []
    ]


def unschedule(client: kfp.Client, recurring_run_id: str) -> None:
    client.disable_recurring_run(recurring_run_id)
