"""Ablation figures for docs/robustness.md: trains with the Trainer's own code on a pipeline run's split,
with config overrides, then runs the shortcut audit's own code on the exported SavedModel.

    .venv/bin/python -m benchmarks.train_and_audit \\
        outputs/pipelines/bloodcell/ImageExampleGen/examples/<id> --output /tmp/ablation \\
        --set augmentation.grayscale=0.25

Same split, same training and audit as `bloodcell run`, without the rest of the pipeline. Prints the audit
and one markdown table row; writes <output>/model, <output>/run (history, operating point), audit.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import List, Optional

import typer

from cli.options import CONFIG_OPTION, load_config_or_exit
from components.audit.audit_component import audit_examples
from components.summary_text import audit_lines
from contracts.artifacts import AUDIT_FILE, example_files
from pipelines.configs import trainer_config
from training.trainer_module import train

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def table_row(label: str, audit: dict) -> str:
    """One row: clean accuracy and critical recall, then each stress variant with its drop, its critical recall
    and the share of critical images the served alert is raised for."""
    cells = [label, f"{audit['clean']['accuracy']:.4f}", f"{audit['clean']['critical_recall']:.4f}"]
    for variant in audit["stress"].values():
        cells.append(
            f"{variant['accuracy']:.4f} (drop {variant['drop'] * 100:.1f}, recall {variant['critical_recall']:.2f}, "
            f"alert {variant['critical_alert_recall']:.2f})"
        )
    return "| " + " | ".join(cells) + " |"


@app.command()
def main(
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="ImageExampleGen output (Split-*)."),
    output: Path = typer.Option(..., "--output", help="Folder for the model, history and audit.json."),
    config: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, repeatable."),
) -> None:
    cfg = load_config_or_exit(config, overrides)
    start = time.monotonic()
    history = train(
        example_files(str(examples), "train"),
        example_files(str(examples), "eval"),
        trainer_config(cfg),
        str(output / "model"),
        str(output / "run"),
    )
    trained_min = (time.monotonic() - start) / 60
    audit = audit_examples(
        str(examples),
        str(output / "model"),
        cfg.classes,
        cfg.critical_class,
        cfg.audit.max_stress_drop,
        cfg.audit.min_stress_critical_recall,
    )
    (output / AUDIT_FILE).write_text(json.dumps(audit, indent=1))
    typer.echo("\n".join(audit_lines(audit, cfg.critical_class)))
    typer.echo(f"{len(history)} epochs, trained in {trained_min:.1f} min, with --set {' '.join(overrides or [])}")
    typer.echo(table_row(" ".join(overrides or ["config as committed"]), audit))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")  # one line per epoch
    app()
