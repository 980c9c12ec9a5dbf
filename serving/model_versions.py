"""The version layout TF Serving polls: <model_base_path>/<integer version>/saved_model.pb."""

from __future__ import annotations

import os

import tensorflow as tf


def served_versions(model_base_path: str) -> list[int]:
    """Version numbers under a model base path that hold a SavedModel, ascending (local paths or gs://)."""
    if not tf.io.gfile.isdir(model_base_path):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(model_base_path)]
    return sorted(
        int(n) for n in names if n.isdigit() and tf.io.gfile.exists(os.path.join(model_base_path, n, "saved_model.pb"))
    )
