"""Data validation gate: stops the run before training on TFDV anomalies or a class missing from a split."""

import json
import os

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from bloodcell import IngestionReport
from contracts import features
from contracts.artifacts import INGESTION_REPORT_FILE, SPLITS, read_json, split_folder

ANOMALIES_FILE = "SchemaDiff.pb"
STATISTICS_FILE = "FeatureStats.pb"


class DataValidationError(RuntimeError):
    """ExampleValidator found anomalies, or a split lacks a class; training must not start."""


def describe_anomalies(anomalies_uri: str, split_names: list[str]) -> list[str]:
    """One line per anomaly: split, feature and TFDV's description."""
    lines = []
    for split in split_names:
        path = os.path.join(split_folder(anomalies_uri, split), ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason) or info.description
            lines.append(f"split {split}, feature '{feature}': {reasons}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"split {split}, dataset: {info.description or info.short_description}")
    return lines


def _statistics(statistics_uri: str, split: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    return tfdv.load_stats_binary(os.path.join(split_folder(statistics_uri, split), STATISTICS_FILE))


def _classes_present(statistics_uri: str, split: str) -> set[str]:
    stats = _statistics(statistics_uri, split)
    return {
        bucket.label
        for dataset in stats.datasets
        for feature in dataset.features
        if feature.path.step == [features.LABEL_NAME]
        for bucket in feature.string_stats.rank_histogram.buckets
    }


def describe_missing_classes(
    statistics_uri: str, split_names: list[str], classes: list[str], hold_out: str = ""
) -> list[str]:
    """One line per train/eval/test split whose TFDV statistics of `label_name` lack one of the classes.
    With a hold-out, a class absent from all three (only the held-out root or site had it) is not trained."""
    splits = [s for s in split_names if s in SPLITS]
    present = {split: _classes_present(statistics_uri, split) for split in splits}
    if hold_out:
        classes = [c for c in classes if any(c in p for p in present.values())]
    lines = []
    for split in splits:
        missing = [c for c in classes if c not in present[split]]
        if missing:
            lines.append(f"split {split}, feature '{features.LABEL_NAME}': classes missing: {', '.join(missing)}")
    return lines


def describe_short_statistics(statistics_uri: str, split_names: list[str], ingested: dict[str, int]) -> list[str]:
    """One line per split whose TFDV statistics count other than the examples ImageExampleGen wrote
    (`ingested`, per split): StatisticsGen's Beam job runs on a runner that has lost records without an error."""
    lines = []
    for split in split_names:
        counted = sum(dataset.num_examples for dataset in _statistics(statistics_uri, split).datasets)
        if counted != ingested[split]:
            lines.append(
                f"split {split}: TFDV statistics of {counted} examples, {ingested[split]} ingested "
                "(run again without the cache: bloodcell run --no-cache)"
            )
    return lines


def check_data(
    anomalies_uri: str,
    statistics_uri: str,
    split_names: list[str],
    classes: list[str],
    hold_out: str = "",
    ingested: dict[str, int] | None = None,
) -> None:
    """Raises DataValidationError naming every anomaly, every missing class and, with `ingested` (examples per
    split), every split whose statistics count other than that, if there is any."""
    problems = describe_anomalies(anomalies_uri, split_names) + describe_missing_classes(
        statistics_uri, split_names, classes, hold_out
    )
    if ingested is not None:
        problems += describe_short_statistics(statistics_uri, split_names, ingested)
    if problems:
        raise DataValidationError("data validation failed, training stopped:\n  " + "\n  ".join(problems))


@component
def AnomaliesGate(  # noqa: N802
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    ingestion_report: InputArtifact[IngestionReport],
    classes_json: Parameter[str],
    hold_out: Parameter[str],
):
    """Fails the run when ExampleValidator found anomalies, a split lacks a class, or the statistics count
    other than the examples ingested; the Trainer runs after."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    ingested = read_json(ingestion_report.uri, INGESTION_REPORT_FILE)["split_totals"]
    check_data(anomalies.uri, statistics.uri, splits, json.loads(classes_json), hold_out, ingested)
