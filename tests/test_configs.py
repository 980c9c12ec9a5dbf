"""config.yaml loads, overrides apply, bad settings name the field, the schema matches the classes."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from pipelines.configs import DEFAULT_CONFIG, REPO_ROOT, ConfigError, load_config


def test_default_config_points_at_the_shared_dataset():
    config = load_config()
    assert config.classes == ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]
    assert config.critical_index == 3
    assert Path(config.paths.data_root) == (REPO_ROOT.parent / "shared/data/blood-cells-5class").resolve()
    assert config.ingestion.split_ratios == {"train": 0.7, "eval": 0.15, "test": 0.15}


def test_overrides_are_typed_and_applied():
    config = load_config(DEFAULT_CONFIG, ["training.epochs=3", "evaluation.min_accuracy=0.5", "paths.data_root=/x"])
    assert config.training.epochs == 3 and config.evaluation.min_accuracy == 0.5
    assert config.paths.data_root == "/x"


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epoch=3", "unknown field 'epoch'"),
        ("trainer.epochs=3", "unknown section 'trainer'"),
        ("training.epochs", "must look like section.field=value"),
        ("critical_class=lymphoblast", "critical_class: 'lymphoblast' is not one of"),
        ("training.epochs=0", "must be positive"),
        ("preprocessing.test_time_views=9", "test_time_views: must be between 1 and 8"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT_CONFIG, [override])


def test_unknown_key_in_file_is_reported(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace("model_name: bloodcell", "model_name: bloodcell\nmodel_nmae: typo")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"unknown fields \['model_nmae'\]"):
        load_config(tmp_path / "config.yaml")


def test_curated_schema_matches_configured_classes():
    config = load_config()
    schema = text_format.Parse(
        (Path(config.paths.schema_dir) / "schema.pbtxt").read_text(), schema_pb2.Schema()
    )
    domain = {d.name: list(d.value) for d in schema.string_domain}["label_name"]
    assert domain == config.classes
    label = next(f for f in schema.feature if f.name == "label")
    assert (label.int_domain.min, label.int_domain.max) == (0, len(config.classes) - 1)
