"""The served model's interface: signature names and their input and output keys, for the exporter, TF
Serving's clients, TFMA, the gate and the audit."""

import dataclasses

import numpy as np

SERVING_SIGNATURE = "serving_default"  # encoded image bytes -> prediction (TF Serving's default)
EXAMPLES_SIGNATURE = "serving_examples"  # serialized tf.Examples -> prediction (TFMA, gate, audit)
EXPLAIN_SIGNATURE = "explain"  # encoded image bytes -> Grad-CAM heatmap
SERVING_INPUT = "image_bytes"
EXAMPLES_INPUT = "examples"

PROBABILITIES = "probabilities"  # [N, classes], calibrated
PREDICTED_INDEX = "predicted_index"
PREDICTED_CLASS = "predicted_class"
CLASS_NAMES = "class_names"  # [N, classes]: the order of PROBABILITIES
PREDICTED_ONE_HOT = "predicted_one_hot"  # examples signature only: TFMA's argmax-based per-class metrics
OUT_OF_SCOPE = "out_of_scope"  # [N] bool: the cell is none of the classes (no alert is raised for it)
OUT_OF_SCOPE_PROBABILITY = "out_of_scope_probability"  # [N]: calibrated; PROBABILITIES are of the classes given in scope
NEEDS_REVIEW = "needs_review"  # calibrated top probability under the review confidence
HEATMAP = "heatmap"  # explain signature: [N, image_size, image_size] in [0, 1]
WINDOW = "window"  # explain signature: [N, 4] top, left, height, width of the part of each image the CNN saw,
#   as fractions of the image's height and width (the heat map covers exactly that part)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """The explain signature's answer for one image."""

    predicted_class: str
    heatmap: np.ndarray  # [image_size, image_size] in [0, 1]
    window: tuple[float, float, float, float]  # WINDOW of this image
    out_of_scope: bool = False  # OUT_OF_SCOPE of this image (False from a model without the output)


def alert_output(critical_class: str) -> str:
    """Name of the served boolean alert output, e.g. `myeloblast_alert`."""
    return f"{critical_class}_alert"
