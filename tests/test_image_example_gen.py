"""ImageExampleGen's Beam job: every file ends up ingested (in one split), a duplicate, or rejected."""

from __future__ import annotations

import json
import shutil

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from components import image_example_gen
from components.image_example_gen import _write_examples, check_hold_out, check_report, run_ingestion, summarise, unwritten
from components.image_verification import IngestionError, find_candidates
from contracts import features
from contracts.artifacts import HOLDOUT, INGESTION_REPORT_FILE, SPLITS, example_files, out_of_scope_split
from contracts.data_roots import OUT_OF_SCOPE_ROLE, DataRoot
from contracts.image_check import Limits
from tests.helpers import CLASSES, image_bytes, make_site_subsets, real_files

LIMITS = Limits(max_pixels=4_000_000, min_side=32, max_file_bytes=5_000_000)
RATIOS = {"train": 0.7, "eval": 0.15, "test": 0.15}


def ingest(roots, out, hold_out=""):
    roots = [DataRoot(str(r)) if not isinstance(r, DataRoot) else r for r in (roots if isinstance(roots, list) else [roots])]
    candidates, loose = find_candidates(roots, CLASSES)
    with beam.Pipeline() as pipeline:
        _write_examples(
            pipeline, candidates, LIMITS, RATIOS, 42, hold_out, CLASSES, str(out), str(out / INGESTION_REPORT_FILE), loose
        )
    with open(out / INGESTION_REPORT_FILE) as f:
        return json.load(f)


def read_split(out, split):
    files = example_files(str(out), split)
    spec = {
        features.IMAGE: tf.io.FixedLenFeature([], tf.string),
        features.LABEL: tf.io.FixedLenFeature([], tf.int64),
        features.LABEL_NAME: tf.io.FixedLenFeature([], tf.string),
        features.CELL_TYPE: tf.io.FixedLenFeature([], tf.string),
        features.SITE: tf.io.FixedLenFeature([], tf.string),
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
    (root / "myeloblast" / "gray.png").write_bytes(image_bytes("PNG", "L", seed=555))
    real = real_files("seg_neutrophil", 1)[0]
    (root / "seg_neutrophil" / "cut.jpg").write_bytes(real.read_bytes()[:3000])
    (root / "lymphocyte").mkdir()
    (root / "lymphocyte" / "x.jpg").write_bytes(image_bytes(seed=77))
    listed = [p for p in root.rglob("*") if p.is_file() and p.parent != root]
    out = tmp_path / "out"
    report = ingest(root, out)
    r = root.name

    assert report["found"] == len(listed) == 50 + 6
    assert report["found"] == report["ingested"] + report["duplicates"] + report["rejected"]
    assert (report["ingested"], report["duplicates"], report["rejected"]) == (51, 1, 4)
    assert report["duplicate_files"] == [{"file": f"{r}/basophil/copy.jpg", "same_bytes_as": f"{r}/basophil/basophil_0.jpg"}]
    reasons = {x["file"]: x["reason"] for x in report["rejections"]}
    assert reasons[f"{r}/monocyte/empty.jpg"] == "empty file (0 bytes)"
    assert reasons[f"{r}/monocyte/notes.txt"].startswith("not an image")
    assert reasons[f"{r}/lymphocyte/x.jpg"] == "unknown class folder 'lymphocyte'"
    assert reasons[f"{r}/seg_neutrophil/cut.jpg"].startswith("truncated or corrupt JPEG")
    assert report["converted"] == [{"file": f"{r}/myeloblast/gray.png", "from": "PNG L"}]
    assert report["ignored_loose_files"] == [f"{r}/README.md"]
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
    kept = [x for s in rows.values() for x in s if x[features.RELPATH] == f"{r}/basophil/basophil_3.jpg".encode()][0]
    assert kept[features.IMAGE] == original and (kept[features.HEIGHT], kept[features.WIDTH]) == (64, 64)


def test_class_with_no_usable_image_stops_the_run(generated_root, tmp_path):
    for path in (generated_root / "erythroblast").iterdir():
        path.write_bytes(b"broken")
    report = ingest(generated_root, tmp_path / "out")
    assert report["rejected"] == 10
    with pytest.raises(IngestionError, match="no usable images for class/split erythroblast/train"):
        check_report(report, CLASSES)


def test_several_roots_each_image_with_its_site_duplicates_across_roots(tmp_path):
    """Four real site subsets (MANIFEST.csv sites; the marrow root lacks two classes), a root whose site
    comes from the config, a copy of one root's image in another root, and a file the manifest does not list."""
    per_class = {"blood-cells-5class": 6, "barcelona-extra": 6, "munich-extra": 3, "mll-marrow": 4}
    subsets = make_site_subsets(tmp_path / "data", per_class)
    five, barcelona, munich, marrow = subsets
    lab = tmp_path / "data" / "lab"
    for k, name in enumerate(CLASSES):
        (lab / name).mkdir(parents=True)
        for i in range(4):
            (lab / name / f"{i}.png").write_bytes(image_bytes("PNG", seed=500 + 10 * k + i))
    copy = next((five / "monocyte").iterdir())
    (barcelona / "monocyte" / "copy-from-five.jpg").write_bytes(copy.read_bytes())
    (munich / "basophil" / "unlisted.jpg").write_bytes(image_bytes(seed=3))
    # barcelona-extra's unlisted copy takes the root's configured site; munich-extra has none configured.
    roots = [DataRoot(str(five)), DataRoot(str(barcelona), "barcelona"), DataRoot(str(munich)), DataRoot(str(marrow))]
    roots.append(DataRoot(str(lab), "lyon"))
    report = ingest(roots, tmp_path / "out")

    listed = [p for root in subsets + [lab] for p in root.rglob("*") if p.is_file() and p.parent != root]
    assert report["found"] == len(listed) == report["ingested"] + report["duplicates"] + report["rejected"]
    assert report["duplicate_files"] == [  # the first path (sorted) is kept
        {"file": f"blood-cells-5class/monocyte/{copy.name}", "same_bytes_as": "barcelona-extra/monocyte/copy-from-five.jpg"}
    ]
    assert report["rejections"][0]["file"] == "munich-extra/basophil/unlisted.jpg"
    assert report["rejections"][0]["reason"].startswith("no site")
    by_site = report["counts_by_site"]
    assert set(by_site) == {"barcelona", "munich", "mll-marrow", "lyon"}
    marrow_total = {c: sum(n.values()) for c, n in by_site["mll-marrow"].items()}
    assert marrow_total == {"basophil": 0, "erythroblast": 0, "monocyte": 4, "myeloblast": 4, "seg_neutrophil": 4}
    total = {c: sum(n.values()) for c, n in by_site["barcelona"].items()}
    assert total == {"basophil": 12, "erythroblast": 12, "monocyte": 12, "myeloblast": 0, "seg_neutrophil": 6}
    assert {c: sum(n.values()) for c, n in by_site["lyon"].items()} == {c: 4 for c in CLASSES}
    assert "site munich: basophil 3" in summarise(report)
    check_report(report, CLASSES)  # every class has train, eval and test images
    rows = [row for split in SPLITS for row in read_split(tmp_path / "out", split)]
    sites = {row[features.RELPATH].decode(): row[features.SITE].decode() for row in rows}
    assert sites[f"blood-cells-5class/myeloblast/{real_files('myeloblast', 1)[0].name}"] == "munich"
    assert sites["lab/basophil/0.png"] == "lyon"
    assert sites[f"mll-marrow/myeloblast/{real_files('myeloblast', 1, marrow)[0].name}"] == "mll-marrow"


def test_a_held_out_site_is_written_as_its_own_split_and_may_take_a_class_away(tmp_path):
    subsets = make_site_subsets(tmp_path / "data", {"blood-cells-5class": 6, "barcelona-extra": 8, "munich-extra": 2})
    roots = [DataRoot(str(p)) for p in subsets]
    report = ingest(roots, tmp_path / "out", hold_out="munich")
    held = read_split(tmp_path / "out", HOLDOUT)
    assert {row[features.SITE] for row in held} == {b"munich"}
    assert len(held) == report["split_totals"][HOLDOUT] == 6 * 2 + 5 * 2
    assert report["counts"]["myeloblast"]["train"] == 0  # myeloblasts come from munich only
    check_report(report, CLASSES, hold_out="munich")  # a class only the held-out site has is not an error
    with pytest.raises(IngestionError, match="myeloblast/train"):
        check_report(report, CLASSES)
    with pytest.raises(IngestionError, match=r"hold-out 'paris' is neither a data root nor a site: choose from \["):
        check_hold_out("paris", find_candidates(roots, CLASSES)[0])


def test_written_examples_are_checked_against_the_plan_and_a_lost_record_is_named(tmp_path):
    subsets = make_site_subsets(tmp_path / "data", {"blood-cells-5class": 6, "barcelona-extra": 3, "munich-extra": 2})
    out = tmp_path / "out"
    report = ingest([DataRoot(str(p)) for p in subsets], out, hold_out="munich-extra")
    assert unwritten(str(out), report) == []  # what the Beam job wrote is what the report counts
    # Drop one Barcelona neutrophil from the held-out split's files, as a lost write would.
    files = example_files(str(out), HOLDOUT)
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = [tf.train.Example.FromString(r).features.feature[features.LABEL_NAME].bytes_list.value[0] for r in records]
    lost = labels.index(b"seg_neutrophil")
    for f in files:
        tf.io.gfile.remove(f)
    with tf.io.TFRecordWriter(files[0], options="GZIP") as writer:
        for k, r in enumerate(records):
            if k != lost:
                writer.write(r)
    assert [str(s) for s in unwritten(str(out), report)] == ["holdout seg_neutrophil at munich: 1 written, 2 planned"]


@pytest.mark.parametrize("losing_jobs", [1, 2])
def test_splits_that_fall_short_are_written_again_and_short_twice_stop_the_run(tmp_path, monkeypatch, caplog, losing_jobs):
    """A Beam job that loses a written record (as Beam's multi-process DirectRunner has) is followed by a new
    job with the component's options; a loss in both fails the run naming split, class and site."""
    subsets = make_site_subsets(tmp_path / "data", {"blood-cells-5class": 3, "barcelona-extra": 2, "munich-extra": 1})
    lost = "munich-extra/seg_neutrophil/" + next((subsets[2] / "seg_neutrophil").iterdir()).name
    real_in_split, real_write = image_example_gen._in_split, image_example_gen._write_examples
    jobs: list[beam.Pipeline] = []

    def losing(record, plan, split, out_of_scope):
        return real_in_split(record, plan, split, out_of_scope) and record.relpath != lost

    def write(pipeline, *args):
        jobs.append(pipeline)
        monkeypatch.setattr(image_example_gen, "_in_split", losing if len(jobs) <= losing_jobs else real_in_split)
        real_write(pipeline, *args)

    monkeypatch.setattr(image_example_gen, "_write_examples", write)
    component_pipeline = beam.Pipeline(options=PipelineOptions(["--direct_running_mode=multi_threading"]))
    out = tmp_path / "out"
    args = ([DataRoot(str(p)) for p in subsets], CLASSES, LIMITS, RATIOS, 42, "", str(out), str(out / INGESTION_REPORT_FILE))
    if losing_jobs == 2:
        with pytest.raises(IngestionError, match=r"seg_neutrophil at munich: 2 written, 3 planned\) in each of 2 attempts"):
            run_ingestion(*args, component_pipeline)
        return
    report = run_ingestion(*args, component_pipeline)
    assert len(jobs) == 2 and jobs[0] is component_pipeline and jobs[1] is not component_pipeline
    assert jobs[1].options.view_as(DirectOptions).direct_running_mode == "multi_threading"
    assert unwritten(str(out), report) == []
    assert lost in {row[features.RELPATH].decode() for split in SPLITS for row in read_split(out, split)}
    assert caplog.text.count("writing the examples again") == 1
    assert (report["write_attempts"], report["short_in_first_write"]) == (2, 1)  # the report says what happened
    assert json.loads((out / INGESTION_REPORT_FILE).read_text())["write_attempts"] == 2


@pytest.mark.parametrize(
    ("args", "shards"),
    [([], 1), (["--runner=DirectRunner"], 1), (["--runner=SwitchingDirectRunner"], 1), (["--runner=DataflowRunner"], 0)],
)
def test_local_runners_write_a_fixed_number_of_files_distributed_ones_choose(args, shards):
    assert image_example_gen.num_shards(PipelineOptions(args)) == shards


def test_two_worker_processes_write_every_record_in_one_attempt(tmp_path):
    """The ingestion on the DirectRunner with two worker processes (each split written as one file after a
    GroupByKey, not from the workers' bundles): every planned record is read back after the first write."""
    subsets = make_site_subsets(tmp_path / "data", {"blood-cells-5class": 8, "barcelona-extra": 4, "munich-extra": 2})
    out = tmp_path / "out"
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    report = run_ingestion(
        [DataRoot(str(p)) for p in subsets], CLASSES, LIMITS, RATIOS, 42, "", str(out), str(out / INGESTION_REPORT_FILE),
        beam.Pipeline(options=options),
    )  # fmt: skip
    assert (report["write_attempts"], report["short_in_first_write"]) == (1, 0)
    assert sum(report["split_totals"].values()) == report["ingested"] == sum(len(read_split(out, s)) for s in SPLITS)
    assert all(len(example_files(str(out), s)) == 1 for s in SPLITS)


def test_an_out_of_scope_root_is_ingested_into_splits_of_its_own_and_never_mixed_with_the_five(tmp_path):
    """Real other cells (two sites) beside a real five-class subset: labelled out_of_scope with their cell type,
    split like the rest into out_of_scope_<split>, counted in the report; a folder named like one of the five
    in the out-of-scope root is rejected with the reason, and an image in both roots is a label conflict."""
    five, others = make_site_subsets(tmp_path / "data", {"blood-cells-5class": 6, "other-cells": 6})
    (others / "monocyte").mkdir()
    (others / "monocyte" / "m.jpg").write_bytes(image_bytes(seed=11))
    both = next((five / "basophil").iterdir())
    (others / "lymphocyte" / "also-basophil.jpg").write_bytes(both.read_bytes())
    out = tmp_path / "out"
    roots = [DataRoot(str(five)), DataRoot(str(others), "barcelona", OUT_OF_SCOPE_ROLE)]  # site of unlisted files
    report = run_ingestion(roots, CLASSES, LIMITS, RATIOS, 42, "", str(out), str(out / INGESTION_REPORT_FILE))

    listed = [p for root in (five, others) for p in root.rglob("*") if p.is_file() and p.parent != root]
    assert report["found"] == len(listed) == report["ingested"] + report["duplicates"] + report["rejected"]
    reasons = {r["file"]: r["reason"] for r in report["rejections"]}
    assert reasons["other-cells/monocyte/m.jpg"] == (
        "folder 'monocyte' of out-of-scope root other-cells is one of the classes: move it to a root of the classes"
    )
    assert "other-cells/lymphocyte/also-basophil.jpg" in reasons and f"blood-cells-5class/basophil/{both.name}" in reasons
    assert sum(report["counts"][features.OUT_OF_SCOPE].values()) == 4 * 6
    assert set(report["out_of_scope_cell_types"]) == {"eosinophil", "ig", "lymphocyte", "platelet"}
    assert set(report["out_of_scope_cell_types"]["lymphocyte"]) == {"mll-marrow"}  # the first six files are marrow's
    assert "out of scope platelet: barcelona 6" in summarise(report)
    check_report(report, CLASSES)
    for split in SPLITS:
        inside, outside = read_split(out, split), read_split(out, out_of_scope_split(split))
        assert len(inside) == report["split_totals"][split]
        assert len(outside) == report["split_totals"][out_of_scope_split(split)] > 0
        assert {row[features.LABEL_NAME].decode() for row in inside} <= set(CLASSES)
        assert {(row[features.LABEL], row[features.LABEL_NAME].decode()) for row in outside} == {(5, features.OUT_OF_SCOPE)}
        for row in outside:
            assert row[features.CELL_TYPE].decode() == row[features.RELPATH].decode().split("/")[1]
        assert all(row[features.CELL_TYPE] == row[features.LABEL_NAME] for row in inside)


def test_out_of_scope_cells_missing_from_a_split_stop_the_ingestion(tmp_path):
    five, others = make_site_subsets(tmp_path / "data", {"blood-cells-5class": 6, "other-cells": 1})
    for folder in ("eosinophil", "ig", "lymphocyte"):
        shutil.rmtree(others / folder)
    roots = [DataRoot(str(five)), DataRoot(str(others), role=OUT_OF_SCOPE_ROLE)]
    out = tmp_path / "out"
    report = run_ingestion(roots, CLASSES, LIMITS, RATIOS, 42, "", str(out), str(out / INGESTION_REPORT_FILE))
    with pytest.raises(IngestionError, match="no usable images for class/split out_of_scope/"):
        check_report(report, CLASSES)
