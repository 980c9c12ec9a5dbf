"""ImageExampleGen: labelled image folders -> verified, deduplicated, split tf.Examples (Beam)."""

import hashlib
import json
import logging
import os
import sys
from collections import Counter
from typing import Any

import apache_beam as beam
import tensorflow as tf
from tfx.components.util import examples_utils
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import example_gen_pb2
from tfx.types import artifact, artifact_utils, standard_artifacts

from components import features, image_verification, splitting
from components.image_verification import (
    Candidate,
    ImageRecord,
    IngestionError,
    Limits,
    Rejection,
    find_candidates,
    verify_image,
)
from components.splitting import SPLITS, Item, SplitPlan, plan_split

REPORT_FILE = "ingestion_report.json"


def split_folder(examples_uri: str, split: str) -> str:
    """Where ImageExampleGen writes one split's tf.Examples (TFX's `Split-<name>` layout)."""
    return os.path.join(examples_uri, f"Split-{split}")


def example_files(examples_uri: str, split: str) -> list[str]:
    """The gzipped tf.Example files of one split written by ImageExampleGen."""
    folder = split_folder(examples_uri, split)
    files = sorted(tf.io.gfile.glob(os.path.join(folder, "*.gz")))
    if not files:
        raise FileNotFoundError(f"no tf.Example files (*.gz) in {folder}: not an ImageExampleGen output")
    return files


class IngestionReport(artifact.Artifact):
    """JSON account of every file found: ingested (with its split), duplicate, or rejected and why."""

    TYPE_NAME = "bloodcell.IngestionReport"  # namespace.Name, as Kubeflow requires


def to_example(record: ImageRecord, classes: list[str]) -> bytes:
    """Serialises one verified image as a tf.Example that keeps its encoded bytes."""

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                features.IMAGE: _bytes(record.image_bytes),
                features.LABEL: _int(classes.index(record.label_name)),
                features.LABEL_NAME: _bytes(record.label_name.encode()),
                features.RELPATH: _bytes(record.relpath.encode()),
                features.SHA256: _bytes(record.sha256.encode()),
                features.HEIGHT: _int(record.height),
                features.WIDTH: _int(record.width),
            }
        )
    )
    return example.SerializeToString()


def build_report(
    plan: SplitPlan,
    ingested: list[tuple[str, str, str]],
    rejected: list[tuple[str, str]],
    loose_files: list[str],
    classes: list[str],
) -> dict[str, Any]:
    """Counts per class and split, and every duplicate, conversion and rejection by path."""
    label_of = {relpath: label for relpath, label, _ in ingested}
    counts = {c: {s: 0 for s in SPLITS} for c in classes}
    for relpath, split in plan.split_of.items():
        counts[label_of[relpath]][split] += 1
    rejections = sorted(rejected + list(plan.conflicts.items()))
    found = len(ingested) + len(rejected)
    report = {
        "found": found,
        "ingested": len(plan.split_of),
        "duplicates": len(plan.duplicates),
        "rejected": len(rejections),
        "split_totals": {s: sum(counts[c][s] for c in classes) for s in SPLITS},
        "counts": counts,
        "rejections": [{"file": f, "reason": r} for f, r in rejections],
        "duplicate_files": [{"file": f, "same_bytes_as": k} for f, k in sorted(plan.duplicates.items())],
        "converted": [{"file": f, "from": c} for f, _, c in sorted(ingested) if c and f in plan.split_of],
        "ignored_loose_files": loose_files,
    }
    if found != report["ingested"] + report["duplicates"] + report["rejected"]:
        raise IngestionError(f"ingestion lost files: {found} found, but the report accounts for fewer")
    return report


def _is_record(result: ImageRecord | Rejection, _: int) -> int:
    return 0 if isinstance(result, ImageRecord) else 1


def _in_split(record: ImageRecord, plan: SplitPlan, split: str) -> bool:
    return plan.split_of.get(record.relpath) == split


def _write_examples(
    pipeline: beam.Pipeline,
    candidates: list[Candidate],
    data_root: str,
    limits: Limits,
    ratios,
    seed: int,
    classes: list[str],
    examples_uri: str,
    report_path: str,
    loose: list[str],
) -> None:
    results = (
        pipeline
        | "ListFiles" >> beam.Create(candidates)
        | "Reshuffle" >> beam.Reshuffle()
        | "Verify" >> beam.Map(lambda c: verify_image(data_root, c, limits))
    )
    records, rejections = results | "RecordsOrRejections" >> beam.Partition(_is_record, 2)
    plan = (
        records
        | "Keys" >> beam.Map(lambda r: Item(r.relpath, r.label_name, r.sha256))
        | "AllKeys" >> beam.combiners.ToList()
        | "PlanSplit" >> beam.Map(lambda items: plan_split(items, ratios, seed))
    )
    plan_side = beam.pvalue.AsSingleton(plan)
    for split in SPLITS:
        _ = (
            records
            | f"Select[{split}]" >> beam.Filter(_in_split, plan_side, split)
            | f"ToExample[{split}]" >> beam.Map(to_example, classes)
            | f"Write[{split}]"
            >> beam.io.WriteToTFRecord(
                os.path.join(split_folder(examples_uri, split), "data_tfrecord"),
                file_name_suffix=".gz",
                compression_type=beam.io.filesystem.CompressionTypes.GZIP,
            )
        )
    ingested = (
        records
        | "Meta" >> beam.Map(lambda r: (r.relpath, r.label_name, r.converted_from))
        | "AllMeta" >> beam.combiners.ToList()
    )
    rejected = (
        rejections | "Reasons" >> beam.Map(lambda r: (r.relpath, r.reason)) | "AllReasons" >> beam.combiners.ToList()
    )
    _ = (
        plan
        | "Report"
        >> beam.Map(
            lambda p, i, r: build_report(p, i, r, loose, classes),
            beam.pvalue.AsSingleton(ingested),
            beam.pvalue.AsSingleton(rejected),
        )
        | "ReportJson" >> beam.Map(lambda report: json.dumps(report, indent=1))
        | "WriteReport" >> beam.io.WriteToText(report_path, shard_name_template="")
    )


def check_report(report: dict[str, Any], classes: list[str]) -> None:
    """Raises IngestionError when a class has no usable image in some split."""
    empty = [f"{c}/{s}" for c in classes for s in SPLITS if report["counts"][c][s] == 0]
    if empty:
        raise IngestionError(
            f"no usable images for class/split {', '.join(empty)}: "
            f"{report['rejected']} of {report['found']} files were rejected (see {REPORT_FILE})"
        )


def summarise(report: dict[str, Any]) -> str:
    """One readable paragraph: found, ingested per split, duplicates, conversions, rejections by reason."""
    reasons = Counter(r["reason"].split(":")[0] for r in report["rejections"])
    totals = report["split_totals"]
    lines = [
        f"found {report['found']} files: ingested {report['ingested']} "
        f"(train {totals['train']}, eval {totals['eval']}, test {totals['test']}), "
        f"exact duplicates removed {report['duplicates']}, rejected {report['rejected']}, "
        f"converted to RGB {len(report['converted'])}"
    ]
    lines += [f"  rejected {n}: {reason}" for reason, n in reasons.most_common()]
    return "\n".join(lines)


def code_fingerprint() -> str:
    """SHA-256 of the ingestion code. TFX caches custom components by their parameters, not their code:
    the local runner adds this to `input_fingerprint` so that a changed ingestion rule re-ingests."""
    digest = hashlib.sha256()
    for module in (features, image_verification, splitting, sys.modules[__name__]):
        with open(module.__file__, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


@component(use_beam=True)
def ImageExampleGen(  # noqa: N802 - TFX component names are classes
    data_root: Parameter[str],
    classes_json: Parameter[str],
    split_json: Parameter[str],
    limits_json: Parameter[str],
    input_fingerprint: Parameter[str],
    examples: OutputArtifact[standard_artifacts.Examples],
    report: OutputArtifact[IngestionReport],
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
):
    """Reads `<data_root>/<class>/**`, verifies every file and writes train/eval/test tf.Examples.

    `input_fingerprint` (paths, sizes and modification times of the files, and the ingestion code) only
    serves caching: a changed data root or ingestion rule gives a new fingerprint and so a new ingestion.
    """
    classes = json.loads(classes_json)
    split = json.loads(split_json)
    limits = Limits(**json.loads(limits_json))
    candidates, loose = find_candidates(data_root, classes)
    logging.info("ImageExampleGen: %d files under %s (fingerprint %s)", len(candidates), data_root, input_fingerprint)
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    report_path = os.path.join(report.uri, REPORT_FILE)
    with beam_pipeline as pipeline:
        _write_examples(
            pipeline,
            candidates,
            data_root,
            limits,
            split["ratios"],
            split["seed"],
            classes,
            examples.uri,
            report_path,
            loose,
        )
    with tf.io.gfile.GFile(report_path) as f:
        result = json.load(f)
    for key in ("found", "ingested", "duplicates", "rejected"):
        report.set_int_custom_property(key, result[key])
    logging.info("ImageExampleGen: %s", summarise(result))
    check_report(result, classes)
