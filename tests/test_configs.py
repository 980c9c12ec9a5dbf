"""config.yaml loads, overrides apply, bad settings name the field, the schema matches the classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from contracts.config import DEFAULT_CONFIG, REPO_ROOT, ConfigError, load_config
from contracts.data_roots import DataRoot, with_roots_given
from contracts.features import OUT_OF_SCOPE
from pipelines.configs import run_settings


def test_default_config_points_at_the_four_shared_roots_of_three_sites_and_the_out_of_scope_cells():
    config = load_config()
    assert config.classes == ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]
    assert config.critical_index == 3
    shared = (REPO_ROOT.parent / "shared/data").resolve()
    assert config.paths.data_roots == [
        *(DataRoot(str(shared / name)) for name in ("blood-cells-5class", "barcelona-extra", "munich-extra", "mll-marrow")),
        DataRoot(str(shared / "other-cells"), role="out_of_scope"),
    ]
    assert config.paths.data_roots[-1].out_of_scope and config.kubeflow.data_roots[-1].out_of_scope
    assert [Path(r.path).name for r in config.kubeflow.data_roots] == [Path(r.path).name for r in config.paths.data_roots]
    assert config.ingestion.split_ratios == {"train": 0.7, "eval": 0.15, "test": 0.15}


def test_overrides_are_typed_and_applied():
    config = load_config(DEFAULT_CONFIG, ["training.epochs=3", "evaluation.min_accuracy=0.5", "paths.data_roots=/x"])
    assert config.training.epochs == 3 and config.evaluation.min_accuracy == 0.5
    assert config.paths.data_roots == [DataRoot("/x")]


def test_data_roots_take_a_site_relative_paths_resolve_against_the_config_file(tmp_path):
    text = DEFAULT_CONFIG.read_text()
    (tmp_path / "config.yaml").write_text(text)
    config = load_config(
        tmp_path / "config.yaml", ['paths.data_roots=["a", {path: /b, site: lyon}, "gs://bucket/c=tokyo"]']
    )
    assert config.paths.data_roots == [DataRoot(str(tmp_path / "a")), DataRoot("/b", "lyon"), DataRoot("gs://bucket/c", "tokyo")]
    assert [r.name for r in config.paths.data_roots] == ["a", "b", "c"]
    assert json.loads(run_settings(config).data_roots)[1] == {"path": "/b", "site": "lyon", "role": ""}


@pytest.mark.parametrize(
    "roots, message",
    [
        ("[]", "paths.data_roots: no data root of the classes given"),
        ("[{path: /x, role: out_of_scope}]", "paths.data_roots: no data root of the classes given"),
        ("[{path: /x, role: extra}]", r"role 'extra' is not one of \['out_of_scope'\]"),
        ("[/x/cells, /y/cells]", "data roots share a folder name: cells"),
        ("[{path: /x, sites: a}]", r"unknown keys \['sites'\]"),
    ],
)
def test_bad_data_roots_name_the_problem(roots, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT_CONFIG, [f"paths.data_roots={roots}"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epoch=3", "unknown field 'epoch'"),
        ("trainer.epochs=3", "unknown section 'trainer'"),
        ("training.epochs", "must look like section.field=value"),
        ("critical_class=lymphoblast", "critical_class: 'lymphoblast' is not one of"),
        ("training.epochs=0", "must be positive"),
        ("preprocessing.test_time_views=9", "test_time_views: must be between 1 and 8"),
        ("training.site_weight_power=2", "site_weight_power: must be between 0"),
        ("augmentation.jpeg_quality=[90, 10]", "jpeg_quality: need \\[lo, hi\\]"),
        ("augmentation.colour_transfer=1.5", "colour_transfer: a probability"),
        ("augmentation.random_convolution=-0.1", "random_convolution: a probability"),
        ("augmentation.magnification_swap=2", "magnification_swap: a probability"),
        ("augmentation.site_magnification={munich: 0}", "site_magnification: need \\{site: positive number\\}"),
        ("augmentation.site_magnification={munich: 1.0}", "magnification_swap: needs at least two sites"),
        ("augmentation.site_magnification={a: 1, b: 4}", "largest may be at most 3 times the smallest"),
        ("training.weight_average=1", "weight_average: 0 \\(off\\) or a decay"),
        ("training.look_consistency=-1", "look_consistency: must be 0 \\(off\\) or a positive loss weight"),
        ("preprocessing.image_size=24", "image_size: 24 px is too small for 5 blocks"),
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
    assert domain == [*config.classes, OUT_OF_SCOPE]
    label = next(f for f in schema.feature if f.name == "label")
    assert (label.int_domain.min, label.int_domain.max) == (0, len(config.classes))


def test_command_line_roots_replace_only_their_kind():
    configured = load_config().paths.data_roots
    outside = [r for r in configured if r.out_of_scope]
    assert with_roots_given(configured, ["/lab=lyon"], None) == [DataRoot("/lab", "lyon"), *outside]
    assert with_roots_given(configured, None, ["/others=oslo"]) == [
        *(r for r in configured if not r.out_of_scope), DataRoot("/others", "oslo", "out_of_scope")
    ]
