"""Leave-one-site-out: what a hospital the model has never seen will get. For each site of a pipeline run's
split, trains with the Trainer's own code on the other sites' train and eval images, and scores every image
of the held-out site (all splits) with the exported model's `serving_examples`, as served: per-class recall
with what each class was called instead, myeloblast precision, and the served alert's rate on non-blasts.

    .venv/bin/python -m benchmarks.leave_one_site_out \\
        outputs/pipelines/bloodcell/ImageExampleGen/examples/<id> --output outputs/loso [--site munich ...]

Writes `<output>/loso.json` and `<output>/loso.md` (one row per held-out site), after each site so a long
run can be read as it goes. The held-out models stay under `<output>/<site>/model`: never pushed.
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
import typer

from benchmarks.hold_out_root import answers_in_batches, read_split, served_outputs, write_split
from cli.options import CONFIG_OPTION, load_config_or_exit
from cli.run_log import configure_process
from components.site_adapter import AdaptationRefusedError, adapted_for_site
from contracts import features
from contracts.artifacts import (
    EXPORTED_OPERATING_POINT_FILE,
    EXPORTED_TRAINER_CONFIG_FILE,
    HISTORY_FILE,
    out_of_scope_split,
    read_json,
    split_folder,
    write_json,
)
from contracts.config import Config
from contracts.signatures import PREDICTED_INDEX, alert_output
from pipelines.configs import trainer_config
from training.export import ServingModule
from training.operating_point import OperatingPoint
from training.site_adaptation import exported_config, restored_model
from training.trainer_module import train

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
LOG = logging.getLogger("benchmarks")  # shown by the run log (cli.run_log.RunLog)
SPLITS = ("train", "eval", "test")


@dataclasses.dataclass(frozen=True)
class ClassFigures:
    """One class of the held-out site: its images, how many were right, and what the rest were called."""

    images: int
    right: int
    called_instead: dict[str, int]

    @property
    def recall(self) -> float:
        return self.right / self.images


@dataclasses.dataclass(frozen=True)
class SiteScores:
    """A set of a site's images scored as served."""

    accuracy: float
    classes: dict[str, ClassFigures]  # the classes the images have
    critical_precision: float | None  # of the argmax answers naming the critical class; None: never named
    alert_rate_non_critical: float | None  # served alert raised on images of other classes; None: none


@dataclasses.dataclass(frozen=True)
class AdaptedHalf:
    """The held-out site adapted to on one half of its images, labels hidden, as `bloodcell adapt` adapts (the
    config's adaptation settings and safeguards), and the other half scored without and with it."""

    images: int  # scored
    refused: str  # why the adaptation was refused ("" = adapted): the base model then answers the site
    without: SiteScores
    adapted: SiteScores


@dataclasses.dataclass(frozen=True)
class HeldOutSite:
    """The figures of one site held out of training and scored as served."""

    site: str
    images: int
    accuracy: float
    classes: dict[str, ClassFigures]  # the classes the site has
    critical_precision: float | None  # of the argmax answers naming the critical class; None: never named
    alert_rate_non_critical: float | None  # served alert raised on images of other classes; None: site has none
    untrained_classes: list[str]  # classes no other site has: the model never saw them
    trained_sites_test_accuracy: float  # the other sites' test split, same model
    trained_sites_critical_recall: float | None
    trained_sites_test_by_site: dict[str, float]  # that accuracy at each trained site
    epochs: int
    minutes: float
    adaptation: AdaptedHalf | None = None


def site_of(example: tf.train.Example) -> str:
    return example.features.feature[features.SITE].bytes_list.value[0].decode()


def label_of(example: tf.train.Example) -> int:
    return example.features.feature[features.LABEL].int64_list.value[0]


def halves(examples: list[tf.train.Example]) -> tuple[list[tf.train.Example], list[tf.train.Example]]:
    """(adaptation half, scoring half), by the parity of each image's SHA-256: stable, label-free."""
    odd = [int(e.features.feature[features.SHA256].bytes_list.value[0][-1:].decode(), 16) % 2 for e in examples]
    return [e for e, o in zip(examples, odd, strict=True) if not o], [e for e, o in zip(examples, odd, strict=True) if o]


def scores(model: Callable, examples: list[tf.train.Example], classes: list[str], critical: str) -> SiteScores:
    """The examples scored by a `serving_examples` function, as served."""
    answers = answers_in_batches(model, examples)
    labels = np.array([label_of(e) for e in examples])
    found = score_site(labels, answers[PREDICTED_INDEX], answers[alert_output(critical)], classes, classes.index(critical))
    return SiteScores(*found)


def adapted_half(held: list[tf.train.Example], model_dir: Path, cfg: Config) -> AdaptedHalf:
    """Adapts the exported model to one half of the held-out site (`adapted_for_site`, labels never read) and
    scores the other half without and with the adaptation (a refused adaptation: the base model's answers)."""
    config = exported_config(str(model_dir))
    point = OperatingPoint(**read_json(str(model_dir), EXPORTED_OPERATING_POINT_FILE))
    base = restored_model(str(model_dir), config)
    adapt, score = halves(held)
    images = [e.features.feature[features.IMAGE].bytes_list.value[0] for e in adapt]
    classes, critical = list(cfg.classes), cfg.critical_class
    base_module = ServingModule(base, config, point)  # held: its tf.function keeps only a weak reference
    without = scores(base_module.serve_examples, score, classes, critical)
    try:
        adapted = adapted_for_site(base, config, point, images, cfg.adaptation, site_of(held[0]))
    except AdaptationRefusedError as err:
        return AdaptedHalf(len(score), str(err), without, without)
    module = ServingModule(adapted.model, config, point)
    return AdaptedHalf(len(score), "", without, scores(module.serve_examples, score, classes, critical))


def score_site(
    labels: np.ndarray, predicted: np.ndarray, alerts: np.ndarray, classes: list[str], critical_index: int
) -> tuple[float, dict[str, ClassFigures], float | None, float | None]:
    """(accuracy, per-class figures, critical-class precision, alert rate on the other classes)."""
    figures = {}
    for index, name in enumerate(classes):
        mine = labels == index
        if mine.any():
            wrong = collections.Counter(classes[g] for g in predicted[mine] if g != index)
            figures[name] = ClassFigures(int(mine.sum()), int((predicted[mine] == index).sum()), dict(wrong.most_common()))
    named = predicted == critical_index
    precision = float((labels[named] == critical_index).mean()) if named.any() else None
    others = labels != critical_index
    alert_rate = float(alerts[others].mean()) if others.any() else None
    return float((labels == predicted).mean()), figures, precision, alert_rate


def held_out_figures(
    site: str,
    examples: dict[str, list[tf.train.Example]],
    output: Path,
    cfg: Config,
    others: dict[str, list[tf.train.Example]] | None = None,
    reuse: bool = False,
) -> HeldOutSite:
    """Trains without `site` (its images in every split; with `others`, the out-of-scope cells of the other
    sites join the train and eval splits, as in the pipeline's Trainer) and scores it and the other sites'
    test split; then adapts to one half of the site and scores the other (`adapted_half`). With `reuse`, a
    model already under `<output>/<site>/model` is scored instead of training one."""
    classes, critical = list(cfg.classes), cfg.critical_class
    held = [e for rows in examples.values() for e in rows if site_of(e) == site]
    kept = {split: [e for e in rows if site_of(e) != site] for split, rows in examples.items()}
    fed = {split: kept[split] + [e for e in (others or {}).get(split, []) if site_of(e) != site] for split in ("train", "eval")}
    start = time.monotonic()
    model_dir = output / site / "model"
    if reuse and (model_dir / "saved_model.pb").exists():
        history = read_json(str(output / site / "run"), HISTORY_FILE)
        if not (model_dir / EXPORTED_TRAINER_CONFIG_FILE).exists():  # exported before the file existed
            write_json(str(model_dir), EXPORTED_TRAINER_CONFIG_FILE, trainer_config(cfg).as_dict())
    else:
        history = train(
            write_split(output / site / "train.gz", fed["train"]),
            write_split(output / site / "eval.gz", fed["eval"]),
            trainer_config(cfg),
            str(model_dir),
            str(output / site / "run"),
        )
    minutes = (time.monotonic() - start) / 60
    critical_index = classes.index(critical)
    answers = served_outputs(model_dir, held)
    labels = np.array([label_of(e) for e in held])
    accuracy, figures, precision, alert_rate = score_site(
        labels, answers[PREDICTED_INDEX], answers[alert_output(critical)], classes, critical_index
    )
    test_labels = np.array([label_of(e) for e in kept["test"]])
    test_predicted = served_outputs(model_dir, kept["test"])[PREDICTED_INDEX]
    test_critical = test_labels == critical_index
    test_sites = np.array([site_of(e) for e in kept["test"]])
    by_site = {s: float((test_labels == test_predicted)[test_sites == s].mean()) for s in sorted(set(test_sites))}
    trained = {classes[label_of(e)] for e in kept["train"]}
    return HeldOutSite(
        site=site,
        images=len(held),
        accuracy=accuracy,
        classes=figures,
        critical_precision=precision,
        alert_rate_non_critical=alert_rate,
        untrained_classes=sorted(set(figures) - trained),
        trained_sites_test_accuracy=float((test_labels == test_predicted).mean()),
        trained_sites_critical_recall=float((test_predicted[test_critical] == critical_index).mean())
        if test_critical.any()
        else None,
        trained_sites_test_by_site=by_site,
        epochs=len(history),
        minutes=round(minutes, 1),
        adaptation=adapted_half(held, model_dir, cfg),
    )


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_table(rows: list[HeldOutSite], classes: list[str], critical: str, note: str) -> str:
    """The site x class table, then what each class was called instead."""
    head = ["held-out site", "images", "accuracy", *classes, f"{critical} precision", "alert on non-blasts"]
    head += [f"trained sites' test accuracy (per site) / {critical} recall", "epochs, min"]
    lines = [note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"`{row.site}`", str(row.images), f"{row.accuracy:.3f}"]
        for name in classes:
            fig = row.classes.get(name)
            untrained = " (untrained)" if name in row.untrained_classes else ""
            cells.append("–" if fig is None else f"{fig.recall:.3f} ({fig.right}/{fig.images}){untrained}")
        cells += [_share(row.critical_precision), _share(row.alert_rate_non_critical)]
        per_site = ", ".join(f"{s} {a:.3f}" for s, a in row.trained_sites_test_by_site.items())
        cells += [f"{row.trained_sites_test_accuracy:.3f} ({per_site}) / {_share(row.trained_sites_critical_recall)}"]
        cells += [f"{row.epochs}, {row.minutes}"]
        lines.append("| " + " | ".join(cells) + " |")
    adapted = [row for row in rows if row.adaptation]
    if adapted:
        lines += ["", "Adapted to one half of the held-out site's images (labels hidden; `bloodcell adapt`'s method and"
                  " safeguards), the other half scored without -> with:", ""]  # fmt: skip
        head = [
            "held-out site",
            "images scored",
            "adaptation",
            "accuracy",
            *classes,
            f"{critical} precision",
            "alert on non-blasts",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in adapted:
            a = row.adaptation
            cells = [f"`{row.site}`", str(a.images), f"refused: {a.refused}" if a.refused else "adapted"]
            cells.append(f"{a.without.accuracy:.3f} -> {a.adapted.accuracy:.3f}")
            for name in classes:
                before, after = a.without.classes.get(name), a.adapted.classes.get(name)
                cells.append("–" if before is None else f"{before.right} -> {after.right} of {before.images}")
            cells += [f"{_share(a.without.critical_precision)} -> {_share(a.adapted.critical_precision)}"]
            cells += [f"{_share(a.without.alert_rate_non_critical)} -> {_share(a.adapted.alert_rate_non_critical)}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "What each class of the held-out site was called instead:", ""]
    for row in rows:
        wrong = "; ".join(
            f"{name}: " + ", ".join(f"{n} {other}" for other, n in fig.called_instead.items())
            for name, fig in row.classes.items()
            if fig.called_instead
        )
        lines.append(f"- `{row.site}`: {wrong or 'none wrong'}")
    return "\n".join(lines) + "\n"


def write_table(output: Path, rows: list[HeldOutSite], classes: list[str], critical: str, note: str) -> None:
    as_json = [dict(dataclasses.asdict(r), recall={k: v.recall for k, v in r.classes.items()}) for r in rows]
    (output / "loso.json").write_text(json.dumps({"note": note, "sites": as_json}, indent=1) + "\n")
    (output / "loso.md").write_text(markdown_table(rows, classes, critical, note))


@app.command()
def main(
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="ImageExampleGen output (Split-*)."),
    output: Path = typer.Option(..., "--output", help="Folder for the table, the held-out models and their splits."),
    sites: Optional[List[str]] = typer.Option(None, "--site", help="Site to hold out, repeatable (default: every site)."),
    reuse: bool = typer.Option(False, "--reuse-models", help="Score the models already under OUTPUT/<site>/model."),
    config: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, repeatable."),
) -> None:
    cfg = load_config_or_exit(config, overrides)
    splits = {split: read_split(examples, split) for split in SPLITS}
    others = {  # out-of-scope cells (a root with role out_of_scope), learnt as the pipeline learns them
        split: read_split(examples, out_of_scope_split(split))
        for split in ("train", "eval")
        if Path(split_folder(str(examples), out_of_scope_split(split))).is_dir()
    }
    present = sorted({site_of(e) for rows in splits.values() for e in rows})
    unknown = sorted(set(sites or []) - set(present))
    if unknown:
        typer.echo(f"error: no image of the split comes from site(s) {unknown}; the split has {present}", err=True)
        raise typer.Exit(2)
    if len(present) < 2:
        typer.echo(f"error: the split has one site ({present}): nothing to train on without it", err=True)
        raise typer.Exit(2)
    output.mkdir(parents=True, exist_ok=True)
    note = f"Leave-one-site-out on `{examples}`, --set {' '.join(overrides or []) or '(none)'}; held-out models are never pushed."
    rows: list[HeldOutSite] = []
    for site in sites or present:
        LOG.info("leave-one-site-out: %s without %s", "the model trained" if reuse else "training", site)
        rows.append(held_out_figures(site, splits, output, cfg, others, reuse))
        write_table(output, rows, list(cfg.classes), cfg.critical_class, note)
        LOG.info("leave-one-site-out: %s scored (%d images, accuracy %.4f)", site, rows[-1].images, rows[-1].accuracy)
    typer.echo(markdown_table(rows, list(cfg.classes), cfg.critical_class, note))


if __name__ == "__main__":
    configure_process()  # the run log of a `bloodcell` process: one line per epoch, library noise filtered
    app()
