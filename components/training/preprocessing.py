"""The one preprocessing function shared by training, evaluation and the served model (no skew)."""

from __future__ import annotations

import tensorflow as tf

from components import features


def preprocess_image(image_bytes: tf.Tensor, image_size: int, central_crop: float = 1.0) -> tf.Tensor:
    """Encoded JPEG/PNG bytes (scalar string) -> float32 [image_size, image_size, 3] in [0, 1].

    Keeps the central `central_crop` fraction of each side (the cell is centred), then resizes.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    if central_crop < 1.0:
        image = tf.image.central_crop(image, central_crop)
    image = tf.image.resize(image, [image_size, image_size], method="area")
    return tf.ensure_shape(image / 255.0, [image_size, image_size, 3])


def preprocess_batch(image_bytes: tf.Tensor, image_size: int, central_crop: float = 1.0) -> tf.Tensor:
    """A batch of encoded images [N] -> float32 [N, image_size, image_size, 3]."""
    return tf.map_fn(
        lambda b: preprocess_image(b, image_size, central_crop),
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


FEATURE_SPEC = {
    features.IMAGE: tf.io.FixedLenFeature([], tf.string),
    features.LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A serialised tf.Example -> (encoded image bytes, label index)."""
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    return parsed[features.IMAGE], parsed[features.LABEL]


def parse_image_batch(serialized: tf.Tensor) -> tf.Tensor:
    """A batch of serialised tf.Examples [N] -> their encoded image bytes [N]."""
    return tf.io.parse_example(serialized, {features.IMAGE: FEATURE_SPEC[features.IMAGE]})[features.IMAGE]
