"""ImageExampleGen: labelled image folders -> verified, deduplicated, split tf.Examples (Beam)."""

import hashlib
import json
import logging
import os
import sys
from collections import Counter
from typing import Any, NamedTuple

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from tfx.components.util import examples_utils
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts

from bloodcell import IngestionReport
from components import file_listing, image_verification, site_resolver, splitting
from components.image_verification import (
    Candidate,
    ImageRecord,
    IngestionError,
    Rejection,
    cell_type,
    find_candidates,
    verify_image,
)
from components.splitting import Item, SplitPlan, plan_split, split_names
from contracts import data_roots, features, image_check
from contracts.artifacts import (
    INGESTION_REPORT_FILE,
    OUT_OF_SCOPE_PREFIX,
    SPLITS,
    example_files,
    out_of_scope_split,
    split_folder,
)
from contracts.data_roots import DataRoot, has_out_of_scope, roots_from_json
from contracts.image_check import Limits

# What was written is read back and, where it falls short of the plan, written again once (docs/hardening.md).
WRITE_ATTEMPTS = 2
# Runners of this machine's process(es). With dynamic sharding (num_shards 0) their multi-worker FnApiRunner lost
# records: the writer results a worker emits from finish_bundle did not all reach FinalizeWrite, whose clean-up
# then deleted the unnamed temporary files. A fixed shard count writes each shard inside one `process` call
# after a GroupByKey (as TFX's BulkInferrer does for local runners since tensorflow/tfx#7856).
LOCAL_RUNNERS = frozenset({"DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner"})


def to_example(record: ImageRecord, labels: list[str]) -> bytes:
    """Serialises one verified image as a tf.Example that keeps its encoded bytes; `labels` are the classes,
    then OUT_OF_SCOPE when some root holds out-of-scope cells."""

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                features.IMAGE: _bytes(record.image_bytes),
                features.LABEL: _int(labels.index(record.label_name)),
                features.LABEL_NAME: _bytes(record.label_name.encode()),
                features.CELL_TYPE: _bytes(cell_type(record.relpath).encode()),
                features.SITE: _bytes(record.site.encode()),
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
    ingested: list[tuple[str, str, str, str]],
    rejected: list[tuple[str, str]],
    listed: list[str],
    loose_files: list[str],
    classes: list[str],
    splits: list[str],
    written: list[str],
) -> dict[str, Any]:
    """Counts per class (OUT_OF_SCOPE among them, where some root holds such cells) and split, per site,
    class and split, and per out-of-scope cell type, site and split; every duplicate, near-duplicate group,
    conversion and rejection. Raises IngestionError unless every listed file is accounted for exactly once."""
    meta = {relpath: (label, site) for relpath, label, site, _ in ingested}
    counts = {c: {s: 0 for s in splits} for c in classes}
    by_site: dict[str, dict[str, dict[str, int]]] = {}
    cell_types: dict[str, dict[str, dict[str, int]]] = {}
    for relpath, split in plan.split_of.items():
        label, site = meta[relpath]
        counts[label][split] += 1
        site_counts = by_site.setdefault(site, {c: {s: 0 for s in splits} for c in classes})
        site_counts[label][split] += 1
        if label == features.OUT_OF_SCOPE:
            cell_types.setdefault(cell_type(relpath), {}).setdefault(site, {s: 0 for s in splits})[split] += 1
    rejections = sorted(rejected + list(plan.conflicts.items()))
    check_accounting(listed, [*plan.split_of, *plan.duplicates, *(f for f, _ in rejections)])
    return {
        "found": len(listed),
        "ingested": len(plan.split_of),
        "duplicates": len(plan.duplicates),
        "rejected": len(rejections),
        "splits": splits,
        "split_totals": split_totals(counts, written),
        "counts": counts,
        "counts_by_site": dict(sorted(by_site.items())),
        "out_of_scope_cell_types": {c: dict(sorted(n.items())) for c, n in sorted(cell_types.items())},
        "rejections": [{"file": f, "reason": r} for f, r in rejections],
        "duplicate_files": [{"file": f, "same_bytes_as": k} for f, k in sorted(plan.duplicates.items())],
        "near_duplicate_groups": plan.near_duplicates,
        "moved_to_fill_a_split": [{"file": f, "split": s} for f, s in sorted(plan.filled.items())],
        "converted": [{"file": f, "from": c} for f, _, _, c in sorted(ingested) if c and f in plan.split_of],
        "ignored_loose_files": loose_files,
    }


def split_totals(counts: dict[str, dict[str, int]], written: list[str]) -> dict[str, int]:
    """Examples per written split: the classes' in each split, the out-of-scope cells' in the split beside it."""
    totals = {}
    for name in written:
        split = name.removeprefix(OUT_OF_SCOPE_PREFIX)
        outside = name != split
        totals[name] = sum(n[split] for c, n in counts.items() if (c == features.OUT_OF_SCOPE) == outside)
    return totals


def written_splits(candidates: list[Candidate], hold_out: str) -> list[str]:
    """The splits the candidates are written to (`split_names`)."""
    outside = [c for c in candidates if c.label_name == features.OUT_OF_SCOPE]
    held = bool(hold_out) and any(hold_out in (c.root.name, c.site) for c in outside)
    return split_names(hold_out, bool(outside), held)


def check_accounting(listed: list[str], accounted: list[str]) -> None:
    """Raises IngestionError naming the files that were listed but have no outcome (ingested, duplicate or
    rejected), or that have an outcome without being listed or have two outcomes."""
    seen = Counter(accounted)
    lost = sorted(set(listed) - set(seen))
    unlisted = sorted(set(seen) - set(listed))
    twice = sorted(f for f, n in seen.items() if n > 1)
    if lost or unlisted or twice:
        problems = [f"{name}: {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}" for name, files in
                    (("no outcome", lost), ("not listed", unlisted), ("two outcomes", twice)) if files]  # fmt: skip
        raise IngestionError(f"ingestion accounting of {len(listed)} listed files failed ({'; '.join(problems)})")


class Shortfall(NamedTuple):
    """A split, class and site whose written tf.Examples differ in number from the plan."""

    split: str
    label: str
    site: str
    written: int
    planned: int

    def __str__(self) -> str:
        return f"{self.split} {self.label} at {self.site}: {self.written} written, {self.planned} planned"


def num_shards(options: PipelineOptions | None) -> int:
    """Files per split: one on a local runner (see LOCAL_RUNNERS), the runner's choice (0) on a distributed one."""
    runner = options.view_as(StandardOptions).runner if options else None
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return 1 if name is None or name.rsplit(".", 1)[-1] in LOCAL_RUNNERS else 0


def _is_record(result: ImageRecord | Rejection, _: int) -> int:
    return 0 if isinstance(result, ImageRecord) else 1


def _in_split(record: ImageRecord, plan: SplitPlan, split: str, out_of_scope: bool) -> bool:
    """Whether the record goes to `split` (the plan's) or, with `out_of_scope`, to the out-of-scope split beside it."""
    return plan.split_of.get(record.relpath) == split and (record.label_name == features.OUT_OF_SCOPE) == out_of_scope


def _write_examples(
    pipeline: beam.Pipeline,
    candidates: list[Candidate],
    limits: Limits,
    ratios,
    seed: int,
    hold_out: str,
    classes: list[str],
    examples_uri: str,
    report_path: str,
    loose: list[str],
) -> None:
    shards = num_shards(pipeline.options)
    results = (
        pipeline
        | "ListFiles" >> beam.Create(candidates)
        | "Reshuffle" >> beam.Reshuffle()
        | "Verify" >> beam.Map(lambda c: verify_image(c, limits))
    )
    records, rejections = results | "RecordsOrRejections" >> beam.Partition(_is_record, 2)
    plan = (
        records
        | "Keys" >> beam.Map(lambda r: Item(r.relpath, r.label_name, r.sha256, r.site, r.phash))
        | "AllKeys" >> beam.combiners.ToList()
        | "PlanSplit" >> beam.Map(lambda items: plan_split(items, ratios, seed, hold_out))
    )
    plan_side = beam.pvalue.AsSingleton(plan)
    splits, written = split_names(hold_out), written_splits(candidates, hold_out)
    for name in written:
        split = name.removeprefix(OUT_OF_SCOPE_PREFIX)
        _ = (
            records
            | f"Select[{name}]" >> beam.Filter(_in_split, plan_side, split, name != split)
            | f"ToExample[{name}]" >> beam.Map(to_example, classes)
            | f"Write[{name}]"
            >> beam.io.WriteToTFRecord(
                os.path.join(split_folder(examples_uri, name), "data_tfrecord"),
                file_name_suffix=".gz",
                num_shards=shards,
                compression_type=beam.io.filesystem.CompressionTypes.GZIP,
            )
        )
    ingested = (
        records
        | "Meta" >> beam.Map(lambda r: (r.relpath, r.label_name, r.site, r.converted_from))
        | "AllMeta" >> beam.combiners.ToList()
    )
    rejected = (
        rejections | "Reasons" >> beam.Map(lambda r: (r.relpath, r.reason)) | "AllReasons" >> beam.combiners.ToList()
    )
    _ = (
        plan
        | "Report"
        >> beam.Map(
            lambda p, i, r: build_report(p, i, r, [c.key for c in candidates], loose, classes, splits, written),
            beam.pvalue.AsSingleton(ingested),
            beam.pvalue.AsSingleton(rejected),
        )
        | "ReportJson" >> beam.Map(lambda report: json.dumps(report, indent=1))
        | "WriteReport" >> beam.io.WriteToText(report_path, shard_name_template="")
    )


def written_counts(examples_uri: str, split: str) -> Counter:
    """(site, class) -> number of tf.Examples in one written split and the out-of-scope split beside it (if
    written), read back from their files."""
    spec = {features.SITE: tf.io.FixedLenFeature([], tf.string), features.LABEL_NAME: tf.io.FixedLenFeature([], tf.string)}
    files = example_files(examples_uri, split)
    if tf.io.gfile.exists(split_folder(examples_uri, out_of_scope_split(split))):
        files += example_files(examples_uri, out_of_scope_split(split))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256)
    counts: Counter = Counter()
    for batch in dataset.map(lambda records: tf.io.parse_example(records, spec)):
        counts.update(zip(batch[features.SITE].numpy().astype(str), batch[features.LABEL_NAME].numpy().astype(str), strict=True))
    return counts


def unwritten(examples_uri: str, report: dict[str, Any]) -> list[Shortfall]:
    """Where the written splits differ from the images the report counts, per split, site and class: the report
    is computed from the plan, this reads back what the Beam job wrote (empty: they agree)."""
    wrong = []
    for split in report["splits"]:
        written = written_counts(examples_uri, split)
        planned = Counter(
            {(site, c): n[split] for site, per_class in report["counts_by_site"].items() for c, n in per_class.items()}
        )
        wrong += [
            Shortfall(split, c, site, written[(site, c)], planned[(site, c)])
            for site, c in sorted(set(planned) | set(written))
            if written[(site, c)] != planned[(site, c)]
        ]
    return wrong


def _differ(wrong: list[Shortfall]) -> str:
    return "the written tf.Examples differ from the ingestion plan (" + "; ".join(map(str, wrong)) + ")"


def check_report(report: dict[str, Any], classes: list[str], hold_out: str = "") -> None:
    """Raises IngestionError when a class has no usable image in some split. With a hold-out, a class that
    only the held-out root or site has (none in train, eval or test) is left out of training, not an error.
    Out-of-scope cells, where a root holds them, are needed in every split too."""
    counts = report["counts"]
    classes = [*classes, *([features.OUT_OF_SCOPE] if features.OUT_OF_SCOPE in counts else [])]
    trained = [c for c in classes if not hold_out or any(counts[c][s] for s in SPLITS)]
    empty = [f"{c}/{s}" for c in trained for s in SPLITS if counts[c][s] == 0]
    if empty:
        raise IngestionError(
            f"no usable images for class/split {', '.join(empty)}: "
            f"{report['rejected']} of {report['found']} files were rejected (see {INGESTION_REPORT_FILE})"
        )


def summarise(report: dict[str, Any]) -> str:
    """A readable paragraph: found, ingested per split, duplicates, conversions, rejections by reason, and
    the images per site and class."""
    reasons = Counter(r["reason"].split(":")[0] for r in report["rejections"])
    totals = report["split_totals"]
    lines = [
        f"found {report['found']} files: ingested {report['ingested']} "
        f"({', '.join(f'{s} {n}' for s, n in totals.items())}), "
        f"exact duplicates removed {report['duplicates']}, rejected {report['rejected']}, "
        f"converted to RGB {len(report['converted'])}, near-duplicate groups kept in one split "
        f"{len(report['near_duplicate_groups'])}"
    ]
    lines += [f"  rejected {n}: {reason}" for reason, n in reasons.most_common()]
    for site, per_class in report["counts_by_site"].items():
        lines.append(f"  site {site}: " + ", ".join(f"{c} {sum(n.values())}" for c, n in per_class.items()))
    for name, per_site in report.get("out_of_scope_cell_types", {}).items():
        lines.append(f"  out of scope {name}: " + ", ".join(f"{site} {sum(n.values())}" for site, n in per_site.items()))
    return "\n".join(lines)


def code_fingerprint() -> str:
    """SHA-256 of the ingestion code. TFX caches custom components by their parameters, not their code:
    the local runner adds this to `input_fingerprint` so that a changed ingestion rule re-ingests."""
    digest = hashlib.sha256()
    modules = (features, data_roots, image_check, site_resolver, file_listing, image_verification, splitting)
    for module in (*modules, sys.modules[__name__]):
        with open(module.__file__, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def check_hold_out(hold_out: str, candidates: list[Candidate]) -> None:
    """Raises IngestionError when `hold_out` names neither a data root nor a site of the candidates."""
    if not hold_out:
        return
    choices = {c.root.name for c in candidates} | {c.site for c in candidates if c.site}
    if hold_out not in choices:
        raise IngestionError(f"hold-out {hold_out!r} is neither a data root nor a site: choose from {sorted(choices)}")


@component(use_beam=True)
def ImageExampleGen(  # noqa: N802 - TFX component names are classes
    data_roots_json: Parameter[str],
    classes_json: Parameter[str],
    split_json: Parameter[str],
    limits_json: Parameter[str],
    hold_out: Parameter[str],
    input_fingerprint: Parameter[str],
    examples: OutputArtifact[standard_artifacts.Examples],
    report: OutputArtifact[IngestionReport],
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
):
    """Reads `<root>/<class>/**` of every data root (a JSON list of {path, site, role}), verifies every file
    and writes train/eval/test tf.Examples, each with its site; with `hold_out` (a root's folder name or a
    site), every image of it goes to a `holdout` split instead. The cells of out-of-scope roots (role
    `out_of_scope`, a folder per cell type) go to the out-of-scope split beside their split.

    `input_fingerprint` (paths, sizes and modification times of the files, and the ingestion code) only
    serves caching: a changed data root or ingestion rule gives a new fingerprint and so a new ingestion.
    """
    roots = roots_from_json(data_roots_json)
    split = json.loads(split_json)
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    result = run_ingestion(
        roots, json.loads(classes_json), Limits(**json.loads(limits_json)), split["ratios"], split["seed"], hold_out,
        examples.uri, os.path.join(report.uri, INGESTION_REPORT_FILE), beam_pipeline, input_fingerprint,
    )  # fmt: skip
    examples.split_names = artifact_utils.encode_split_names(list(result["split_totals"]))
    for key in ("found", "ingested", "duplicates", "rejected", "write_attempts", "short_in_first_write"):
        report.set_int_custom_property(key, result[key])
    check_report(result, json.loads(classes_json), hold_out)


def run_ingestion(
    roots: list[DataRoot],
    classes: list[str],
    limits: Limits,
    ratios: dict[str, float],
    seed: int,
    hold_out: str,
    examples_uri: str,
    report_path: str,
    beam_pipeline: beam.Pipeline | None = None,
    input_fingerprint: str = "",
) -> dict[str, Any]:
    """Lists, verifies, deduplicates and splits every file of the roots, writes the tf.Examples and the report,
    reads the written splits back (`unwritten`), writes them all once more if one falls short, and returns the
    report. Per-file problems are rejections in the report; only problems of the roots as a whole, or splits
    short twice, raise IngestionError. Images of out-of-scope roots are labelled OUT_OF_SCOPE (the index after
    the classes) and written to the out-of-scope split beside their split."""
    candidates, loose = find_candidates(roots, classes)
    classes = [*classes, *([features.OUT_OF_SCOPE] if has_out_of_scope(roots) else [])]
    check_hold_out(hold_out, candidates)
    logging.info(
        "ImageExampleGen: %d files under %s (fingerprint %s)",
        len(candidates), ", ".join(r.path for r in roots), input_fingerprint[:16] or "none",
    )  # fmt: skip
    options = beam_pipeline.options if beam_pipeline else None
    short_in_first_write = 0
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        # The first attempt runs the component's own Beam pipeline; another, a new one with the same options.
        pipeline = beam_pipeline if attempt == 1 and beam_pipeline else beam.Pipeline(options=options)
        with pipeline:
            _write_examples(pipeline, candidates, limits, ratios, seed, hold_out, classes, examples_uri, report_path, loose)
        with tf.io.gfile.GFile(report_path) as f:
            result = json.load(f)
        if attempt == 1:
            logging.info("ImageExampleGen: %s", summarise(result))
        wrong = unwritten(examples_uri, result)
        if attempt == 1:
            short_in_first_write = sum(max(0, w.planned - w.written) for w in wrong)
        if not wrong:
            result.update(write_attempts=attempt, short_in_first_write=short_in_first_write)
            with tf.io.gfile.GFile(report_path, "w") as f:
                json.dump(result, f, indent=1)
            return result
        if attempt < WRITE_ATTEMPTS:
            logging.warning("ImageExampleGen: %s; writing the examples again", _differ(wrong))
            for split in written_splits(candidates, hold_out):
                if tf.io.gfile.exists(split_folder(examples_uri, split)):
                    tf.io.gfile.rmtree(split_folder(examples_uri, split))
            tf.io.gfile.remove(report_path)
    raise IngestionError(
        f"{_differ(wrong)} in each of {WRITE_ATTEMPTS} attempts: the examples are incomplete, nothing in the data "
        "roots was changed; run again"
    )
