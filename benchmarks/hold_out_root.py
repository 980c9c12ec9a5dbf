"""Screening figures for docs/robustness.md: trains with the Trainer's own code on a pipeline run's split
without one data root, and scores that root per class with the exported model's `serving_examples`.

    .venv/bin/python -m benchmarks.hold_out_root \\
        outputs/pipelines/bloodcell/ImageExampleGen/examples/<id> munich-extra --output /tmp/hold-out \\
        --set preprocessing.cell_window=6

With `--onboard K`, the first K images (by path) of each class of ROOT are trained on and the rest scored:
what a lab gains by labelling K images per class from its own scanner.

What `bloodcell run --hold-out-site ROOT` measures, without ingestion, TFMA and the rest of the pipeline (about
half the time): the rest of the split is the run's own, every image of ROOT (in any split) is held out.
Prints per-class recall with the classes the wrong answers went to, on the held-out root and on the rest
of the test split.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf
import typer

from cli.options import CONFIG_OPTION, load_config_or_exit
from contracts import features
from contracts.artifacts import example_files
from contracts.signatures import EXAMPLES_INPUT, EXAMPLES_SIGNATURE, PREDICTED_INDEX
from pipelines.configs import trainer_config
from training.trainer_module import train

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def read_split(examples: Path, split: str) -> list[tf.train.Example]:
    files = example_files(str(examples), split)
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def relpath(example: tf.train.Example) -> str:
    """An example's image path relative to the data roots' parent: `<root>/<class>/<file>`."""
    return example.features.feature[features.RELPATH].bytes_list.value[0].decode()


def root_of(example: tf.train.Example) -> str:
    """The data root folder an example came from (first part of its relative path)."""
    return relpath(example).split("/", 1)[0]


def onboard(held_out: list[tf.train.Example], per_class: int) -> tuple[list[tf.train.Example], list[tf.train.Example]]:
    """(trained on, scored): the first `per_class` held-out examples of each class by path, and the rest."""
    ordered = sorted(held_out, key=relpath)
    taken: collections.Counter[int] = collections.Counter()
    trained, scored = [], []
    for example in ordered:
        label = example.features.feature[features.LABEL].int64_list.value[0]
        (trained if taken[label] < per_class else scored).append(example)
        taken[label] += 1
    return trained, scored


def write_split(path: Path, examples: list[tf.train.Example]) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    return [str(path)]


def answers_in_batches(
    serve_examples: Callable[[tf.Tensor], dict[str, tf.Tensor]], examples: list[tf.train.Example]
) -> dict[str, np.ndarray]:
    """A `serving_examples` function's answers (every output) for the examples, in order, 64 at a time: the
    exported signature, or `ServingModule.serve_examples` of a model in memory."""
    batches = [examples[i : i + 64] for i in range(0, len(examples), 64)]
    answers = [serve_examples(tf.constant([e.SerializeToString() for e in b])) for b in batches]
    return {key: np.concatenate([a[key].numpy() for a in answers]) for key in answers[0]}


def served_outputs(model_dir: Path, examples: list[tf.train.Example]) -> dict[str, np.ndarray]:
    """The exported model's `serving_examples` answers (every output) for the examples, in order."""
    signature = tf.saved_model.load(str(model_dir)).signatures[EXAMPLES_SIGNATURE]
    return answers_in_batches(lambda batch: signature(**{EXAMPLES_INPUT: batch}), examples)


def recall_lines(title: str, examples: list[tf.train.Example], model_dir: Path, classes: list[str]) -> list[str]:
    labels = np.array([e.features.feature[features.LABEL].int64_list.value[0] for e in examples])
    guesses = served_outputs(model_dir, examples)[PREDICTED_INDEX]
    lines = [f"{title}: {len(labels)} images, accuracy {np.mean(labels == guesses):.4f}"]
    for index, name in enumerate(classes):
        mine = labels == index
        if mine.any():
            wrong = collections.Counter(classes[g] for g in guesses[mine] if g != index)
            right = int((guesses[mine] == index).sum())
            lines.append(f"  {name:15s} {right:5d} / {int(mine.sum()):5d} = {right / mine.sum():.3f}  wrong: {dict(wrong)}")
    return lines


@app.command()
def main(
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="ImageExampleGen output (Split-*)."),
    root: str = typer.Argument(..., help="Folder name of the data root to hold out, e.g. munich-extra."),
    output: Path = typer.Option(..., "--output", help="Folder for the kept splits, model and history."),
    per_class: int = typer.Option(0, "--onboard", min=0, help="Images per class of ROOT to train on (first by path)."),
    config: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, repeatable."),
) -> None:
    cfg = load_config_or_exit(config, overrides)
    splits = {split: read_split(examples, split) for split in ("train", "eval", "test")}
    held_out = [e for split in splits.values() for e in split if root_of(e) == root]
    if not held_out:
        typer.echo(f"error: no image of the split comes from a data root named {root!r}", err=True)
        raise typer.Exit(2)
    kept = {split: [e for e in rows if root_of(e) != root] for split, rows in splits.items()}
    onboarded, held_out = onboard(held_out, per_class)
    kept["train"] += onboarded
    start = time.monotonic()
    history = train(
        write_split(output / "train.gz", kept["train"]),
        write_split(output / "eval.gz", kept["eval"]),
        trainer_config(cfg),
        str(output / "model"),
        str(output / "run"),
    )
    classes = list(cfg.classes)
    minutes = (time.monotonic() - start) / 60
    typer.echo(f"{len(history)} epochs, trained in {minutes:.1f} min, with --set {' '.join(overrides or [])}")
    if onboarded:
        typer.echo(f"onboarded: {len(onboarded)} images of {root} trained on ({per_class} per class)")
    typer.echo("\n".join(recall_lines("test split without it", kept["test"], output / "model", classes)))
    typer.echo("\n".join(recall_lines(f"held out {root}", held_out, output / "model", classes)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")  # one line per epoch
    app()
