"""MLflow tracking of pipeline runs: config, curves, test figures, artifacts, and the registry of pushed models.

Tracking must never decide a run's fate: when the store cannot be reached the run goes on, with one clear
warning and the error recorded in the run summary.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from contracts.run_summary import RunSummary
from contracts.site_models import AdaptationRecord

REGISTRY_ALIAS = "serving"  # the registered model version TF Serving serves
# An unreachable tracking server must cost seconds, not MLflow's default minutes of retries (env overrides).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_warned = False


def default_tracking_uri(output_root: str) -> str:
    """The local store: a SQLite file under the output root (browse it with `mlflow ui --backend-store-uri`)."""
    return f"sqlite:///{os.path.abspath(os.path.join(output_root, 'mlflow.db'))}"


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings -> {'training.epochs': '30', ...}; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def run_metrics(summary: RunSummary) -> dict[str, float]:
    """The run's final figures as MLflow metrics (test split, per site, held-out root or site, cells out of
    scope, gate, audit)."""
    critical = summary.critical_class
    metrics = {
        "test_accuracy": summary.test_accuracy,
        f"test_{critical}_recall": summary.critical_recall,
        "blessed": float(summary.blessed),
        "pushed": float(summary.pushed),
        "epochs_trained": float(summary.epochs_trained),
    }
    for name, figures in summary.per_class.items():
        for key in ("precision", "recall", "f1"):
            metrics[f"test_{name}_{key}"] = figures[key]
    for site, figures in (summary.sites or {}).items():
        metrics[f"site_{site}_accuracy"] = figures["accuracy"]
        metrics[f"site_{site}_{critical}_recall"] = figures["critical_recall"]
        metrics.update({f"site_{site}_{name}_recall": r for name, r in figures["recall"].items()})
    hold_out = summary.hold_out
    if hold_out:
        metrics["holdout_accuracy"] = hold_out["pooled"]["accuracy"]
        metrics.update({f"holdout_{name}_recall": r for name, r in hold_out["recall"].items()})
        metrics.update({f"holdout_{name}_called_{critical}": n for name, n in hold_out["called_critical"].items()})
    audit = summary.audit
    if audit:
        metrics["audit_colour_baseline_accuracy"] = audit["colour_baseline"]["accuracy"]
        for name, variant in audit["stress"].items():
            metrics[f"stress_{name}_accuracy"] = variant["accuracy"]
            metrics[f"stress_{name}_drop"] = variant["drop"]
            metrics[f"stress_{name}_{critical}_alert_recall"] = variant.get("critical_alert_recall")
    out_of_scope = summary.out_of_scope
    if out_of_scope:
        for site, f in out_of_scope["sites"].items():
            metrics.update({f"out_of_scope_{site}_{k}": f[k] for k in ("out_of_scope", "caught", "alerts")})
        metrics.update({f"site_{site}_called_out_of_scope": v for site, v in out_of_scope["in_scope_called_out"].items()})
    operating_point = summary.operating_point
    if operating_point:
        metrics["alert_threshold"] = operating_point["threshold"]
        metrics["alert_precision_eval"] = operating_point["precision"]
        metrics["ece_before"] = operating_point["ece_before"]
        metrics["ece_after"] = operating_point["ece_after"]
    return {k: float(v) for k, v in metrics.items() if v is not None}


def _experiment_id(mlflow: Any, name: str, artifact_root: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_root)


def _start(tracking_uri: str, experiment: str) -> tuple[Any, str]:
    """MLflow, pointed at the store, and the experiment's id (created on first use)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    artifact_root = ""
    if tracking_uri.startswith("sqlite:///"):  # local store: artifacts beside the database, not in the cwd
        artifact_root = "file://" + os.path.join(os.path.dirname(tracking_uri[len("sqlite:///") :]), "mlflow-artifacts")
    return mlflow, _experiment_id(mlflow, experiment, artifact_root or None)


def _failed(tracking_uri: str, err: Exception) -> dict[str, Any]:
    global _warned
    if not _warned:
        logging.warning("MLflow tracking to %s FAILED, going on without it: %s: %s", tracking_uri, type(err).__name__, err)
        _warned = True
    return {"uri": tracking_uri, "error": f"{type(err).__name__}: {err}"}


def log_adaptation(
    tracking_uri: str, experiment: str, served_name: str, record: AdaptationRecord, published: str
) -> dict[str, Any]:
    """Logs one site adaptation (tag `kind: site_adaptation`) and registers the published version as a version
    of the registered model `served_name`. Returns {'uri', 'run_id', 'registered_version'} or {'uri', 'error'}."""
    try:
        from mlflow import MlflowClient

        mlflow, experiment_id = _start(tracking_uri, experiment)
        tags = {"kind": "site_adaptation", "site": record.site, "base_model": record.base_model}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"adapt-{record.site}-{record.version}", tags=tags) as run:
            mlflow.log_params({"method": record.method, "blocks": record.blocks, "base_version": record.base_version})
            metrics = {f"drift_layer_{i + 1}": d for i, d in enumerate(record.drift)}
            metrics.update(
                images_used=record.images_used, images_rejected=len(record.images_rejected), duplicates=record.duplicates,
                critical_share_base=record.critical_share_base,
                critical_share_adapted=record.critical_share_adapted, confident_alerts=record.confident_alerts,
                confident_alerts_kept=record.confident_alerts_kept,
            )  # fmt: skip
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            registered = _register(MlflowClient(), served_name, published, run.info.run_id)
        return {"uri": tracking_uri, "run_id": run.info.run_id, "registered_version": registered}
    except Exception as err:  # noqa: BLE001 - tracking must not undo a published adaptation
        return _failed(tracking_uri, err)


def log_run(
    tracking_uri: str,
    experiment: str,
    model_name: str,
    pipeline_run_id: str,
    settings: dict[str, Any],
    summary: RunSummary,
    history: list[dict[str, float]],
    artifact_dirs: dict[str, str],
) -> dict[str, Any]:
    """Logs one pipeline run and registers its pushed model. Returns {'uri', 'run_id', 'registered_version'}
    or, when MLflow fails, {'uri', 'error'} after one warning."""
    try:
        from mlflow import MlflowClient

        mlflow, experiment_id = _start(tracking_uri, experiment)
        tags = {"tfx.pipeline_run_id": pipeline_run_id, "blessed": str(summary.blessed).lower()}
        tags["gate_failures"] = "; ".join(summary.gate_failures) or "none"
        if summary.hold_out:
            tags["hold_out"] = summary.hold_out["name"]
        with mlflow.start_run(experiment_id=experiment_id, run_name=pipeline_run_id or None, tags=tags) as run:
            mlflow.log_params(flatten(settings))
            for row in history:
                step = int(row["epoch"])
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=step)
            mlflow.log_metrics(run_metrics(summary))
            for path, folder in artifact_dirs.items():
                mlflow.log_artifacts(folder, artifact_path=path or None)
            registered = ""
            if summary.pushed:
                registered = _register(MlflowClient(), model_name, summary.pushed_destination, run.info.run_id)
        logging.info("MLflow: run %s logged to %s", run.info.run_id, tracking_uri)
        return {"uri": tracking_uri, "run_id": run.info.run_id, "registered_version": registered}
    except Exception as err:  # noqa: BLE001 - tracking must not fail the pipeline run
        return _failed(tracking_uri, err)


def _register(client: Any, model_name: str, pushed_destination: str, run_id: str) -> str:
    """Registers the pushed SavedModel (its serving folder) and points the 'serving' alias at the registered
    version with the highest serving version, the one TF Serving serves."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Blood-cell screening CNN served by TF Serving")
    serving_version = os.path.basename(os.path.normpath(pushed_destination))
    version = client.create_model_version(
        model_name, source=pushed_destination, run_id=run_id, tags={"serving_version": serving_version}
    )
    # TF Serving serves the highest version number: the alias follows it, not the order reports finish in.
    versions = client.search_model_versions(f"name='{model_name}'")
    served = max(versions, key=lambda v: int(v.tags.get("serving_version", "0") or 0))
    client.set_registered_model_alias(model_name, REGISTRY_ALIAS, served.version)
    return str(version.version)
