"""Data validation: every class in every split (TFDV custom check), and a gate that stops on anomalies."""

import os

import tensorflow as tf
from tensorflow_data_validation.anomalies.proto import custom_validation_config_pb2
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from components import features

ANOMALIES_FILE = "SchemaDiff.pb"


class DataValidationError(RuntimeError):
    """ExampleValidator found anomalies; training must not start."""


def class_coverage_check(num_classes: int) -> custom_validation_config_pb2.CustomValidationConfig:
    """A TFDV SQL check that each split holds all classes (a missing class is an anomaly)."""
    config = custom_validation_config_pb2.CustomValidationConfig()
    validation = config.feature_validations.add()
    validation.feature_path.step.append(features.LABEL_NAME)
    check = validation.validations.add()
    check.sql_expression = f"feature.string_stats.unique = {num_classes}"
    check.severity = anomalies_pb2.AnomalyInfo.ERROR
    check.description = f"a class is missing: expected all {num_classes} classes in every split"
    return config


def describe_anomalies(anomalies_uri: str, split_names: list[str]) -> list[str]:
    """One line per anomaly: split, feature and TFDV's description."""
    lines = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason) or info.description
            lines.append(f"split {split}, feature '{feature}': {reasons}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"split {split}, dataset: {info.description or info.short_description}")
    return lines


def check_anomalies(anomalies_uri: str, split_names: list[str]) -> None:
    """Raises DataValidationError naming every anomaly, if there is any."""
    problems = describe_anomalies(anomalies_uri, split_names)
    if problems:
        raise DataValidationError("data validation failed, training stopped:\n  " + "\n  ".join(problems))


@component
def AnomaliesGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]):  # noqa: N802
    """Fails the run when ExampleValidator found anomalies; the Trainer runs after this gate."""
    check_anomalies(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
