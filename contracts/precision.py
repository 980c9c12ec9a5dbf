"""bfloat16 where the CPU computes it natively: oneDNN's rewrite of float32 graphs (TensorFlow's grappler pass
`auto_mixed_precision_onednn_bfloat16`) runs convolutions and matrix products in bfloat16 and keeps sums,
softmax and the weights in float32. On CPUs without AMX or AVX-512 BF16 oneDNN would emulate bfloat16, slower
than float32: there everything stays float32. The models are saved in float32 either way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf

BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute bfloat16 natively
PRECISIONS = ("auto", "float32")  # auto: bfloat16 where the CPU has it, else float32


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_FLAGS)


def set_bfloat16_rewrite(on: bool) -> None:
    """Turns the rewrite on or off for the graphs this process runs from now on (each is rewritten when first run)."""
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": on})


def enable_bfloat16(precision: str) -> bool:
    """For a process that only serves models (`serving.precision`): the rewrite on for good where `precision` is
    auto and the CPU has bfloat16; whether it is on."""
    on = precision == "auto" and cpu_has_bfloat16()
    if on:
        set_bfloat16_rewrite(True)
    return on


@contextlib.contextmanager
def bfloat16_rewrite(precision: str) -> Iterator[bool]:
    """`enable_bfloat16` for the graphs first run inside the block (`training.precision`: the training steps and
    their validation), off again after it: the operating point and the export that follow run in float32."""
    on = enable_bfloat16(precision)
    try:
        yield on
    finally:
        if on:
            set_bfloat16_rewrite(False)
