"""ShortcutAudit: the audit of `shortcut_audit` as a pipeline step, on the run's splits and model."""

import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from bloodcell import ShortcutAuditReport
from components.audit import stress
from components.audit.shortcut_audit import VARIANT_REDUCTION, Predict, Predictions, run_audit
from contracts.artifacts import AUDIT_FILE, SERVING_FORMAT, example_files
from contracts.signatures import PREDICTED_INDEX, SERVING_INPUT, SERVING_SIGNATURE, alert_output
from training.preprocessing import labelled_examples


def load_split(examples_uri: str, split: str) -> tuple[list[bytes], list[int], list[str]]:
    """Encoded images, labels and sites of one split written by ImageExampleGen."""
    encoded, labels, sites = [], [], []
    for image, label, site in labelled_examples(example_files(examples_uri, split)).as_numpy_iterator():
        encoded.append(image)
        labels.append(int(label))
        sites.append(site.decode())
    return encoded, labels, sites


def decode(encoded: Iterable[bytes]) -> Iterator[np.ndarray]:
    """Decodes one image at a time."""
    return (tf.io.decode_image(b, channels=3, expand_animations=False).numpy() for b in encoded)


def decode_reduced(encoded: Iterable[bytes], factor: int) -> Iterator[np.ndarray]:
    """Decodes one image at a time (the train split does not fit in memory decoded) at 1/`factor` of each side:
    a JPEG by its own DCT scaling (Pillow's draft mode, a fraction of the decoding), others whole, then reduced."""
    for data in encoded:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            image.draft("RGB", (size[0] // factor, size[1] // factor))
            pixels = np.asarray(image.convert("RGB"))
        yield stress.reduce(pixels, factor) if pixels.shape[1] == size[0] else pixels


def saved_model_predictor(model_dir: str, critical_class: str, batch_size: int = 64) -> Predict:
    """Runs the exported model's serving signature (the served path) on `batch_size` images at a time, as they
    come: its top class and its critical-class alert for each image."""
    signature = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]

    def answers(encoded: list[bytes]) -> Predictions:
        outputs = signature(**{SERVING_INPUT: tf.constant(encoded)})
        return Predictions(outputs[PREDICTED_INDEX].numpy(), outputs[alert_output(critical_class)].numpy())

    def predict(encoded: Iterable[bytes]) -> Predictions:
        items, batches = iter(encoded), []
        while batch := list(itertools.islice(items, batch_size)):
            batches.append(answers(batch))
        return Predictions.joined(batches)

    return predict


def audit_examples(
    examples_uri: str,
    model_dir: str,
    classes: list[str],
    critical_class: str,
    max_stress_drop: float,
    min_stress_critical_recall: float,
) -> dict[str, Any]:
    """The audit of the SavedModel in `model_dir` on an Examples artifact's train and test splits."""
    train_bytes, train_labels, train_sites = load_split(examples_uri, "train")
    test_bytes, test_labels, test_sites = load_split(examples_uri, "test")
    return run_audit(
        decode_reduced(train_bytes, VARIANT_REDUCTION),
        train_labels,
        train_sites,
        list(decode(test_bytes)),
        test_labels,
        test_sites,
        test_bytes,
        saved_model_predictor(model_dir, critical_class),
        classes,
        critical_class,
        max_stress_drop,
        min_stress_critical_recall,
    )


@component
def ShortcutAudit(  # noqa: N802 - TFX component names are classes
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    classes_json: Parameter[str],
    critical_class: Parameter[str],
    max_stress_drop: Parameter[float],
    min_stress_critical_recall: Parameter[float],
    audit: OutputArtifact[ShortcutAuditReport],
):
    """Colour baseline, per-group and per-site figures and stress variants of the test split, and the classes
    whose training images come from one site only, written to audit.json."""
    result = audit_examples(
        examples.uri,
        os.path.join(model.uri, SERVING_FORMAT),
        json.loads(classes_json),
        critical_class,
        max_stress_drop,
        min_stress_critical_recall,
    )
    tf.io.gfile.makedirs(audit.uri)
    with tf.io.gfile.GFile(os.path.join(audit.uri, AUDIT_FILE), "w") as f:
        json.dump(result, f, indent=1)
