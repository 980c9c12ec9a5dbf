"""Cells that are none of the five, side by side: how each way of answering "out of scope" does on them
and what it costs the five classes. Trains, with the Trainer's own code, the five-class model (the label-free
scores read it) and an outlier-exposure model (one more class learnt from the out-of-scope train images of
`--exposure-site` only), then scores:

- label-free, on the five-class model: the calibrated top probability (low = out of scope), the Mahalanobis
  distance of the last block's pooled features to the nearest class (shared covariance of the train images),
  the distance to the k-th nearest train image in those features (cosine);
- outlier exposure: the served probability of the extra class.

Each score's threshold is set on the eval split so that `--in-scope-budget` of the five classes' eval images
are called out of scope; then per method: the five classes' test images called out of scope (per site), their
accuracy and myeloblast recall at each site, and per out-of-scope cell type and site the share called out of
scope and the share that raised the myeloblast alert (alert and not out of scope). Out-of-scope images of an
exposure site are scored on their test split; those of other sites (never trained on) on every split.

    .venv/bin/python -m benchmarks.out_of_scope outputs/.../ImageExampleGen/examples/<id> \\
        ../shared/data/other-cells --output outputs/out_of_scope [--exposure-site barcelona]

The out-of-scope folder (one sub-folder per cell type, sites as for a data root) goes through the pipeline's
own ingestion (`run_ingestion`, same verification, split ratios and seed) into `<output>/other_cells`. Writes
`<output>/out_of_scope.json` and `<output>/out_of_scope.md`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
import typer

from benchmarks.hold_out_root import answers_in_batches, read_split, write_split
from benchmarks.leave_one_site_out import SPLITS, label_of, site_of
from cli.options import CONFIG_OPTION, load_config_or_exit
from cli.run_log import configure_process
from components.image_example_gen import run_ingestion
from contracts import features
from contracts.config import Config
from contracts.data_roots import parse_data_root
from contracts.image_check import Limits
from contracts.signatures import OUT_OF_SCOPE_PROBABILITY, PROBABILITIES, alert_output
from pipelines.configs import trainer_config
from training.export import ServingModule
from training.preprocessing import parse_image_batch, preprocess_batch
from training.trainer_config import TrainerConfig
from training.trainer_module import choose_operating_point, fit

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
LOG = logging.getLogger("benchmarks")  # shown by the run log (cli.run_log.RunLog)
NEIGHBOURS = 10


@dataclasses.dataclass(frozen=True)
class Answers:
    """A model's answers for a list of examples: served outputs and the pooled last-block features."""

    probabilities: np.ndarray  # [N, classes] served (calibrated, test-time views, given in scope)
    out_of_scope: np.ndarray  # [N] served out-of-scope probability (0 for the five-class model)
    predicted: np.ndarray  # served argmax over the five classes
    alerts: np.ndarray  # served myeloblast alert
    features: np.ndarray  # [N, D] pooled features of the last conv block, one view


@dataclasses.dataclass(frozen=True)
class CellFigures:
    """One out-of-scope cell type at one site under one method."""

    images: int
    out_of_scope: float  # share called out of scope
    alerts: float  # share that raised the myeloblast alert (and was not called out of scope)


@dataclasses.dataclass(frozen=True)
class MethodFigures:
    method: str
    threshold: float
    in_scope_called_out: dict[str, float]  # per site, test split of the five classes
    in_scope_accuracy: dict[str, float]  # per site, argmax over the five classes
    critical_recall: dict[str, float]  # per site that has the critical class
    cells: dict[str, CellFigures]  # "<cell type> @ <site> (<splits>)"


def answers_of(model: keras.Model, module: ServingModule, examples: list[tf.train.Example]) -> Answers:
    """The served outputs (as `serving_examples` gives them) and the pooled features, in batches of 64."""
    served = answers_in_batches(module.serve_examples, examples)
    pooled = keras.Model(model.inputs, model.get_layer("gap").output)
    features = []
    for start in range(0, len(examples), 64):
        serialized = tf.constant([e.SerializeToString() for e in examples[start : start + 64]])
        images, _ = preprocess_batch(parse_image_batch(serialized), module.config.preprocessing)
        features.append(pooled(images, training=False).numpy())
    return Answers(
        probabilities=served[PROBABILITIES],
        out_of_scope=served[OUT_OF_SCOPE_PROBABILITY],
        predicted=served[PROBABILITIES].argmax(axis=1),
        alerts=served[alert_output(module.critical_class)],
        features=np.concatenate(features),
    )


def mahalanobis_score(train: Answers, labels: np.ndarray) -> Callable[[Answers], np.ndarray]:
    """Distance to the nearest class mean under the train features' shared covariance (Lee et al. 2018)."""
    means = np.stack([train.features[labels == k].mean(axis=0) for k in np.unique(labels)])
    centred = train.features - means[np.searchsorted(np.unique(labels), labels)]
    precision = np.linalg.pinv(np.cov(centred, rowvar=False) + 1e-6 * np.eye(centred.shape[1]))

    def score(answers: Answers) -> np.ndarray:
        gaps = answers.features[:, None, :] - means[None]
        return np.einsum("nkd,de,nke->nk", gaps, precision, gaps).min(axis=1)

    return score


def neighbour_score(train: Answers) -> Callable[[Answers], np.ndarray]:
    """Cosine distance to the k-th nearest train image (Sun et al. 2022)."""
    bank = train.features / (np.linalg.norm(train.features, axis=1, keepdims=True) + 1e-12)

    def score(answers: Answers) -> np.ndarray:
        unit = answers.features / (np.linalg.norm(answers.features, axis=1, keepdims=True) + 1e-12)
        return 1.0 - np.sort(unit @ bank.T, axis=1)[:, -NEIGHBOURS]

    return score


def trained(
    examples: dict[str, list[tf.train.Example]], config: TrainerConfig, folder: Path
) -> tuple[keras.Model, ServingModule]:
    """The Trainer's fit and operating point on these train and eval examples; the model as served."""
    start = time.monotonic()
    model, history, eval_ds = fit(
        write_split(folder / "train.gz", examples["train"]),
        write_split(folder / "eval.gz", examples["eval"]),
        config,
        config.training.epochs,
    )
    module = ServingModule(model, config, choose_operating_point(model, eval_ds, config))
    LOG.info("out of scope: %s trained, %d epochs, %.1f min", folder.name, len(history), (time.monotonic() - start) / 60)
    return model, module


def cell_types_of(folder: Path, classes: list[str]) -> list[str]:
    """The folder's sub-folders: its cell types; ValueError when it has none or one is among `classes`."""
    cell_types = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not cell_types:
        raise ValueError(f"{folder}: no sub-folder; expected one per out-of-scope cell type")
    mixed = sorted(set(cell_types) & set(classes))
    if mixed:
        raise ValueError(f"{folder}: sub-folder(s) {mixed} are among the five classes, not out of scope")
    return cell_types


def ingested(folder: Path, cfg: Config, output: Path) -> dict[str, list[tf.train.Example]]:
    """The folder's images through the pipeline's ingestion, its sub-folders as the classes: the splits."""
    cell_types = cell_types_of(folder, list(cfg.classes))
    ingestion = cfg.ingestion
    run_ingestion(  # logs what it ingested and rejected
        [parse_data_root(str(folder))],
        cell_types,
        Limits(ingestion.max_pixels, ingestion.min_side, ingestion.max_file_bytes),
        ingestion.split_ratios,
        ingestion.split_seed,
        "",
        str(output / "examples"),
        str(output / "ingestion_report.json"),
    )
    return {split: read_split(output / "examples", split) for split in SPLITS}


def relabelled(example: tf.train.Example, label: int) -> tf.train.Example:
    copy = tf.train.Example()
    copy.CopyFrom(example)
    copy.features.feature[features.LABEL].int64_list.value[:] = [label]
    return copy


def cell_type(example: tf.train.Example) -> str:
    return example.features.feature[features.LABEL_NAME].bytes_list.value[0].decode()


def method_figures(
    method: str,
    score: Callable[[Answers], np.ndarray],
    answers: dict[str, Answers],
    groups: dict[str, list[tf.train.Example]],
    labels: dict[str, np.ndarray],
    sites: dict[str, np.ndarray],
    budget: float,
    critical_index: int,
) -> MethodFigures:
    """One method's figures: its threshold keeps `budget` of the in-scope eval images out of scope."""
    threshold = float(np.quantile(score(answers["eval"]), 1.0 - budget))
    test, flagged = answers["test"], score(answers["test"]) > threshold
    right = test.predicted == labels["test"]
    per_site = sorted(set(sites["test"]))
    critical = labels["test"] == critical_index
    recall = {
        s: float(right[critical & (sites["test"] == s)].mean()) for s in per_site if (critical & (sites["test"] == s)).any()
    }
    cells = {}
    for name, rows in groups.items():
        out = score(answers[name]) > threshold
        cells[name] = CellFigures(len(rows), float(out.mean()), float((answers[name].alerts & ~out).mean()))
    return MethodFigures(
        method=method,
        threshold=threshold,
        in_scope_called_out={s: float(flagged[sites["test"] == s].mean()) for s in per_site},
        in_scope_accuracy={s: float(right[sites["test"] == s].mean()) for s in per_site},
        critical_recall=recall,
        cells=cells,
    )


def markdown_table(rows: list[MethodFigures], note: str) -> str:
    """One column per method; rows: the five classes' test figures per site, then each out-of-scope group."""
    lines = [note, "", "| | " + " | ".join(r.method for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for title, field in [
        ("in-scope test called out of scope", "in_scope_called_out"),
        ("in-scope test accuracy", "in_scope_accuracy"),
        ("myeloblast recall", "critical_recall"),
    ]:
        for site in getattr(rows[0], field):
            lines.append(f"| {title}, {site} | " + " | ".join(f"{getattr(r, field)[site]:.3f}" for r in rows) + " |")
    for group, cell in rows[0].cells.items():
        figures = [f"{r.cells[group].out_of_scope:.3f} / {r.cells[group].alerts:.3f}" for r in rows]
        lines.append(f"| {group}, {cell.images} images: out of scope / alert | " + " | ".join(figures) + " |")
    return "\n".join(lines) + "\n"


@app.command()
def main(
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="ImageExampleGen output of the five classes."),
    other_cells: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of out-of-scope cell types."),
    output: Path = typer.Option(..., "--output", help="Folder for the table and the training splits."),
    exposure_sites: Optional[List[str]] = typer.Option(
        None, "--exposure-site", help="Site whose out-of-scope images outlier exposure learns (repeatable; default barcelona)."
    ),
    budget: float = typer.Option(0.02, "--in-scope-budget", min=0.0, max=1.0, help="Share of in-scope eval images let out."),
    config: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, repeatable."),
) -> None:
    cfg = load_config_or_exit(config, overrides)
    exposed = set(exposure_sites or ["barcelona"])
    base_config = trainer_config(cfg)
    in_scope, critical_index = len(base_config.classes), base_config.critical_index
    splits = {split: read_split(examples, split) for split in SPLITS}
    output.mkdir(parents=True, exist_ok=True)
    try:
        others = ingested(other_cells, cfg, output / "other_cells")
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    present = sorted({site_of(e) for e in others["train"]})
    if not exposed <= set(present):
        typer.echo(f"error: no out-of-scope train image comes from {sorted(exposed - set(present))}; sites: {present}", err=True)
        raise typer.Exit(2)
    groups: dict[str, list[tf.train.Example]] = collections.defaultdict(list)
    for split, rows in others.items():
        for e in rows:
            if site_of(e) not in exposed:
                groups[f"{cell_type(e)} @ {site_of(e)} (all, untrained)"].append(e)
            elif split == "test":
                groups[f"{cell_type(e)} @ {site_of(e)} (test)"].append(e)
    groups = dict(sorted(groups.items()))
    labels = {split: np.array([label_of(e) for e in rows]) for split, rows in splits.items()}
    sites = {split: np.array([site_of(e) for e in rows]) for split, rows in splits.items()}

    model, module = trained(splits, base_config, output / "five_classes")
    base = {name: answers_of(model, module, rows) for name, rows in {**splits, **groups}.items()}
    rows = [
        method_figures(method, score, base, groups, labels, sites, budget, critical_index)
        for method, score in [
            ("top probability (label-free)", lambda a: 1.0 - a.probabilities.max(axis=1)),
            ("Mahalanobis (label-free)", mahalanobis_score(base["train"], labels["train"])),
            (f"{NEIGHBOURS}-th neighbour (label-free)", neighbour_score(base["train"])),
        ]
    ]
    with_others = {
        split: rows + [relabelled(e, in_scope) for e in others[split] if site_of(e) in exposed]
        for split, rows in splits.items()
        if split != "test"
    }
    model, module = trained(with_others, base_config, output / "outlier_exposure")  # one output per cell type
    exposure = {name: answers_of(model, module, rows) for name, rows in {**splits, **groups}.items()}
    rows.append(
        method_figures(
            "outlier exposure", lambda a: a.out_of_scope, exposure, groups, labels, sites, budget, critical_index
        )
    )
    note = (
        f"Out of scope on `{examples}` and `{other_cells}`, exposure sites {sorted(exposed)}, in-scope budget {budget}"
        f" (eval), --set {' '.join(overrides or []) or '(none)'}. Cells: share called out of scope / share raising the"
        " myeloblast alert."
    )
    as_json = {"note": note, "methods": [dataclasses.asdict(r) for r in rows]}
    (output / "out_of_scope.json").write_text(json.dumps(as_json, indent=1) + "\n")
    (output / "out_of_scope.md").write_text(markdown_table(rows, note))
    typer.echo(markdown_table(rows, note))


if __name__ == "__main__":
    configure_process()  # the run log of a `bloodcell` process: one line per epoch, library noise filtered
    app()
