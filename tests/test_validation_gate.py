"""TFDV against the curated schema: a missing class or an out-of-domain label stops training."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from components.image_example_gen import to_example
from components.image_verification import ImageRecord
from components.validation_gate import (
    ANOMALIES_FILE,
    DataValidationError,
    check_anomalies,
    class_coverage_check,
    describe_anomalies,
)
from tests.conftest import CLASSES, CONFIG, image_bytes

SCHEMA = tfdv.load_schema_text(os.path.join(CONFIG.paths.schema_dir, "schema.pbtxt"))


def statistics_of(tmp_path, labels: list[str], classes: list[str] = CLASSES):
    path = tmp_path / "examples.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, label in enumerate(labels):
            record = ImageRecord(f"{label}/{i}.png", label, f"{i:064x}", 40, 40, image_bytes("PNG", seed=i), "")
            writer.write(to_example(record, classes))
    return tfdv.generate_statistics_from_tfrecord(str(path))


def write_anomalies(tmp_path, split: str, anomalies) -> str:
    uri = tmp_path / "anomalies"
    os.makedirs(uri / f"Split-{split}", exist_ok=True)
    (uri / f"Split-{split}" / ANOMALIES_FILE).write_bytes(anomalies.SerializeToString())
    return str(uri)


def test_complete_split_has_no_anomalies(tmp_path):
    stats = statistics_of(tmp_path, CLASSES * 3)
    anomalies = tfdv.validate_statistics(stats, SCHEMA, custom_validation_config=class_coverage_check(5))
    assert describe_anomalies(write_anomalies(tmp_path, "train", anomalies), ["train"]) == []


def test_missing_class_is_an_anomaly_that_names_the_split(tmp_path):
    stats = statistics_of(tmp_path, ["basophil", "monocyte", "myeloblast", "seg_neutrophil"] * 3)
    anomalies = tfdv.validate_statistics(stats, SCHEMA, custom_validation_config=class_coverage_check(5))
    problems = describe_anomalies(write_anomalies(tmp_path, "eval", anomalies), ["eval"])
    assert len(problems) == 1
    assert problems[0].startswith("split eval, feature 'label_name'")
    assert "a class is missing" in problems[0] or "feature.string_stats.unique = 5" in problems[0]


def test_label_outside_the_domain_is_an_anomaly(tmp_path):
    stats = statistics_of(tmp_path, CLASSES + ["lymphoblast"], classes=CLASSES + ["lymphoblast"])
    anomalies = tfdv.validate_statistics(stats, SCHEMA)
    problems = describe_anomalies(write_anomalies(tmp_path, "train", anomalies), ["train"])
    assert any("feature 'label'" in p for p in problems)
    assert any("feature 'label_name'" in p and "lymphoblast" in p for p in problems)


def test_gate_raises_with_every_problem(tmp_path):
    stats = statistics_of(tmp_path, ["basophil"] * 4)
    anomalies = tfdv.validate_statistics(stats, SCHEMA, custom_validation_config=class_coverage_check(5))
    train_uri = write_anomalies(tmp_path, "train", tfdv.validate_statistics(statistics_of(tmp_path, CLASSES), SCHEMA))
    uri = write_anomalies(tmp_path, "test", anomalies)
    assert uri == train_uri
    check_anomalies(uri, ["train"])  # a clean split passes
    with pytest.raises(DataValidationError, match="training stopped:\n  split test, feature 'label_name'"):
        check_anomalies(uri, ["train", "test"])
