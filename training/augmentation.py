"""Training-time augmentation: geometry (rotation, zoom, shifts, flips), another site's magnification, colour jitter
and a random convolution. Off at inference."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from contracts.config import Augmentation
from training.stains import HED_FROM_RGB, RGB_FROM_HED

LUMA = (0.2989, 0.5870, 0.1140)  # ITU-R 601 weights of red, green and blue, as tf.image.rgb_to_grayscale
TO_GRAY = tf.constant([[weight] * 3 for weight in LUMA], tf.float32)  # a pixel's colour times this: its luminance x3


def per_image_colour_map(images: tf.Tensor, matrices: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
    """Images [N, H, W, 3] with each pixel's colour (a row) times its image's matrix ([N, 3, 3]) plus its
    image's offset ([N, 3]): one batched matrix product, where broadcasting per-image factors over the pixels
    costs several times as much on a CPU."""
    shape = tf.shape(images)
    mapped = tf.linalg.matmul(tf.reshape(images, [shape[0], -1, 3]), matrices) + offsets[:, None, :]
    return tf.reshape(mapped, shape)


def to_grayscale(images: tf.Tensor) -> tf.Tensor:
    """ITU-R 601 luminance in all three channels: what a grayscale scanner or camera delivers."""
    n = tf.shape(images)[0]
    return per_image_colour_map(images, tf.tile(TO_GRAY[None], [n, 1, 1]), tf.zeros([n, 3]))


def stain_and_gamma(images: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor, exponent: tf.Tensor) -> tf.Tensor:
    """Images [N, H, W, 3] in [0, 1] with each stain's amount (haematoxylin, eosin, residual; optical
    density, per pixel) multiplied by `scale` and moved by `shift` (another lab's stain), then each channel
    raised to the power `exponent` (a scanner's response curve: x ** e multiplies the optical density by e);
    [N, 3] each. Both are linear in optical density, so they are one colour map there."""
    density = -tf.math.log(tf.clip_by_value(images, 1e-3, 1.0))
    matrices = tf.einsum("cd,nd,de,ne->nce", HED_FROM_RGB, scale, RGB_FROM_HED, exponent)
    offsets = tf.einsum("nd,dc,nc->nc", shift, RGB_FROM_HED, exponent)
    return tf.exp(-tf.maximum(per_image_colour_map(density, matrices, offsets), 0.0))  # no brighter than white


LEVELS = 256  # grey levels per channel of the histogram transfer


def histogram_transfer(images: tf.Tensor, looks: tf.Tensor) -> tf.Tensor:
    """Images [N, H, W, 3] in [0, 1] with each channel mapped, through a 256-level lookup table, so that its
    histogram becomes that of the same channel of `looks` ([N, H', W', 3]): every image keeps its shapes and
    the order of its brightnesses, and takes on another image's colour statistics (histogram matching)."""
    shape = tf.shape(images)

    def cumulative(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # level of each pixel, counts up to each level
        channels = tf.reshape(tf.transpose(batch, [0, 3, 1, 2]), [shape[0] * 3, -1])
        levels = tf.cast(tf.round(tf.clip_by_value(channels, 0.0, 1.0) * (LEVELS - 1)), tf.int32)
        counts = tf.math.bincount(levels, minlength=LEVELS, maxlength=LEVELS, axis=-1, dtype=tf.float32)
        return levels, (tf.cumsum(counts, axis=-1) - counts / 2) / tf.cast(tf.shape(levels)[1], tf.float32)

    source, quantiles = cumulative(images)  # the mid-rank quantile of each source level
    target_quantiles = cumulative(looks)[1]
    table = tf.minimum(tf.searchsorted(target_quantiles, quantiles), LEVELS - 1)  # the target level at that quantile
    matched = tf.cast(tf.gather(table, source, batch_dims=1), tf.float32) / (LEVELS - 1)
    return tf.transpose(tf.reshape(matched, [shape[0], 3, shape[1], shape[2]]), [0, 2, 3, 1])


def cross_site_partners(sites: tf.Tensor) -> tf.Tensor:
    """For each image of a batch ([N] site codes), the index of another image, drawn at random among those
    from another site; among all the others where the batch holds one site only."""
    n = tf.shape(sites)[0]
    same_site = tf.cast(tf.equal(sites[:, None], sites[None, :]), tf.float32)
    return tf.argmin(tf.random.uniform([n, n]) + same_site + 2.0 * tf.eye(n), axis=1, output_type=tf.int32)


def in_another_sites_colours(images: tf.Tensor, sites: tf.Tensor) -> tf.Tensor:
    """The batch [N, H, W, 3] in [0, 1], each image with the colour histogram of an image of the batch from
    another site (`cross_site_partners`, `histogram_transfer`): the same cells, another site's colours."""
    return histogram_transfer(images, tf.gather(images, cross_site_partners(sites)))


class ColourJitter(keras.layers.Layer):
    """Per-image random brightness, contrast, saturation and hue on images in [0, 1], a stain jitter in
    haematoxylin-eosin space, a gamma curve per channel, and grayscale with probability `grayscale`: stains,
    scanners and cameras differ between labs, the cells do not. With probability `transfer` an image first
    takes on the colour histogram of another image of its batch (`histogram_transfer`): batches mix classes
    and sites, so a cell is shown in the colours of a site it was never seen from."""

    def __init__(
        self,
        brightness: float,
        contrast: float,
        saturation: float,
        hue: float,
        grayscale: float = 0.0,
        stain: float = 0.0,
        gamma: float = 0.0,
        transfer: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.grayscale, self.stain, self.gamma, self.transfer = grayscale, stain, gamma, transfer

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training:
            return images
        n = tf.shape(images)[0]

        def factor(spread: float) -> tf.Tensor:
            return tf.random.uniform([n, 1, 1, 1], -spread, spread)

        if self.transfer:
            looks = tf.gather(images, tf.random.shuffle(tf.range(n)))
            moved = tf.random.uniform([n, 1, 1, 1]) < self.transfer
            images = tf.where(moved, histogram_transfer(images, looks), images)
        if self.stain or self.gamma:
            images = stain_and_gamma(
                images,
                1.0 + tf.random.uniform([n, 3], -self.stain, self.stain),
                tf.random.uniform([n, 3], -0.05, 0.05) * self.stain,
                tf.exp(tf.random.uniform([n, 3], -self.gamma, self.gamma)),
            )
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 1.0))
        hue = tf.math.floormod(hsv[..., :1] + factor(self.hue), 1.0)
        saturation = tf.clip_by_value(hsv[..., 1:2] * (1.0 + factor(self.saturation)), 0.0, 1.0)
        images = tf.image.hsv_to_rgb(tf.concat([hue, saturation, hsv[..., 2:]], axis=-1))
        # contrast about the image's mean, brightness, then grayscale or not: one affine colour map per image
        contrast = 1.0 + tf.random.uniform([n], -self.contrast, self.contrast)
        brightness = tf.random.uniform([n], -self.brightness, self.brightness)
        level = tf.reduce_mean(images, axis=[1, 2, 3]) * (1.0 - contrast) + brightness
        gray = tf.random.uniform([n]) < self.grayscale
        mixing = tf.where(gray[:, None, None], TO_GRAY[None], tf.eye(3)[None])  # [N, 3, 3]
        offsets = level[:, None] * tf.reduce_sum(mixing, axis=1)  # the map of a grey of that level
        images = per_image_colour_map(images, contrast[:, None, None] * mixing, offsets)
        return tf.clip_by_value(images, 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
            "grayscale": self.grayscale,
            "stain": self.stain,
            "gamma": self.gamma,
            "transfer": self.transfer,
        }


WIDEST = 7  # px, the widest random convolution


def random_convolution(images: tf.Tensor, size: tf.Tensor, mix: tf.Tensor) -> tf.Tensor:
    """Images [N, H, W, 3] in [0, 1] mixed, `mix` [N] of the way, with themselves passed through a random
    3-to-3 channel convolution of odd width `size` [N] (1 to 7 px; Xu et al., "Robust and generalizable visual
    representation learning via random convolutions", ICLR 2021): each image's local texture and channel
    mixture change, its shapes stay. The convolved image takes the original's mean and spread per channel."""
    n, half = tf.shape(images)[0], WIDEST // 2
    reach = tf.abs(tf.range(-half, half + 1, dtype=tf.float32))
    inside = tf.cast(tf.maximum(reach[:, None], reach[None, :]) <= tf.cast(size[:, None, None] // 2, tf.float32), tf.float32)
    fan_in = 3.0 * tf.cast(size, tf.float32) ** 2
    weights = tf.random.normal([n, WIDEST, WIDEST, 3, 3]) * inside[..., None, None] / tf.sqrt(fan_in)[:, None, None, None, None]
    padded = tf.pad(images, [[0, 0], [half, half], [half, half], [0, 0]], mode="REFLECT")
    # one depthwise convolution over the images side by side: image i's input channel c feeds 3 outputs
    stacked = tf.transpose(padded, [1, 2, 0, 3])  # [H + 2 half, W + 2 half, N, 3]
    shape = tf.shape(stacked)
    kernels = tf.reshape(tf.transpose(weights, [1, 2, 0, 3, 4]), [WIDEST, WIDEST, n * 3, 3])
    out = tf.nn.depthwise_conv2d(tf.reshape(stacked, [1, shape[0], shape[1], n * 3]), kernels, [1, 1, 1, 1], "VALID")
    out = tf.reduce_sum(tf.reshape(out[0], [shape[0] - 2 * half, shape[1] - 2 * half, n, 3, 3]), axis=3)  # over inputs
    out = tf.transpose(out, [2, 0, 1, 3])
    mean, variance = tf.nn.moments(images, axes=[1, 2], keepdims=True)
    out_mean, out_variance = tf.nn.moments(out, axes=[1, 2], keepdims=True)
    out = (out - out_mean) * tf.sqrt(variance / (out_variance + 1e-8)) + mean
    mix = tf.reshape(mix, [-1, 1, 1, 1])
    return tf.clip_by_value((1.0 - mix) * images + mix * out, 0.0, 1.0)


class RandomConvolution(keras.layers.Layer):
    """With probability `probability`, an image is mixed (a random share) with itself through a random
    convolution of random width 1, 3, 5 or 7 px (`random_convolution`): another scanner's texture, sharpness
    and channel response on the same cell shapes. Off at inference."""

    def __init__(self, probability: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.probability = probability

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training:
            return images
        n = tf.shape(images)[0]
        size = 2 * tf.random.uniform([n], 0, WIDEST // 2 + 1, dtype=tf.int32) + 1
        moved = tf.cast(tf.random.uniform([n]) < self.probability, tf.float32)
        return random_convolution(images, size, moved * tf.random.uniform([n]))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "probability": self.probability}


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int = 3) -> tf.Tensor:
    """One image [H, W, 3] blurred by a separable Gaussian of standard deviation `sigma` pixels."""
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(taps**2) / (2.0 * tf.maximum(sigma, 1e-3) ** 2))
    kernel = tf.tile(tf.reshape(kernel / tf.reduce_sum(kernel), [-1, 1, 1, 1]), [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")
    blurred = tf.nn.depthwise_conv2d(blurred, tf.transpose(kernel, [1, 0, 2, 3]), [1, 1, 1, 1], "SAME")
    return blurred[0]


def site_look(image: tf.Tensor, max_blur: float, jpeg_quality: tuple[int, int], max_sharpen: float = 0.0) -> tf.Tensor:
    """Moves one image [H, W, 3] in [0, 1] towards another site's optics and encoding: a Gaussian blur of
    random strength or, with `max_sharpen`, half of the time an unsharp mask of random amount instead (focus
    and optics differ between scanners, both ways), then a JPEG re-encoding at a random quality (scanners
    compress differently). Applied per image, before batching."""
    shape, optics = image.shape, image
    if max_blur:
        optics = gaussian_blur(image, tf.random.uniform([], 0.0, max_blur))
    if max_sharpen:
        sharpened = image + tf.random.uniform([], 0.0, max_sharpen) * (image - gaussian_blur(image, 1.0))
        optics = tf.where(tf.random.uniform([]) < 0.5, sharpened, optics) if max_blur else sharpened
    image = tf.clip_by_value(optics, 0.0, 1.0)
    if jpeg_quality:  # decodes to [0, 1]
        image = tf.image.random_jpeg_quality(image, jpeg_quality[0], jpeg_quality[1])
    return tf.ensure_shape(image, shape)


def rescale_about_centre(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """One image [H, W, 3] with its content magnified `factor` times about the centre, at its own size: a
    centre crop where the content grew past it, mirrored borders where it shrank inside it (factor >= 1/3).
    The audit's `stress.rescale` does the same to whole images."""
    shape = image.shape
    size = tf.shape(image)[:2]
    new = tf.maximum(1, tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32))
    resized = tf.image.resize(image, new, antialias=True)
    pad = tf.maximum(size - new, 0)
    resized = tf.pad(resized, [[pad[0] // 2, pad[0] - pad[0] // 2], [pad[1] // 2, pad[1] - pad[1] // 2], [0, 0]], "SYMMETRIC")
    top, left = (tf.shape(resized)[0] - size[0]) // 2, (tf.shape(resized)[1] - size[1]) // 2
    cropped = resized[top : top + size[0], left : left + size[1]]
    return tf.ensure_shape(tf.clip_by_value(cropped, 0.0, 1.0), shape)


def magnification_choices(sites: Sequence[str], magnification: Mapping[str, float]) -> list[list[float]]:
    """For each site, the factors that show one of its images at the magnification of each other site in
    `magnification` (relative magnifications of the sites' images in the model input); [1.0] (as it is)
    for a site that is not in it or has no other."""
    choices = []
    for site in sites:
        own = magnification.get(site)
        others = [magnification[o] / own for o in sorted(magnification) if o != site] if own else []
        choices.append(others or [1.0])
    return choices


def at_another_magnification(image: tf.Tensor, choices: tf.Tensor, probability: float) -> tf.Tensor:
    """With `probability`, one image rescaled by one of its site's `choices` (`magnification_choices`), drawn
    at random: a Barcelona monocyte at Munich's magnification, a Munich myeloblast at Barcelona's. Random zoom
    alone keeps each site's sizes apart; this lets no class be told by the size of its cells."""
    factor = tf.gather(choices, tf.random.uniform([], 0, tf.shape(choices)[0], tf.int32))
    return tf.cond(tf.random.uniform([]) < probability, lambda: rescale_about_centre(image, factor), lambda: image)


def affine_geometry(
    images: tf.Tensor, angles: tf.Tensor, zooms: tf.Tensor, shifts: tf.Tensor, mirrors: tf.Tensor | None = None
) -> tf.Tensor:
    """Images [N, H, W, C] mirrored where `mirrors` [N, 2] is -1 (top to bottom, left to right; 1 leaves
    them), rotated by `angles` [N] (radians) about the centre, then zoomed by `zooms` [N] (the output shows
    `zooms` times the field of view), then shifted by `shifts` [N, 2] (fractions of the height and width), in
    one nearest-neighbour resampling with mirrored borders: what Keras' RandomFlip, RandomRotation, RandomZoom
    and RandomTranslation do one after another, at a third of the cost (one pass, not four)."""
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # input point = centre + mirror * zoom * rotation @ (output point - centre - shift)
    mirror_y, mirror_x = (mirrors[:, :1], mirrors[:, 1:]) if mirrors is not None else (1.0, 1.0)
    cos, sin = zooms * tf.cos(angles), zooms * tf.sin(angles)
    from_x, from_y = centre_x + shifts[:, 1] * width, centre_y + shifts[:, 0] * height
    rows = [mirror_x * tf.stack([cos, -sin, -cos * from_x + sin * from_y], axis=1),
            mirror_y * tf.stack([sin, cos, -sin * from_x - cos * from_y], axis=1)]  # fmt: skip
    transforms = tf.concat(
        [rows[0] + [0.0, 0.0, centre_x], rows[1] + [0.0, 0.0, centre_y], tf.zeros([shape[0], 2])], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="NEAREST", fill_mode="REFLECT",
    )  # fmt: skip


class RandomGeometry(keras.layers.Layer):
    """Per image, a mirror image half of the time along each axis that `flips` names ("horizontal",
    "vertical", both or neither), a random rotation up to `rotation` of a full turn either way, zoom by 1 +-
    `zoom` and shift up to `shift` of each side (`affine_geometry`). Nearest-neighbour, not bilinear:
    interpolation blurs every augmented training image, which the clean eval and served images never are,
    and batch-norm statistics then disagree between the two (eval accuracy swung between 0.6 and 0.97 with
    bilinear; about 0.99 with nearest)."""

    def __init__(self, rotation: float, zoom: float, shift: float, flips: Sequence[str] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.flips = rotation, zoom, shift, tuple(flips)

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training:
            return images
        n = tf.shape(images)[0]
        angles = tf.random.uniform([n], -self.rotation, self.rotation) * 2.0 * math.pi
        zooms = 1.0 + tf.random.uniform([n], -self.zoom, self.zoom)
        flipping = tf.constant([["vertical" in self.flips, "horizontal" in self.flips]])
        mirrors = tf.where(flipping & (tf.random.uniform([n, 2]) < 0.5), -1.0, 1.0)
        return affine_geometry(images, angles, zooms, tf.random.uniform([n, 2], -self.shift, self.shift), mirrors)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
            "flips": list(self.flips),
        }  # fmt: skip


def build_augmenter(settings: Augmentation) -> keras.Sequential:
    """The augmentation stage named in config; apply it with training=True to image batches."""
    flips = [name for name, on in (("horizontal", settings.horizontal_flip), ("vertical", settings.vertical_flip)) if on]
    layers: list[keras.layers.Layer] = []
    if flips or settings.rotation or settings.zoom or settings.shift:
        layers.append(RandomGeometry(settings.rotation, settings.zoom, settings.shift, flips))
    layers.append(
        ColourJitter(
            settings.brightness,
            settings.contrast,
            settings.saturation,
            settings.hue,
            settings.grayscale,
            settings.stain,
            settings.gamma,
            settings.colour_transfer,
        )
    )
    if settings.random_convolution:
        layers.append(RandomConvolution(settings.random_convolution))
    return keras.Sequential(layers, name="augmentation")
