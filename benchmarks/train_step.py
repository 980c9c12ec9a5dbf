"""What oneDNN's CPU kernels change on this machine: the Trainer's own input pipeline and CNN, timed for some
steps in two fresh processes, TF_ENABLE_ONEDNN_OPTS=0 and =1 (`bloodcell` sets 1: cli/run_log.py).

    .venv/bin/python -m benchmarks.train_step outputs/pipelines/bloodcell/ImageExampleGen/examples/<id>

Each process builds the class x site balanced, augmented training stream of the split and the configured
model; one `fit` runs an untimed warm-up epoch of `--steps` steps, then `--epochs` timed ones. It prints
seconds per step and the time of one full epoch of the split at that pace. Run it alone on the cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from cli.options import CONFIG_OPTION, load_config_or_exit

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def seconds_per_step(examples: Path, config: Path, overrides: list[str], steps: int, epochs: int) -> tuple[float, int]:
    """(seconds per training step after a warm-up epoch, steps of one full epoch), in this process."""
    import tf_keras as keras

    from contracts.artifacts import example_files
    from pipelines.configs import trainer_config
    from training.trainer_module import training_stream_and_model

    trainer = trainer_config(load_config_or_exit(config, overrides))
    dataset, full_epoch, model = training_stream_and_model(example_files(str(examples), "train"), trainer)
    ends: list[float] = []
    noting_ends = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.monotonic()))
    model.fit(dataset, steps_per_epoch=steps, epochs=1 + epochs, verbose=0, callbacks=[noting_ends])
    return (ends[-1] - ends[0]) / (steps * epochs), full_epoch


@app.command()
def main(
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="ImageExampleGen output (Split-*)."),
    config: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, repeatable."),
    steps: int = typer.Option(60, min=1, help="Steps per timed epoch."),
    epochs: int = typer.Option(2, min=1, help="Timed epochs."),
    child: bool = typer.Option(False, hidden=True),
) -> None:
    """Times the Trainer's training steps without and with oneDNN's kernels, each in a fresh process."""
    if child:
        per_step, full_epoch = seconds_per_step(examples, config, overrides or [], steps, epochs)
        typer.echo(f"{per_step:.4f} {full_epoch}")
        return
    load_config_or_exit(config, overrides)  # a bad config or override is reported here, once
    args = [str(examples), "--config", str(config), "--steps", str(steps), "--epochs", str(epochs), "--child"]
    args += [f"--set={o}" for o in overrides or []]
    for setting in ("0", "1"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.train_step", *args], env=env, capture_output=True, text=True
        )
        if done.returncode:
            typer.echo(f"the timing process with TF_ENABLE_ONEDNN_OPTS={setting} failed:\n{done.stderr[-3000:]}", err=True)
            raise typer.Exit(1)
        per_step, full_epoch = done.stdout.split()[-2:]
        per_step, full_epoch = float(per_step), int(full_epoch)
        typer.echo(
            f"TF_ENABLE_ONEDNN_OPTS={setting}: {per_step:.3f} s per step, {per_step * full_epoch:.0f} s per epoch of "
            f"{full_epoch} steps (training steps only, without the per-epoch validation)"
        )


if __name__ == "__main__":
    app()
