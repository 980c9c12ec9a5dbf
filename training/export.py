"""Exports the trained classifier as a SavedModel for TF Serving (image bytes) and TFMA (tf.Examples)."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from contracts.artifacts import EXPORTED_OPERATING_POINT_FILE, EXPORTED_TRAINER_CONFIG_FILE, write_json
from contracts.signatures import (
    CLASS_NAMES,
    EXAMPLES_INPUT,
    EXAMPLES_SIGNATURE,
    EXPLAIN_SIGNATURE,
    HEATMAP,
    NEEDS_REVIEW,
    OUT_OF_SCOPE,
    OUT_OF_SCOPE_PROBABILITY,
    PREDICTED_CLASS,
    PREDICTED_INDEX,
    PREDICTED_ONE_HOT,
    PROBABILITIES,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    WINDOW,
    alert_output,
)
from training.operating_point import OperatingPoint
from training.preprocessing import check_encoded_image, parse_image_batch, preprocess_batch
from training.test_time_views import averaged_probabilities
from training.trainer_config import TrainerConfig

# Neutral operating point of a model that was not calibrated (tests): probabilities as the network gives
# them, alert exactly when the critical class is the argmax, out of scope when that is likelier than not.
UNCALIBRATED = OperatingPoint(temperature=1.0, threshold=0.5, review_confidence=0.0, out_of_scope_threshold=0.5)


class ServingModule(tf.Module):
    """Holds the Keras model and the signatures built around the shared preprocessing function. Every answer
    says whether the cell is out of scope (none of the classes); the critical alert is never raised for one."""

    def __init__(self, model: keras.Model, config: TrainerConfig, operating_point: OperatingPoint):
        super().__init__()
        self.model = model
        self.config = config
        self.classes = list(config.classes)
        self.class_names = tf.constant(self.classes)
        self.critical_class = config.critical_class
        self.critical_index = config.critical_index
        self.operating_point = operating_point
        self.learnt_out_of_scope = model.output_shape[-1] > len(self.classes)  # one output more: out of scope
        last_conv = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)][-1]
        self.features_and_scores = keras.Model(model.inputs, [last_conv.output, model.output])

    def _images(self, image_bytes: tf.Tensor, request_caps: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
        """Checks every image's header (format, size) before decoding any, then preprocesses them:
        (images, windows), as `preprocess_batch`. With
        `request_caps` (the signatures clients call) a request over the image-count or total-pixel cap
        fails whole with InvalidArgument before anything is decoded; TFMA's batches of examples are not capped."""
        c, views = self.config, self.config.preprocessing
        checks = []
        if request_caps:
            count = tf.size(image_bytes, out_type=tf.int64)
            checks.append(
                tf.debugging.assert_less_equal(
                    count, tf.constant(c.max_request_images, tf.int64),
                    message=f"request over max_request_images={c.max_request_images}: send fewer images per request",
                )
            )  # fmt: skip
        with tf.control_dependencies(checks):
            shapes = tf.map_fn(
                # Examples were size-checked at ingestion (ingestion.max_pixels); requests are checked here.
                lambda b: check_encoded_image(b, c.max_image_pixels if request_caps else 2**62, c.min_side),
                image_bytes,
                fn_output_signature=tf.TensorSpec([2], tf.int64),
            )
        if request_caps:
            checks.append(
                tf.debugging.assert_less_equal(
                    tf.reduce_sum(shapes[:, 0] * shapes[:, 1]), tf.constant(c.max_request_pixels, tf.int64),
                    message=f"request over max_request_pixels={c.max_request_pixels}: send fewer or smaller images",
                )
            )  # fmt: skip
        with tf.control_dependencies([shapes, *checks]):
            return preprocess_batch(tf.identity(image_bytes), views)

    def _in_scope(self, probabilities: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(the classes' probabilities given in scope, the out-of-scope probability: the sum of the outputs after
        the classes; 0 for a model without them): `operating_point.in_scope` in the graph."""
        n = len(self.classes)
        if not self.learnt_out_of_scope:
            return probabilities, tf.zeros_like(probabilities[:, 0])
        kept = probabilities[:, :n]
        return kept / tf.maximum(tf.reduce_sum(kept, axis=-1, keepdims=True), 1e-12), tf.reduce_sum(probabilities[:, n:], axis=-1)

    def _outputs(self, image_bytes: tf.Tensor, request_caps: bool = True) -> dict[str, tf.Tensor]:
        images, _ = self._images(image_bytes, request_caps)
        return self._answers(images)

    def _answers(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The served answers for preprocessed images."""
        point = self.operating_point
        raw = averaged_probabilities(self.model, images, self.config.preprocessing.test_time_views)
        calibrated = tf.nn.softmax(tf.math.log(tf.maximum(raw, 1e-12)) / point.temperature, axis=-1)
        probabilities, out_probability = self._in_scope(calibrated)
        out_of_scope = out_probability > point.out_of_scope_threshold
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        n = tf.shape(images)[0]
        critical = tf.logical_or(probabilities[:, self.critical_index] >= point.threshold, tf.equal(index, self.critical_index))
        return {
            PROBABILITIES: probabilities,
            PREDICTED_INDEX: index,
            PREDICTED_CLASS: tf.gather(self.class_names, index),
            CLASS_NAMES: tf.tile(self.class_names[tf.newaxis], [n, 1]),
            alert_output(self.critical_class): tf.logical_and(critical, tf.logical_not(out_of_scope)),
            OUT_OF_SCOPE: out_of_scope,
            OUT_OF_SCOPE_PROBABILITY: out_probability,
            NEEDS_REVIEW: tf.reduce_max(probabilities, axis=-1) < point.review_confidence,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve_images(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(image_bytes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def explain_images(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Grad-CAM: where the last conv block's features raised the predicted class's log-probability,
        as a [N, image_size, image_size] map in [0, 1] over the preprocessed image (the crop fed to the CNN).
        The class is the served prediction (all test-time views); the map is drawn on the image as it is.
        WINDOW says where in each image that crop lies; OUT_OF_SCOPE, whether the cell is none of the classes
        (the map then shows what made it look most like the predicted class)."""
        images, windows = self._images(image_bytes)
        answers = self._answers(images)
        index = answers[PREDICTED_INDEX]
        with tf.GradientTape() as tape:
            features, probabilities = self.features_and_scores(images, training=False)
            score = tf.math.log(tf.gather(probabilities, index, batch_dims=1) + 1e-12)
        gradients = tape.gradient(score, features)
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = cam / (tf.reduce_max(cam, axis=[1, 2, 3], keepdims=True) + 1e-12)
        size = self.config.preprocessing.image_size
        return {
            HEATMAP: tf.image.resize(cam, [size, size], method="bilinear")[..., 0],
            PREDICTED_CLASS: answers[PREDICTED_CLASS],
            OUT_OF_SCOPE: answers[OUT_OF_SCOPE],
            WINDOW: windows,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        """For TFMA: adds the argmax decision as a one-hot vector, so per-class metrics are argmax-based."""
        outputs = self._outputs(parse_image_batch(examples), request_caps=False)
        outputs[PREDICTED_ONE_HOT] = tf.one_hot(outputs[PREDICTED_INDEX], len(self.classes))
        return outputs


def export_serving_model(
    model: keras.Model, config: TrainerConfig, export_dir: str, operating_point: OperatingPoint = UNCALIBRATED
) -> None:
    """Writes a SavedModel with `serving_default` (encoded images) and `serving_examples` signatures, and
    the operating point and the trainer config beside it (assets.extra/)."""
    module = ServingModule(model, config, operating_point)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            SERVING_SIGNATURE: module.serve_images,
            EXAMPLES_SIGNATURE: module.serve_examples,
            EXPLAIN_SIGNATURE: module.explain_images,
        },
    )
    write_json(export_dir, EXPORTED_OPERATING_POINT_FILE, operating_point.as_dict())
    write_json(export_dir, EXPORTED_TRAINER_CONFIG_FILE, config.as_dict())
