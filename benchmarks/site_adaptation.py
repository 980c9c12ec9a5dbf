"""A held-out site without and with adaptation to its look from its unlabelled images. For each site of a
leave-one-site-out output (`benchmarks/leave_one_site_out.py`: the model trained without the site), splits
the site's images in two halves by a hash of their content, re-estimates batch-norm statistics on one half
(labels unused: plain AdaBN, or balanced over the model's own predicted classes) and scores the other half
as served, beside the unadapted model on the same half.

    .venv/bin/python -m benchmarks.site_adaptation <loso output> \\
        outputs/pipelines/bloodcell/ImageExampleGen/examples/<id> --output outputs/adaptation [--blocks 1 ...]

With `--root NAME`, the models folder is a `benchmarks/hold_out_root.py` output (`<folder>/model`, trained
without the data root NAME) and the images those of NAME; with `--transductive`, every image is adapted to
and scored (labels still unused), for a root too small to halve. The row "as `bloodcell adapt`" is the
product's method with the config's settings and safeguards (a refused adaptation answers as the base model).

The `--set` overrides must be those the leave-one-site-out run used (the models are rebuilt from the config).
Writes `<output>/adaptation.json` and `<output>/adaptation.md`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
import typer

from benchmarks.hold_out_root import answers_in_batches, read_split, root_of
from benchmarks.leave_one_site_out import SPLITS, ClassFigures, halves, label_of, score_site, site_of
from cli.options import CONFIG_OPTION, load_config_or_exit
from cli.run_log import configure_process
from components.site_adapter import AdaptationRefusedError, adapted_for_site
from contracts import features
from contracts.artifacts import EXPORTED_OPERATING_POINT_FILE, read_json
from contracts.config import Adaptation
from contracts.signatures import PREDICTED_INDEX, alert_output
from pipelines.configs import trainer_config
from training.export import ServingModule
from training.operating_point import OperatingPoint
from training.preprocessing import parse_image_batch, preprocess_batch
from training.site_adaptation import adapted_to_site, entropy_tuned, restored_model
from training.trainer_config import TrainerConfig

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
LOG = logging.getLogger("benchmarks")  # shown by the run log (cli.run_log.RunLog)


@dataclasses.dataclass(frozen=True)
class AdaptedFigures:
    """One held-out site, one adaptation, scored on the half it was not adapted on."""

    site: str
    adaptation: str
    images: int
    accuracy: float
    classes: dict[str, ClassFigures]
    critical_precision: float | None
    alert_rate_non_critical: float | None
    critical_share_adapt_half: float  # share of the adaptation half called the critical class (no labels used)


def preprocessed(examples: list[tf.train.Example], config: TrainerConfig) -> np.ndarray:
    serialized = tf.constant([e.SerializeToString() for e in examples])
    return preprocess_batch(parse_image_batch(serialized), config.preprocessing)[0].numpy()


def site_figures(
    site: str,
    examples: list[tf.train.Example],
    model_dir: Path,
    config: TrainerConfig,
    blocks: list[int],
    tent_steps: list[int] = (),
    tent_learning_rate: float = 1e-3,
    settings: Adaptation | None = None,
    transductive: bool = False,
) -> list[AdaptedFigures]:
    """The site's scoring half under the unadapted model and each adaptation of the adaptation half (with
    `transductive`, both halves are every image); with `settings`, also as `bloodcell adapt` adapts."""
    point = OperatingPoint(**read_json(str(model_dir), EXPORTED_OPERATING_POINT_FILE))
    base = restored_model(str(model_dir), config)
    adapt, score = (examples, examples) if transductive else halves(examples)
    images = preprocessed(adapt, config)
    unadapted = ServingModule(base, config, point)  # held: its tf.function method keeps only a weak reference
    predicted = answers_in_batches(unadapted.serve_examples, adapt)[PREDICTED_INDEX]
    variants: list[tuple[str, keras.Model]] = [("none", base)]
    for k in blocks:
        first = f"first {k} block{'s' if k > 1 else ''}"
        variants.append((f"AdaBN, {first}", adapted_to_site(base, images, k)))
        variants.append((f"class-balanced AdaBN, {first}", adapted_to_site(base, images, k, predicted)))
        for steps in tent_steps:
            tuned = entropy_tuned(base, images, k, steps, tent_learning_rate)
            variants.append((f"TENT {steps} steps + class-balanced AdaBN, {first}", adapted_to_site(tuned, images, k, predicted)))
    if settings:
        encoded = [e.features.feature[features.IMAGE].bytes_list.value[0] for e in adapt]
        try:
            product = adapted_for_site(base, config, point, encoded, settings, site).model
            variants.append(("as `bloodcell adapt`", product))
        except AdaptationRefusedError as err:
            variants.append((f"as `bloodcell adapt`: refused ({err})", base))
    labels = np.array([label_of(e) for e in score])
    rows = []
    for name, model in variants:
        module = ServingModule(model, config, point)
        answers = answers_in_batches(module.serve_examples, score)
        accuracy, figures, precision, alert_rate = score_site(
            labels, answers[PREDICTED_INDEX], answers[alert_output(config.critical_class)], config.classes, config.critical_index
        )
        share = float(np.mean(answers_in_batches(module.serve_examples, adapt)[PREDICTED_INDEX] == config.critical_index))
        rows.append(AdaptedFigures(site, name, len(score), accuracy, figures, precision, alert_rate, share))
        LOG.info("site adaptation: %s, %s: accuracy %.4f", site, name, accuracy)
    return rows


def markdown_table(rows: list[AdaptedFigures], classes: list[str], critical: str, note: str) -> str:
    head = ["site", "adaptation", "images", "accuracy", *classes, f"{critical} precision", "alert on non-blasts"]
    head.append(f"{critical} share of the adaptation half")
    lines = [note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"`{row.site}`", row.adaptation, str(row.images), f"{row.accuracy:.3f}"]
        cells += [
            "–" if c not in row.classes else f"{row.classes[c].recall:.3f} ({row.classes[c].right}/{row.classes[c].images})"
            for c in classes
        ]
        cells += [
            "–" if row.critical_precision is None else f"{row.critical_precision:.3f}",
            "–" if row.alert_rate_non_critical is None else f"{row.alert_rate_non_critical:.3f}",
            f"{row.critical_share_adapt_half:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@app.command()
def main(
    loso: Path = typer.Argument(..., exists=True, file_okay=False, help="leave_one_site_out.py output (<site>/model)."),
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="The split it was run on (Split-*)."),
    output: Path = typer.Option(..., "--output", help="Folder for the table."),
    blocks: Optional[List[int]] = typer.Option(
        None, "--blocks", help="Adapt the first N blocks (repeatable; default 1 and all)."
    ),
    tent_steps: Optional[List[int]] = typer.Option(None, "--tent-steps", help="Also TENT for this many batches (repeatable)."),
    tent_learning_rate: float = typer.Option(1e-3, "--tent-learning-rate"),
    root: Optional[str] = typer.Option(None, "--root", help="A hold_out_root.py output: the data root it held out."),
    transductive: bool = typer.Option(False, "--transductive", help="Adapt to and score every image (labels unused)."),
    config: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, as the LOSO run."),
) -> None:
    full = load_config_or_exit(config, overrides)
    cfg = trainer_config(full)
    depth = len(cfg.training.filters)
    wrong = sorted(k for k in blocks or [] if not 1 <= k <= depth)
    if wrong:
        typer.echo(f"error: --blocks {wrong}: the model has blocks 1 to {depth}", err=True)
        raise typer.Exit(2)
    rows_by_site: dict[str, list[tf.train.Example]] = {}
    for split in SPLITS:
        for e in read_split(examples, split):
            rows_by_site.setdefault(root_of(e) if root else site_of(e), []).append(e)
    model_of = {name: loso / "model" if root else loso / name / "model" for name in rows_by_site}
    sites = sorted(s for s in rows_by_site if (not root or s == root) and (model_of[s] / "saved_model.pb").exists())
    if not sites:
        typer.echo(f"error: no <site>/model under {loso} for the sites of the split {sorted(rows_by_site)}", err=True)
        raise typer.Exit(2)
    output.mkdir(parents=True, exist_ok=True)
    note = (
        f"Held-out {'root' if root else 'sites'} of `{loso}` adapted "
        + ("on every image and scored on every image" if transductive else "on one half of the images, scored on the other")
        + f" (labels unused); --set {' '.join(overrides or []) or '(none)'}."
    )
    rows: list[AdaptedFigures] = []
    for site in sites:
        rows += site_figures(
            site, rows_by_site[site], model_of[site], cfg, blocks or [1, depth], tent_steps or [], tent_learning_rate,
            full.adaptation, transductive,
        )  # fmt: skip
        as_json = [dict(dataclasses.asdict(r), recall={k: v.recall for k, v in r.classes.items()}) for r in rows]
        (output / "adaptation.json").write_text(json.dumps({"note": note, "rows": as_json}, indent=1) + "\n")
        (output / "adaptation.md").write_text(markdown_table(rows, cfg.classes, cfg.critical_class, note))
    typer.echo(markdown_table(rows, cfg.classes, cfg.critical_class, note))


if __name__ == "__main__":
    configure_process()
    # Each adapted model is a new ServingModule: its signature is traced once, which TensorFlow warns of
    # as retracing, a different message every time.
    tf.get_logger().setLevel(logging.ERROR)
    app()
