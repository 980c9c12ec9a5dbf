"""Grad-CAM explanations: the model's `explain` signature, drawn as a heat-map overlay on the image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from contracts.signatures import (
    EXPLAIN_SIGNATURE,
    HEATMAP,
    OUT_OF_SCOPE,
    PREDICTED_CLASS,
    SERVING_INPUT,
    WINDOW,
    Explanation,
)
from serving.client import require_window

ALPHA = 0.45  # weight of the heat map over the image
MAX_OVERLAY_SIDE = 1024  # longest side of the drawn overlay, pixels: larger images are drawn scaled down


def explain_with_saved_model(model_dir: Path, image: bytes) -> Explanation:
    """Runs the SavedModel's `explain` signature on one encoded image in this process."""
    import tensorflow as tf

    outputs = tf.saved_model.load(str(model_dir)).signatures[EXPLAIN_SIGNATURE](**{SERVING_INPUT: tf.constant([image])})
    require_window(outputs)
    window = tuple(float(v) for v in outputs[WINDOW].numpy()[0])
    outside = OUT_OF_SCOPE in outputs and bool(outputs[OUT_OF_SCOPE].numpy()[0])
    return Explanation(outputs[PREDICTED_CLASS].numpy()[0].decode(), outputs[HEATMAP].numpy()[0], window, outside)


def overlay_png(image: bytes | Image.Image, explanation: Explanation) -> bytes:
    """The image (encoded, or decoded RGB) with the heat map (jet colours) laid over the window the CNN saw,
    as PNG at the image's size, or scaled down to MAX_OVERLAY_SIDE on its longest side."""
    picture = Image.open(io.BytesIO(image)).convert("RGB") if isinstance(image, bytes) else image.convert("RGB")
    picture.thumbnail((MAX_OVERLAY_SIDE, MAX_OVERLAY_SIDE))
    width, height = picture.size
    top_f, left_f, height_f, width_f = explanation.window
    top, left = round(top_f * height), round(left_f * width)
    crop_h, crop_w = max(1, min(round(height_f * height), height - top)), max(1, min(round(width_f * width), width - left))
    heatmap = np.clip(explanation.heatmap, 0, 1)
    heat = Image.fromarray(np.uint8(heatmap * 255)).resize((crop_w, crop_h), Image.Resampling.BILINEAR)
    coloured = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    region = np.asarray(picture, dtype=np.float64)[top : top + crop_h, left : left + crop_w] / 255.0
    blended = np.asarray(picture).copy()
    blended[top : top + crop_h, left : left + crop_w] = np.uint8(255 * ((1 - ALPHA) * region + ALPHA * coloured))
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    return buffer.getvalue()
