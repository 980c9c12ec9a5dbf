"""ImageExampleGen's Beam job: every file ends up ingested (in one split), a duplicate, or rejected."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
import tensorflow as tf

from components import features
from components.image_example_gen import REPORT_FILE, _write_examples, check_report, example_files, summarise
from components.image_verification import IngestionError, Limits, find_candidates
from components.splitting import SPLITS
from tests.conftest import CLASSES, image_bytes, real_files

LIMITS = Limits(max_pixels=4_000_000, min_side=32, max_file_bytes=5_000_000)
RATIOS = {"train": 0.7, "eval": 0.15, "test": 0.15}


def ingest(root, out):
    candidates, loose = find_candidates(root, CLASSES)
    with beam.Pipeline() as pipeline:
        _write_examples(pipeline, candidates, str(root), LIMITS, RATIOS, 42, CLASSES, str(out), str(out / REPORT_FILE), loose)
    with open(out / REPORT_FILE) as f:
        return json.load(f)


def read_split(out, split):
    files = example_files(str(out), split)
    spec = {
        features.IMAGE: tf.io.FixedLenFeature([], tf.string),
        features.LABEL: tf.io.FixedLenFeature([], tf.int64),
        features.LABEL_NAME: tf.io.FixedLenFeature([], tf.string),
        features.RELPATH: tf.io.FixedLenFeature([], tf.string),
        features.SHA256: tf.io.FixedLenFeature([], tf.string),
        features.HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        features.WIDTH: tf.io.FixedLenFeature([], tf.int64),
    }
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(lambda s: tf.io.parse_single_example(s, spec))
    return [{k: v.numpy() for k, v in row.items()} for row in dataset]


def test_a_folder_without_example_files_is_named_in_the_error(tmp_path):
    (tmp_path / "Split-test").mkdir()
    (tmp_path / "Split-test" / "data_tfrecord-00000-of-00001.gz").write_bytes(b"")
    assert example_files(str(tmp_path), "test") == [str(tmp_path / "Split-test" / "data_tfrecord-00000-of-00001.gz")]
    with pytest.raises(FileNotFoundError, match=f"in {tmp_path / 'Split-train'}: not an ImageExampleGen output"):
        example_files(str(tmp_path), "train")


def test_messy_folder_is_fully_accounted_for(generated_root, tmp_path):
    root = generated_root
    (root / "README.md").write_text("not part of the data")
    (root / "basophil" / "copy.jpg").write_bytes((root / "basophil" / "basophil_0.jpg").read_bytes())
    (root / "monocyte" / "empty.jpg").write_bytes(b"")
    (root / "monocyte" / "notes.txt").write_text("hello")
    (root / "myeloblast" / "gray.png").write_bytes(image_bytes("PNG", "L", seed=5))
    real = real_files("seg_neutrophil", 1)[0]
    (root / "seg_neutrophil" / "cut.jpg").write_bytes(real.read_bytes()[:3000])
    (root / "lymphocyte").mkdir()
    (root / "lymphocyte" / "x.jpg").write_bytes(image_bytes(seed=77))
    out = tmp_path / "out"
    report = ingest(root, out)

    assert report["found"] == 50 + 6
    assert (report["ingested"], report["duplicates"], report["rejected"]) == (51, 1, 4)
    assert report["duplicate_files"] == [{"file": "basophil/copy.jpg", "same_bytes_as": "basophil/basophil_0.jpg"}]
    reasons = {r["file"]: r["reason"] for r in report["rejections"]}
    assert reasons["monocyte/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["monocyte/notes.txt"].startswith("not an image")
    assert reasons["lymphocyte/x.jpg"] == "unknown class folder 'lymphocyte'"
    assert reasons["seg_neutrophil/cut.jpg"].startswith("truncated or corrupt JPEG")
    assert report["converted"] == [{"file": "myeloblast/gray.png", "from": "PNG L"}]
    assert report["ignored_loose_files"] == ["README.md"]
    assert "rejected 4" in summarise(report)

    rows = {split: read_split(out, split) for split in SPLITS}
    assert {s: len(r) for s, r in rows.items()} == report["split_totals"]
    paths = [row[features.RELPATH].decode() for split_rows in rows.values() for row in split_rows]
    assert len(paths) == len(set(paths)) == 51
    for split, split_rows in rows.items():
        assert {row[features.LABEL_NAME].decode() for row in split_rows} == set(CLASSES), split
        for row in split_rows:
            assert CLASSES[row[features.LABEL]] == row[features.LABEL_NAME].decode()
    original = (root / "basophil" / "basophil_3.jpg").read_bytes()
    kept = [r for s in rows.values() for r in s if r[features.RELPATH] == b"basophil/basophil_3.jpg"][0]
    assert kept[features.IMAGE] == original and (kept[features.HEIGHT], kept[features.WIDTH]) == (64, 64)


def test_class_with_no_usable_image_stops_the_run(generated_root, tmp_path):
    for path in (generated_root / "erythroblast").iterdir():
        path.write_bytes(b"broken")
    report = ingest(generated_root, tmp_path / "out")
    assert report["rejected"] == 10
    with pytest.raises(IngestionError, match="no usable images for class/split erythroblast/train"):
        check_report(report, CLASSES)
