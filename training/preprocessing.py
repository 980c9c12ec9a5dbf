"""The one preprocessing function shared by training, evaluation and the served model (no skew)."""

from __future__ import annotations

import tensorflow as tf

from contracts import features
from contracts.config import Preprocessing
from training.stains import HED_FROM_RGB

WINDOW_GRID = 64  # side of the thumbnail the cell window is found on
MIN_WINDOW = 0.4  # smallest cell window, fraction of the image's shorter side


def cell_window(image: tf.Tensor, spread_multiple: float) -> tf.Tensor:
    """The square around the central cell of a decoded image [H, W, 3]: [top, left, side] in pixels (int32).

    The nucleus is where the haematoxylin density (colour deconvolution of a thumbnail) is over halfway
    from the image's median to its 99th percentile; pixels are weighted towards the image centre (the cell
    to classify is centred). The window is centred on that nucleus and its side is `spread_multiple` times
    the nucleus's root-mean-square radius, between MIN_WINDOW and all of the shorter side: every cell is
    seen at about the same size whatever the scanner's magnification.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    thumbnail = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [WINDOW_GRID, WINDOW_GRID], method="area")
    density = -tf.math.log(tf.clip_by_value(thumbnail, 1 / 255, 1.0))
    haematoxylin = tf.reshape(tf.tensordot(density, HED_FROM_RGB[:, 0], 1), [-1])
    ranked = tf.sort(haematoxylin)
    median, high = ranked[WINDOW_GRID**2 // 2], ranked[WINDOW_GRID**2 * 99 // 100]
    nucleus = tf.cast(haematoxylin > median + 0.5 * (high - median), tf.float32)
    centres = (tf.range(WINDOW_GRID, dtype=tf.float32) + 0.5) / WINDOW_GRID
    y = tf.reshape(tf.tile(centres[:, None], [1, WINDOW_GRID]), [-1])
    x = tf.reshape(tf.tile(centres[None, :], [WINDOW_GRID, 1]), [-1])
    weight = nucleus * tf.exp(-(((y - 0.5) / 0.3) ** 2 + ((x - 0.5) / 0.3) ** 2) / 2)
    total = tf.reduce_sum(weight) + 1e-6
    cy, cx = tf.reduce_sum(weight * y) / total, tf.reduce_sum(weight * x) / total
    radius = tf.sqrt(tf.reduce_sum(weight * (((y - cy) * height) ** 2 + ((x - cx) * width) ** 2)) / total)
    shorter = tf.minimum(height, width)
    side = tf.round(tf.clip_by_value(spread_multiple * radius, MIN_WINDOW * shorter, shorter))
    top = tf.round(tf.clip_by_value(cy * height - side / 2, 0.0, height - side))
    left = tf.round(tf.clip_by_value(cx * width - side / 2, 0.0, width - side))
    return tf.cast(tf.stack([top, left, side]), tf.int32)


def image_window(image: tf.Tensor, settings: Preprocessing) -> tf.Tensor:
    """[top, left, height, width] in pixels of the part of a decoded image the model sees: the cell window
    when `settings.cell_window` is set, else the central `settings.central_crop` fraction of each side."""
    if settings.cell_window:
        top, left, side = tf.unstack(cell_window(image, settings.cell_window))
        return tf.stack([top, left, side, side])
    shape = tf.shape(image)[:2]
    offset = tf.cast(tf.cast(shape, tf.float32) * (1.0 - settings.central_crop) / 2, tf.int32)  # as tf.image.central_crop
    return tf.concat([offset, shape - 2 * offset], axis=0)


def preprocess_with_window(image_bytes: tf.Tensor, settings: Preprocessing) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded JPEG/PNG bytes (scalar string) -> (float32 [image_size, image_size, 3] in [0, 1]: the
    `image_window` of the image, resized; that window [4] as fractions of the image's height and width)."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    window = image_window(image, settings)
    top, left, height, width = tf.unstack(window)
    image_height, image_width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    fractions = tf.cast(window, tf.float32) / tf.stack([image_height, image_width, image_height, image_width])
    size = settings.image_size
    image = tf.image.resize(tf.image.crop_to_bounding_box(image, top, left, height, width), [size, size], method="area")
    return tf.ensure_shape(image / 255.0, [size, size, 3]), fractions


def preprocess_image(image_bytes: tf.Tensor, settings: Preprocessing) -> tf.Tensor:
    """Encoded JPEG/PNG bytes (scalar string) -> float32 [image_size, image_size, 3] in [0, 1]: the
    `image_window` of the image, resized."""
    return preprocess_with_window(image_bytes, settings)[0]


def preprocess_batch(image_bytes: tf.Tensor, settings: Preprocessing) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of encoded images [N] -> (float32 [N, image_size, image_size, 3], their windows [N, 4] as
    fractions of each image's height and width)."""
    size = settings.image_size
    return tf.map_fn(
        lambda b: preprocess_with_window(b, settings),
        image_bytes,
        fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32), tf.TensorSpec([4], tf.float32)),
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


SITE_SPEC = {
    features.SITE: tf.io.FixedLenFeature([], tf.string, default_value=""),
    features.CELL_TYPE: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def parse_site(serialized: tf.Tensor) -> tf.Tensor:
    """A serialised tf.Example -> its site ("" when the example has none)."""
    return tf.io.parse_single_example(serialized, SITE_SPEC)[features.SITE]


def training_examples(files: list[str]) -> tf.data.Dataset:
    """A split's gzipped tf.Example files -> (encoded image bytes, label index, site, cell type) per example,
    in file order, parsed in parallel."""

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        more = tf.io.parse_single_example(serialized, SITE_SPEC)
        return (*parse_example(serialized), more[features.SITE], more[features.CELL_TYPE])

    return tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def labelled_examples(files: list[str]) -> tf.data.Dataset:
    """A split's gzipped tf.Example files -> (encoded image bytes, label index, site) per example, in file
    order, parsed in parallel."""
    return training_examples(files).map(lambda image, label, site, _: (image, label, site))


def parse_image_batch(serialized: tf.Tensor) -> tf.Tensor:
    """A batch of serialised tf.Examples [N] -> their encoded image bytes [N]."""
    return tf.io.parse_example(serialized, {features.IMAGE: FEATURE_SPEC[features.IMAGE]})[features.IMAGE]
