"""What another out-of-scope threshold would do to a trained model: per threshold, the share called out of
scope of the five classes' eval and test images (per site), of the test blasts (per site), and of each
out-of-scope cell type at each site (test split). The served model calls out of scope over the threshold the
Trainer chose (`screening.out_of_scope_budget`); this shows what that budget trades.

    .venv/bin/python -m benchmarks.out_of_scope_thresholds <run>/ImageExampleGen/examples/<id> \\
        <run>/Trainer/model/<id>/Format-Serving [--threshold 0.5 --threshold 0.2 ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from cli.options import CONFIG_OPTION, load_config_or_exit
from components.out_of_scope_scores import answers
from contracts.artifacts import example_files, out_of_scope_split
from contracts.signatures import OUT_OF_SCOPE_PROBABILITY

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
DEFAULT_THRESHOLDS = [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]


def shares(rows: dict[str, np.ndarray], threshold: float, groups: dict[str, np.ndarray]) -> dict[str, float]:
    """The share of each group's rows whose out-of-scope probability is over the threshold."""
    over = rows[OUT_OF_SCOPE_PROBABILITY] > threshold
    return {name: float(over[chosen].mean()) for name, chosen in groups.items() if chosen.any()}


def threshold_table(
    eval_rows: dict[str, np.ndarray], test_rows: dict[str, np.ndarray], outside: dict[str, np.ndarray],
    thresholds: list[float], critical_index: int,
) -> str:  # fmt: skip
    """One Markdown row per threshold (see the module)."""
    sites = sorted(set(test_rows["site"]))
    blasts = {s: (test_rows["site"] == s) & (test_rows["label"] == critical_index) for s in sites}
    pairs = sorted(set(zip(outside["cell_type"], outside["site"], strict=True)))
    cells = {f"{c} @ {s}": (outside["cell_type"] == c) & (outside["site"] == s) for c, s in pairs}
    lines = [
        "| threshold | in-scope eval | in-scope test: " + " / ".join(sites) + " | test blasts: " + " / ".join(sites)
        + " | " + " | ".join(cells) + " |",
        "|---|---|---|---|" + "---|" * len(cells),
    ]  # fmt: skip
    for t in thresholds:
        evaluated = shares(eval_rows, t, {"all": np.ones(len(eval_rows["site"]), bool)})["all"]
        inside = shares(test_rows, t, {s: test_rows["site"] == s for s in sites})
        blast = shares(test_rows, t, blasts)
        other = shares(outside, t, cells)
        lines.append(
            f"| {t:g} | {evaluated:.3f} | " + " / ".join(f"{inside[s]:.3f}" for s in sites) + " | "
            + " / ".join(f"{blast[s]:.3f}" if s in blast else "-" for s in sites) + " | "
            + " | ".join(f"{other[c]:.2f}" for c in cells) + " |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


@app.command()
def main(
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="ImageExampleGen output with out-of-scope splits."),
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="The run's exported model (Format-Serving)."),
    thresholds: Optional[List[float]] = typer.Option(None, "--threshold", help="Threshold to try (repeatable)."),
    config: Path = CONFIG_OPTION,
) -> None:
    cfg = load_config_or_exit(config)
    try:
        files = {s: example_files(str(examples), s) for s in ("eval", "test", out_of_scope_split("test"))}
    except FileNotFoundError as err:
        typer.echo(f"error: {err} (a run without an out-of-scope root has no out-of-scope split)", err=True)
        raise typer.Exit(2) from None
    rows = {s: answers(str(model), f, cfg.critical_class) for s, f in files.items()}
    table = threshold_table(
        rows["eval"], rows["test"], rows[out_of_scope_split("test")], thresholds or DEFAULT_THRESHOLDS, cfg.critical_index
    )
    typer.echo(table)


if __name__ == "__main__":
    app()
