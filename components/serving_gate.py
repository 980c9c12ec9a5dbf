"""ServingGate: blesses a candidate model only if it passes the screening bars and does not regress
against the model TF Serving is serving now (the newest version under the serving base path).

Comparing against the served model, scored on this run's test split, needs no Resolver node: the same
gate runs under LocalDagRunner and on Kubeflow Pipelines (whose open-source v2 backend has no Resolver).
"""

import dataclasses
import hashlib
import json
import os
from typing import Any

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from components.evaluation import ACCURACY, CRITICAL_RECALL, read_metrics, read_site_figures
from components.out_of_scope_scores import OutOfScopeReport, out_of_scope_failures, score_out_of_scope
from contracts.artifacts import GATE_FILE, SERVING_FORMAT, example_files, out_of_scope_split, served_versions
from contracts.config import ConfigError, OutOfScopeBars, SiteBars, from_dict
from contracts.config import site_bars as typed_site_bars
from contracts.signatures import EXAMPLES_INPUT, EXAMPLES_SIGNATURE
from training.preprocessing import parse_example


def serving_state(serving_dir: str) -> str:
    """Identifies what is served now (for the local runner's cache key): the newest version, or ''."""
    versions = served_versions(serving_dir)
    return str(versions[-1]) if versions else ""


def model_digest(model_dir: str) -> str:
    """SHA-256 over a SavedModel's files (names and bytes): equal digests mean the same model. The
    documents beside it (model card) are left out; the operating point is also in the graph."""
    digest = hashlib.sha256()
    for root, _, files in sorted(tf.io.gfile.walk(model_dir)):
        if os.path.relpath(root, model_dir).split(os.sep)[0] == "assets.extra":
            continue
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, model_dir).encode())
            digest.update(tf.io.gfile.GFile(path, "rb").read())
    return digest.hexdigest()


def score_model(model_dir: str, example_files: list[str], critical_index: int, batch_size: int = 64) -> dict[str, float]:
    """Accuracy and critical-class recall of the argmax decision of a SavedModel on tf.Example files."""
    predict = tf.saved_model.load(model_dir).signatures[EXAMPLES_SIGNATURE]
    labels, predicted = [], []
    for batch in tf.data.TFRecordDataset(example_files, compression_type="GZIP").batch(batch_size):
        labels += [int(parse_example(s)[1]) for s in batch]
        predicted += predict(**{EXAMPLES_INPUT: batch})["predicted_index"].numpy().tolist()
    critical = [p for y, p in zip(labels, predicted, strict=True) if y == critical_index]
    return {
        ACCURACY: sum(y == p for y, p in zip(labels, predicted, strict=True)) / len(labels),
        CRITICAL_RECALL: sum(p == critical_index for p in critical) / len(critical) if critical else float("nan"),
    }


def newest_loadable(
    serving_dir: str, test_files: list[str], critical_index: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The newest served version that loads, scored on the test files (with its version and digest), and
    every newer version that does not load, with the error: TF Serving keeps serving the last version that
    loaded, so that is the one to compare with."""
    broken = []
    for version in reversed(served_versions(serving_dir)):
        path = os.path.join(serving_dir, str(version))
        try:
            served: dict[str, Any] = score_model(path, test_files, critical_index)
            served.update(version=version, digest=model_digest(path))
            return served, broken
        except Exception as err:  # noqa: BLE001 - any unloadable version is named, not fatal
            broken.append({"version": version, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"})
    return None, broken


def decide(
    candidate: dict[str, float],
    served: dict[str, float] | None,
    min_accuracy: float,
    min_critical_recall: float,
    max_regression: float,
    critical_class: str,
    sites: dict[str, dict[str, Any]] | None = None,
    hold_out: str = "",
    test_images: int | None = None,
    site_bars: dict[str, SiteBars] | None = None,
) -> list[str]:
    """Every failed condition, in words (empty: the candidate may ship).

    The bars hold for the pooled test split and for each site's test images (a site in `site_bars` by its
    own bars); a site without critical-class test images is judged on accuracy alone. With `test_images`
    (the records of the test split), the candidate's `count` (the images TFMA scored) must equal it: Beam's
    DirectRunner with several workers has lost records without an error. A hold-out run (trained without a
    root or site) never ships."""
    failures = []
    if test_images is not None and candidate["count"] != test_images:
        failures.append(
            f"the Evaluator scored {candidate['count']} of the {test_images} test images: its Beam job lost some; "
            "run again without the cache (bloodcell run --no-cache)"
        )
    bars = {ACCURACY: ("accuracy", min_accuracy), CRITICAL_RECALL: (f"{critical_class} recall", min_critical_recall)}
    for key, (label, bar) in bars.items():
        if not candidate[key] >= bar:
            failures.append(f"{label} = {candidate[key]:.4f}, required >= {bar}")
        if served is not None and not candidate[key] >= served[key] - max_regression:
            failures.append(
                f"{label} = {candidate[key]:.4f}, served model {served[key]:.4f}: drop > max_regression {max_regression}"
            )
    failures += site_failures(sites or {}, min_accuracy, min_critical_recall, critical_class, "test images", site_bars)
    if hold_out:
        failures.append(f"hold-out run: trained without {hold_out!r}, for measurement only, not for serving")
    return failures


def site_failures(
    sites: dict[str, dict[str, Any]],
    min_accuracy: float,
    min_critical_recall: float,
    critical_class: str,
    what: str,
    site_bars: dict[str, SiteBars] | None = None,
) -> list[str]:
    """Each site's accuracy and critical-class recall below its bar, in words (`what` names the images): a
    site in `site_bars` by its own bars, the others by the pooled ones; a site without critical-class images
    is judged on accuracy alone."""
    failures = []
    for site, figures in sites.items():
        own = (site_bars or {}).get(site, SiteBars(min_accuracy, min_critical_recall))
        bars = {ACCURACY: ("accuracy", own.min_accuracy), CRITICAL_RECALL: (f"{critical_class} recall", own.min_critical_recall)}
        failures += [
            f"site {site}: {label} = {figures[key]:.4f} on {figures['count']} {what}, required >= {bar}"
            for key, (label, bar) in bars.items()
            if figures[key] is not None and not figures[key] >= bar
        ]
    return failures


def gate_result(
    candidate: dict[str, float],
    sites: dict[str, dict[str, Any]],
    served: dict[str, Any] | None,
    broken: list[dict[str, Any]],
    identical: bool,
    thresholds: dict[str, float],
    critical_class: str,
    hold_out: str = "",
    test_images: int | None = None,
    site_bars: dict[str, SiteBars] | None = None,
    out_of_scope: OutOfScopeReport | None = None,
    out_of_scope_bars: OutOfScopeBars | None = None,
) -> dict[str, Any]:
    """What gate.json holds: the decision, every failed condition, and the figures it was made from. A
    model identical to the served one passes no bar it failed, and is never pushed again. With `out_of_scope`
    (a run with out-of-scope cells) its figures are barred per site by `out_of_scope_bars`."""
    failures = decide(
        candidate, served, thresholds["min_accuracy"], thresholds["min_critical_recall"], thresholds["max_regression"],
        critical_class, sites, hold_out, test_images, site_bars,
    )  # fmt: skip
    if out_of_scope is not None and out_of_scope_bars is not None:
        failures += out_of_scope_failures(out_of_scope, out_of_scope_bars, critical_class)
    return {
        "blessed": not failures and not identical,
        "failures": failures,
        "identical_to_served": identical,
        "candidate": candidate,
        "sites": sites,
        "served": served,
        "broken_served_versions": broken,
        "thresholds": thresholds,
        "site_bars": {site: dataclasses.asdict(bars) for site, bars in (site_bars or {}).items()},
        "out_of_scope": out_of_scope.as_dict() if out_of_scope else None,
        "out_of_scope_bars": dataclasses.asdict(out_of_scope_bars) if out_of_scope_bars else None,
    }


@component
def ServingGate(  # noqa: N802 - TFX component names are classes
    model: InputArtifact[standard_artifacts.Model],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    examples: InputArtifact[standard_artifacts.Examples],
    serving_dir: Parameter[str],
    classes_json: Parameter[str],
    critical_class: Parameter[str],
    min_accuracy: Parameter[float],
    min_critical_recall: Parameter[float],
    max_regression: Parameter[float],
    hold_out: Parameter[str],
    serving_state: Parameter[str],
    site_bars_json: Parameter[str],
    out_of_scope_bars_json: Parameter[str],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
):
    """Blesses the candidate (for the Pusher) and writes gate.json with the figures and the reasons: the
    bars hold for the pooled test split and for every site's test images (TFMA's `site` slices).

    `site_bars_json` (JSON {site: {min_accuracy, min_critical_recall}}) holds the sites judged by bars of
    their own (config `evaluation.site_bars`). Where the examples hold out-of-scope cells, the candidate's
    answers to them (`out_of_scope_scores`) are barred per site by `out_of_scope_bars_json` (JSON of
    `OutOfScopeBars`). `serving_state` names what was served when the run started,
    so that a cached decision is reused only while the served model is unchanged (the local runner sets it;
    Kubeflow disables caching for this step).
    """
    del serving_state  # part of the cache key only
    classes = json.loads(classes_json)
    candidate = read_metrics(evaluation.uri, classes)
    candidate_figures = {k: candidate[k] for k in (ACCURACY, CRITICAL_RECALL, "count")}
    sites = {
        site: {k: f[k] for k in ("count", ACCURACY, CRITICAL_RECALL)}
        for site, f in read_site_figures(evaluation.uri, classes, critical_class).items()
    }
    test_files = example_files(examples.uri, "test")
    served, broken = newest_loadable(serving_dir, test_files, classes.index(critical_class))
    identical = served is not None and served.pop("digest") == model_digest(os.path.join(model.uri, SERVING_FORMAT))
    thresholds = {"min_accuracy": min_accuracy, "min_critical_recall": min_critical_recall, "max_regression": max_regression}
    test_images = sum(1 for _ in tf.data.TFRecordDataset(test_files, compression_type="GZIP"))
    try:
        own_bars = typed_site_bars(json.loads(site_bars_json), "site_bars")
        out_bars = from_dict(OutOfScopeBars, json.loads(out_of_scope_bars_json))
    except json.JSONDecodeError as err:
        raise ConfigError(f"site_bars or out_of_scope_bars: not JSON ({err})") from None
    out_of_scope = None
    if out_of_scope_split("test") in artifact_utils.decode_split_names(examples.split_names):
        out_of_scope = score_out_of_scope(
            os.path.join(model.uri, SERVING_FORMAT), test_files, example_files(examples.uri, out_of_scope_split("test")),
            critical_class,
        )  # fmt: skip
    result = gate_result(
        candidate_figures, sites, served, broken, identical, thresholds, critical_class, hold_out, test_images, own_bars,
        out_of_scope, out_bars,
    )  # fmt: skip
    blessed = result["blessed"]
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, GATE_FILE), "w") as f:
        json.dump(result, f, indent=1)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write("")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("current_model", model.uri)


def read_gate(blessing_uri: str) -> dict[str, Any]:
    with tf.io.gfile.GFile(os.path.join(blessing_uri, GATE_FILE)) as f:
        return json.load(f)
