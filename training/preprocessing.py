"""The one preprocessing function shared by training, evaluation and the served model (no skew)."""

from __future__ import annotations

import tensorflow as tf

from contracts import features


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


def _png_shape(image_bytes: tf.Tensor) -> tf.Tensor:
    """[height, width] from a PNG's IHDR chunk (big-endian uint32 width, height at bytes 16..24)."""
    raw = tf.io.decode_raw(tf.strings.substr(image_bytes, 16, 8), tf.uint8, fixed_length=8)
    width_height = tf.reduce_sum(tf.reshape(tf.cast(raw, tf.int64), [2, 4]) * [2**24, 2**16, 2**8, 1], axis=1)
    return tf.reverse(width_height, [0])


def check_encoded_image(image_bytes: tf.Tensor, max_pixels: int, min_side: int) -> tf.Tensor:
    """Reads a JPEG or PNG's size from its header, without decoding, and fails with InvalidArgument on
    other formats, on images over `max_pixels` (decompression bombs) and on sides under `min_side`.
    Lets the served model refuse such input itself, in this project's server and in TF Serving."""
    is_png = tf.equal(tf.strings.substr(image_bytes, 0, 8), PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 3), JPEG_SIGNATURE)
    known = tf.debugging.assert_equal(tf.logical_or(is_png, is_jpeg), True, message="not a JPEG or PNG image")
    with tf.control_dependencies([known]):
        shape = tf.cond(
            is_png, lambda: _png_shape(image_bytes), lambda: tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)
        )
    checks = [
        tf.debugging.assert_less_equal(
            shape[0] * shape[1], tf.constant(max_pixels, tf.int64), message=f"image over max_image_pixels={max_pixels}"
        ),
        tf.debugging.assert_greater_equal(
            tf.reduce_min(shape), tf.constant(min_side, tf.int64), message=f"image side under min_side={min_side}"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(shape)


FEATURE_SPEC = {
    features.IMAGE: tf.io.FixedLenFeature([], tf.string),
    features.LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A serialised tf.Example -> (encoded image bytes, label index)."""
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    return parsed[features.IMAGE], parsed[features.LABEL]


SITE_SPEC = {features.SITE: tf.io.FixedLenFeature([], tf.string, default_value="")}


def parse_site(serialized: tf.Tensor) -> tf.Tensor:
    """A serialised tf.Example -> its site ("" when the example has none)."""
    return tf.io.parse_single_example(serialized, SITE_SPEC)[features.SITE]


def parse_image_batch(serialized: tf.Tensor) -> tf.Tensor:
    """A batch of serialised tf.Examples [N] -> their encoded image bytes [N]."""
    return tf.io.parse_example(serialized, {features.IMAGE: FEATURE_SPEC[features.IMAGE]})[features.IMAGE]
