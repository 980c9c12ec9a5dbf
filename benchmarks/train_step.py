"""Where a training step's time goes: the Trainer's own input pipeline and CNN, timed for some steps in fresh
processes: without oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS=0, float32), with them in float32, and with them
at `training.precision: auto` (bfloat16 where the CPU has AMX or AVX-512 BF16). `bloodcell` sets oneDNN on
(cli/run_log.py).

    .venv/bin/python -m benchmarks.train_step outputs/pipelines/bloodcell/ImageExampleGen/examples/<id>

Each process builds the class x site balanced, augmented training stream of the split (decoded images cached in
memory at the training resolution; per image another site's magnification and look, then the batch augmenter)
and the configured model; it times the stream alone for `--steps` batches, then one `fit` runs an untimed
warm-up epoch of `--steps` steps and `--epochs` timed ones. It prints seconds per step and the time of one
full epoch of the split at that pace. Run it alone on the cores.
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


def seconds_per_step(
    examples: Path, config: Path, overrides: list[str], steps: int, epochs: int
) -> tuple[float, float, int, bool]:
    """(seconds per batch of the input stream alone, seconds per training step after a warm-up epoch, steps of
    one full epoch, whether the steps ran in bfloat16), in this process."""
    import tf_keras as keras

    from contracts.artifacts import example_files
    from contracts.precision import bfloat16_rewrite
    from pipelines.configs import trainer_config
    from training.trainer_module import training_stream_and_model

    trainer = trainer_config(load_config_or_exit(config, overrides))
    dataset, full_epoch, model = training_stream_and_model(example_files(str(examples), "train"), trainer)
    batches = iter(dataset)
    next(batches)
    start = time.monotonic()
    for _ in range(steps):
        next(batches)
    stream = (time.monotonic() - start) / steps
    ends: list[float] = []
    noting_ends = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.monotonic()))
    with bfloat16_rewrite(trainer.training.precision) as in_bfloat16:
        model.fit(dataset, steps_per_epoch=steps, epochs=1 + epochs, verbose=0, callbacks=[noting_ends])
    return stream, (ends[-1] - ends[0]) / (steps * epochs), full_epoch, in_bfloat16


@app.command()
def main(
    examples: Path = typer.Argument(..., exists=True, file_okay=False, help="ImageExampleGen output (Split-*)."),
    config: Path = CONFIG_OPTION,
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE, repeatable."),
    steps: int = typer.Option(60, min=1, help="Steps per timed epoch."),
    epochs: int = typer.Option(2, min=1, help="Timed epochs."),
    child: bool = typer.Option(False, hidden=True),
) -> None:
    """Times the Trainer's input stream and training steps without and with oneDNN's kernels, and in bfloat16
    where the CPU has it, each in a fresh process."""
    if child:
        stream, per_step, full_epoch, in_bfloat16 = seconds_per_step(examples, config, overrides or [], steps, epochs)
        typer.echo(f"{stream:.4f} {per_step:.4f} {full_epoch} {int(in_bfloat16)}")
        return
    load_config_or_exit(config, overrides)  # a bad config or override is reported here, once
    args = [str(examples), "--config", str(config), "--steps", str(steps), "--epochs", str(epochs), "--child"]
    args += [f"--set={o}" for o in overrides or []]
    for onednn, precision in (("0", "float32"), ("1", "float32"), ("1", "auto")):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
        name = f"TF_ENABLE_ONEDNN_OPTS={onednn}, training.precision={precision}"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.train_step", *args, f"--set=training.precision={precision}"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode:
            typer.echo(f"the timing process with {name} failed:\n{done.stderr[-3000:]}", err=True)
            raise typer.Exit(1)
        stream, per_step, full_epoch, in_bfloat16 = done.stdout.split()[-4:]
        stream, per_step, full_epoch = float(stream), float(per_step), int(full_epoch)
        typer.echo(
            f"{name}{' (bfloat16)' if in_bfloat16 == '1' else ''}: {per_step:.3f} s per step, {per_step * full_epoch:.0f} s "
            f"per epoch of {full_epoch} steps (without the per-epoch validation); the input stream alone {stream:.3f} s "
            "per batch"
        )


if __name__ == "__main__":
    app()
