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
    STATISTICS_FILE,
    DataValidationError,
    check_data,
    describe_anomalies,
    describe_missing_classes,
    describe_short_statistics,
)
from contracts.features import OUT_OF_SCOPE
from tests.helpers import CLASSES, CONFIG, image_bytes

SCHEMA = tfdv.load_schema_text(os.path.join(CONFIG.paths.schema_dir, "schema.pbtxt"))


def statistics_of(tmp_path, labels: list[str], classes: list[str] = CLASSES):
    path = tmp_path / "examples.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, label in enumerate(labels):
            record = ImageRecord(f"r/{label}/{i}.png", label, "lyon", f"{i:064x}", 40, 40, image_bytes("PNG", seed=i), "", "")
            writer.write(to_example(record, classes))
    return tfdv.generate_statistics_from_tfrecord(str(path))


def write_split(tmp_path, kind: str, split: str, proto) -> str:
    """Writes a proto where TFX puts it: <artifact>/Split-<split>/<file>."""
    uri = tmp_path / kind
    os.makedirs(uri / f"Split-{split}", exist_ok=True)
    name = ANOMALIES_FILE if kind == "anomalies" else STATISTICS_FILE
    (uri / f"Split-{split}" / name).write_bytes(proto.SerializeToString())
    return str(uri)


def write_anomalies(tmp_path, split: str, anomalies) -> str:
    return write_split(tmp_path, "anomalies", split, anomalies)


def test_complete_split_has_no_anomalies_and_no_missing_class(tmp_path):
    stats = statistics_of(tmp_path, CLASSES * 3)
    assert describe_anomalies(write_anomalies(tmp_path, "train", tfdv.validate_statistics(stats, SCHEMA)), ["train"]) == []
    assert describe_missing_classes(write_split(tmp_path, "statistics", "train", stats), ["train"], CLASSES) == []


def test_missing_class_is_reported_with_its_split(tmp_path):
    stats = statistics_of(tmp_path, ["basophil", "monocyte", "myeloblast", "seg_neutrophil"] * 3)
    problems = describe_missing_classes(write_split(tmp_path, "statistics", "eval", stats), ["eval"], CLASSES)
    assert problems == ["split eval, feature 'label_name': classes missing: erythroblast"]


def test_label_outside_the_domain_is_an_anomaly(tmp_path):
    labels = [*CLASSES, OUT_OF_SCOPE, "lymphoblast"]  # out_of_scope is in the domain (label 5), lymphoblast is not
    stats = statistics_of(tmp_path, labels, classes=labels)
    anomalies = tfdv.validate_statistics(stats, SCHEMA)
    problems = describe_anomalies(write_anomalies(tmp_path, "train", anomalies), ["train"])
    assert any("feature 'label'" in p for p in problems)
    assert any("feature 'label_name'" in p and "lymphoblast" in p for p in problems)
    assert not any(OUT_OF_SCOPE in p for p in problems)


def test_gate_raises_with_every_problem(tmp_path):
    clean = statistics_of(tmp_path, CLASSES)
    one_class = statistics_of(tmp_path, ["basophil"] * 4)
    anomalies = write_anomalies(tmp_path, "train", tfdv.validate_statistics(clean, SCHEMA))
    write_anomalies(tmp_path, "test", tfdv.validate_statistics(one_class, SCHEMA))
    statistics = write_split(tmp_path, "statistics", "train", clean)
    write_split(tmp_path, "statistics", "test", one_class)
    check_data(anomalies, statistics, ["train"], CLASSES)  # a clean split passes
    with pytest.raises(DataValidationError, match="training stopped:\n  split test, feature 'label_name': classes missing"):
        check_data(anomalies, statistics, ["train", "test"], CLASSES)


def test_a_hold_out_may_take_a_class_from_every_trained_split_but_not_from_one(tmp_path):
    four = statistics_of(tmp_path, ["basophil", "erythroblast", "monocyte", "seg_neutrophil"] * 3)
    statistics = write_split(tmp_path, "statistics", "train", four)
    for split in ("eval", "test"):
        write_split(tmp_path, "statistics", split, four)
    write_split(tmp_path, "statistics", "holdout", statistics_of(tmp_path, ["myeloblast"] * 2))
    splits = ["train", "eval", "test", "holdout"]
    # Only the held-out site had myeloblasts: not trained, not an error; the holdout split is not checked.
    assert describe_missing_classes(statistics, splits, CLASSES, hold_out="munich") == []
    assert len(describe_missing_classes(statistics, splits, CLASSES)) == 3
    write_split(tmp_path, "statistics", "eval", statistics_of(tmp_path, CLASSES * 2))
    assert describe_missing_classes(statistics, splits, CLASSES, hold_out="munich") == [
        f"split {s}, feature 'label_name': classes missing: myeloblast" for s in ("train", "test")
    ]


def test_statistics_of_fewer_examples_than_were_ingested_stop_training(tmp_path):
    """StatisticsGen's Beam job against ImageExampleGen's count: a lost record is named with its split."""
    statistics = write_split(tmp_path, "statistics", "train", statistics_of(tmp_path, CLASSES * 3))
    assert describe_short_statistics(statistics, ["train"], {"train": 15}) == []
    assert describe_short_statistics(statistics, ["train"], {"train": 16}) == [
        "split train: TFDV statistics of 15 examples, 16 ingested (run again without the cache: bloodcell run --no-cache)"
    ]
