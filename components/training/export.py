"""Exports the trained classifier as a SavedModel for TF Serving (image bytes) and TFMA (tf.Examples)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras

from components.training.preprocessing import check_encoded_image, parse_image_batch, preprocess_batch

SERVING_INPUT = "image_bytes"
EXAMPLES_INPUT = "examples"
SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "serving_examples"
PROBABILITIES = "probabilities"
PREDICTED_ONE_HOT = "predicted_one_hot"


class ServingModule(tf.Module):
    """Holds the Keras model and the signatures built around the shared preprocessing function."""

    def __init__(self, model: keras.Model, config: dict[str, Any]):
        super().__init__()
        self.model = model
        self.config = {k: config[k] for k in ("image_size", "central_crop", "max_pixels", "min_side")}
        self.classes = list(config["classes"])
        self.class_names = tf.constant(self.classes)

    def _outputs(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        c = self.config
        shapes = tf.map_fn(
            lambda b: check_encoded_image(b, c["max_pixels"], c["min_side"]),
            image_bytes,
            fn_output_signature=tf.TensorSpec([2], tf.int64),
        )
        with tf.control_dependencies([shapes]):
            images = preprocess_batch(tf.identity(image_bytes), c["image_size"], c["central_crop"])
        probabilities = self.model(images, training=False)
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        n = tf.shape(image_bytes)[0]
        return {
            PROBABILITIES: probabilities,
            "predicted_index": index,
            "predicted_class": tf.gather(self.class_names, index),
            "class_names": tf.tile(self.class_names[tf.newaxis], [n, 1]),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve_images(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(image_bytes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        """For TFMA: adds the argmax decision as a one-hot vector, so per-class metrics are argmax-based."""
        outputs = self._outputs(parse_image_batch(examples))
        outputs[PREDICTED_ONE_HOT] = tf.one_hot(outputs["predicted_index"], len(self.classes))
        return outputs


def export_serving_model(model: keras.Model, config: dict[str, Any], export_dir: str) -> None:
    """Writes a SavedModel with `serving_default` (encoded images) and `serving_examples` signatures.

    `config` is the trainer config: classes, image_size, central_crop, max_pixels, min_side."""
    module = ServingModule(model, config)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={SERVING_SIGNATURE: module.serve_images, EXAMPLES_SIGNATURE: module.serve_examples},
    )
