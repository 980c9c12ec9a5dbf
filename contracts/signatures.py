"""The served model's interface: signature names and their input and output keys, for the exporter, TF
Serving's clients, TFMA, the gate and the audit."""

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
NEEDS_REVIEW = "needs_review"  # calibrated top probability under the review confidence
HEATMAP = "heatmap"  # explain signature: [N, image_size, image_size] in [0, 1]


def alert_output(critical_class: str) -> str:
    """Name of the served boolean alert output, e.g. `myeloblast_alert`."""
    return f"{critical_class}_alert"
