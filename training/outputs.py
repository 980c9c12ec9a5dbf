"""The model's outputs: one per class, then one per out-of-scope cell type its training split holds (outlier
exposure with each cell type an output of its own: it caught more of them than one output for all, in
docs/results.md). The served out-of-scope probability is the sum of the cell types' outputs."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from training.preprocessing import training_examples


@dataclasses.dataclass(frozen=True)
class Outputs:
    classes: int  # outputs 0 .. classes - 1: the classes
    cell_types: tuple[str, ...] = ()  # the out-of-scope outputs after them, in this order

    @property
    def count(self) -> int:
        return self.classes + len(self.cell_types)

    def output_of(self, label: tf.Tensor, cell_type: tf.Tensor) -> tf.Tensor:
        """An example's output index: its class, or its cell type's output (a cell type training did not have:
        the first; every out-of-scope output counts alike when served)."""
        if not self.cell_types:
            return label
        found = tf.cast(tf.where(tf.equal(tf.constant(self.cell_types), cell_type)), tf.int64)
        position = tf.cond(tf.size(found) > 0, lambda: found[0, 0], lambda: tf.constant(0, tf.int64))
        return tf.where(label < self.classes, label, self.classes + position)


def outputs_of(files: list[str], classes: int) -> Outputs:
    """The outputs a model trained on these tf.Example files needs: the classes, and the cell types of the
    examples labelled out of scope (label `classes`), sorted."""
    cell_types = {
        cell.decode()
        for _, label, _, cell in training_examples(files).as_numpy_iterator()
        if label >= classes
    }
    return Outputs(classes, tuple(sorted(cell_types)))
