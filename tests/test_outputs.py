"""training/outputs.py: one output per class, then one per out-of-scope cell type of the training split."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tests.helpers import CLASSES, CONFIG, DATA_ROOTS, real_files, write_examples
from training.outputs import Outputs, outputs_of
from training.trainer_module import make_dataset

OTHERS = Path(next(r.path for r in DATA_ROOTS if r.out_of_scope))


def test_the_cell_types_of_the_out_of_scope_examples_become_outputs_after_the_classes(tmp_path):
    files = [real_files("monocyte", 1)[0], *real_files("platelet", 1, OTHERS), *real_files("lymphocyte", 2, OTHERS)]
    write_examples(tmp_path / "train.gz", files)
    outputs = outputs_of([str(tmp_path / "train.gz")], len(CLASSES))
    assert outputs == Outputs(5, ("lymphocyte", "platelet")) and outputs.count == 7
    labels = [int(y) for _, batch in make_dataset([str(tmp_path / "train.gz")], CONFIG.preprocessing, 8, outputs) for y in batch]
    assert labels == [CLASSES.index("monocyte"), 6, 5, 5]
    assert outputs_of([str(tmp_path / "train.gz")], 5).output_of(tf.constant(5, tf.int64), tf.constant("smudge")) == 5


def test_without_out_of_scope_examples_the_outputs_are_the_classes(tmp_path):
    write_examples(tmp_path / "train.gz", [real_files(c, 1)[0] for c in CLASSES])
    outputs = outputs_of([str(tmp_path / "train.gz")], len(CLASSES))
    assert outputs == Outputs(5) and outputs.output_of(tf.constant(3, tf.int64), tf.constant("")) == 3
