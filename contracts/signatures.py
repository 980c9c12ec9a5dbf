"""The served model's interface: signature names and their input and output keys, for the exporter, TF
Serving's clients, TFMA, the gate and the audit."""

import dataclasses
import re

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
SITE_SEPARATOR = "-site-"  # a site-adapted model is served as <model>-site-<site> (contracts.site_models)
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
WINDOW = "window"  # explain signature: [N, 4] top, left, height, width of the part of each image the CNN saw,
#   as fractions of the image's height and width (the heat map covers exactly that part)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """The explain signature's answer for one image."""

    predicted_class: str
    heatmap: np.ndarray  # [image_size, image_size] in [0, 1]
    window: tuple[float, float, float, float]  # WINDOW of this image
    out_of_scope: bool = False  # OUT_OF_SCOPE of this image (False from a model without the output)
    model_name: str = ""  # the served model that answered (the base model or a site's adapted model)


def alert_output(critical_class: str) -> str:
    """Name of the served boolean alert output, e.g. `myeloblast_alert`."""
    return f"{critical_class}_alert"


class SiteNameError(ValueError):
    """A site name that cannot name a served model."""


def check_site_name(site: str) -> str:
    if not _SITE_NAME.fullmatch(site) or SITE_SEPARATOR in site:
        raise SiteNameError(f"site {site!r}: use letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)")
    return site


def site_model_name(model_name: str, site: str) -> str:
    """The served name of `site`'s adapted model, e.g. `bloodcell-site-mll-marrow`."""
    return f"{model_name}{SITE_SEPARATOR}{check_site_name(site)}"


def site_of_model(model_name: str, served_name: str) -> str | None:
    """The site a served model name is adapted to; None for the base model (or another model)."""
    prefix = model_name + SITE_SEPARATOR
    return served_name[len(prefix) :] if served_name.startswith(prefix) else None
