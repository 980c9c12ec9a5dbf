"""Augmentations that move an image to another site's look: stain, gamma, another image's colours, blur,
sharpening, JPEG encoding, a random convolution and another site's magnification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from training.augmentation import (
    ColourJitter,
    RandomConvolution,
    RandomGeometry,
    affine_geometry,
    at_another_magnification,
    cross_site_partners,
    gaussian_blur,
    histogram_transfer,
    in_another_sites_colours,
    magnification_choices,
    per_image_colour_map,
    random_convolution,
    rescale_about_centre,
    site_look,
    stain_and_gamma,
    to_grayscale,
)
from training.stains import HED_FROM_RGB, RGB_FROM_HED

RNG = np.random.default_rng(0)
IMAGES = tf.constant(RNG.uniform(0.05, 1.0, (4, 16, 16, 3)).astype(np.float32))


def roughness(image: np.ndarray) -> float:
    return float(np.mean(np.abs(np.diff(image, axis=0))))


def test_one_resampling_does_what_keras_rotation_zoom_and_translation_do_in_turn():
    images = tf.constant(RNG.uniform(0.0, 1.0, (2, 33, 33, 3)).astype(np.float32))
    geometry = {"fill_mode": "reflect", "interpolation": "nearest"}
    keras_layers = keras.Sequential([
        keras.layers.RandomRotation((0.25, 0.25), **geometry),  # a quarter turn
        keras.layers.RandomZoom((1.0, 1.0), **geometry),  # twice the field of view
        keras.layers.RandomTranslation((3 / 33, 3 / 33), (-3 / 33, -3 / 33), **geometry),  # 3 px down, 3 px left
    ])  # fmt: skip
    expected = keras_layers(images, training=True).numpy()
    fused = affine_geometry(images, tf.fill([2], math.pi / 2), tf.fill([2], 2.0), tf.constant([[3 / 33, -3 / 33]] * 2))
    # the same pixels wherever no step reached past a border (mirrored once here, after each step there)
    np.testing.assert_array_equal(fused.numpy()[:, 11:28, 5:22], expected[:, 11:28, 5:22])
    assert np.mean(fused.numpy() == expected) > 0.8


def test_the_same_resampling_mirrors_as_keras_flips_before_the_rest():
    images = tf.constant(RNG.uniform(0.0, 1.0, (3, 33, 33, 3)).astype(np.float32))
    mirrored = tf.stack([
        tf.image.flip_left_right(images[0]), tf.image.flip_up_down(images[1]), tf.image.flip_up_down(images[2][:, ::-1]),
    ])  # fmt: skip
    geometry = {"fill_mode": "reflect", "interpolation": "nearest"}
    rotation = keras.layers.RandomRotation((0.25, 0.25), **geometry)  # a quarter turn
    expected = rotation(mirrored, training=True).numpy()
    mirrors = tf.constant([[1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    fused = affine_geometry(images, tf.fill([3], math.pi / 2), tf.ones([3]), tf.zeros([3, 2]), mirrors).numpy()
    np.testing.assert_array_equal(fused, expected)  # a quarter turn of the whole square: no border reached
    flipped_only = affine_geometry(images, tf.zeros([3]), tf.ones([3]), tf.zeros([3, 2]), mirrors).numpy()
    np.testing.assert_array_equal(flipped_only, mirrored.numpy())


def test_random_geometry_moves_each_image_its_own_way_and_only_in_training():
    layer = RandomGeometry(0.5, 0.35, 0.1, ["horizontal", "vertical"])
    moved = layer(IMAGES, training=True).numpy()
    assert moved.shape == IMAGES.shape
    assert all(not np.array_equal(moved[i], IMAGES.numpy()[i]) for i in range(len(moved)))
    assert set(np.unique(moved)) <= set(np.unique(IMAGES.numpy()))  # nearest neighbour: no new values
    np.testing.assert_array_equal(layer(IMAGES, training=False).numpy(), IMAGES.numpy())
    assert RandomGeometry.from_config(layer.get_config()).get_config() == layer.get_config()


def test_flips_alone_give_each_of_the_four_mirror_images():
    image = IMAGES.numpy()[0]
    mirror_images = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]
    seen = set()
    for _ in range(8):
        for out in RandomGeometry(0.0, 0.0, 0.0, ["horizontal", "vertical"])(tf.stack([image] * 8), training=True).numpy():
            seen.add(next(k for k, m in enumerate(mirror_images) if np.array_equal(out, m)))
    assert seen == {0, 1, 2, 3}
    for _ in range(4):  # one axis named: never the other
        out = RandomGeometry(0.0, 0.0, 0.0, ["horizontal"])(tf.stack([image] * 8), training=True).numpy()
        assert all(np.array_equal(o, image) or np.array_equal(o, image[:, ::-1]) for o in out)


def stain_then_gamma_pixel_by_pixel(images: np.ndarray, scale: np.ndarray, shift: np.ndarray, exponent: np.ndarray):
    """The two steps the long way: each pixel's stain amounts moved, back to colour, then x ** e per channel."""
    stains = -np.log(np.clip(images, 1e-3, 1.0)) @ HED_FROM_RGB * scale[:, None, None] + shift[:, None, None]
    return np.clip(np.exp(-stains @ RGB_FROM_HED), 1e-4, 1.0) ** exponent[:, None, None]


def test_stain_and_gamma_are_one_colour_map_in_optical_density():
    ones, zeros = np.ones([4, 3], np.float32), np.zeros([4, 3], np.float32)
    np.testing.assert_allclose(stain_and_gamma(IMAGES, ones, zeros, ones), IMAGES, atol=1e-5)
    ranges = ((0.7, 1.3), (-0.015, 0.015), (0.67, 1.5))
    scale, shift, exponent = (RNG.uniform(lo, hi, (4, 3)).astype(np.float32) for lo, hi in ranges)
    expected = stain_then_gamma_pixel_by_pixel(IMAGES.numpy(), scale, shift, exponent)
    np.testing.assert_allclose(stain_and_gamma(IMAGES, scale, shift, exponent), expected, atol=1e-5)
    more_haematoxylin = stain_and_gamma(IMAGES, np.tile([[1.5, 1.0, 1.0]], [4, 1]).astype(np.float32), zeros, ones)
    assert float(tf.reduce_mean(more_haematoxylin)) < float(tf.reduce_mean(IMAGES))  # more stain, darker


def test_per_image_colour_map_and_grayscale():
    matrices = RNG.normal(size=(4, 3, 3)).astype(np.float32)
    offsets = RNG.normal(size=(4, 3)).astype(np.float32)
    expected = np.einsum("nhwc,ncd->nhwd", IMAGES.numpy(), matrices) + offsets[:, None, None]
    np.testing.assert_allclose(per_image_colour_map(IMAGES, matrices, offsets), expected, atol=1e-5)
    np.testing.assert_allclose(to_grayscale(IMAGES), tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(IMAGES)), atol=1e-6)


def test_contrast_brightness_and_grayscale_of_the_colour_jitter():
    mid = IMAGES * 0.5 + 0.25  # away from the clip at 0 and 1
    gray = ColourJitter(0.0, 0.0, 0.0, 0.0, grayscale=1.0)(mid, training=True)
    np.testing.assert_allclose(gray, to_grayscale(mid), atol=1e-5)
    contrasted = ColourJitter(0.0, 0.4, 0.0, 0.0)(mid, training=True).numpy()
    for before, after in zip(mid.numpy(), contrasted, strict=True):
        np.testing.assert_allclose(after.mean(), before.mean(), atol=1e-5)  # about the image's mean
        factor = np.std(after) / np.std(before)
        assert 0.6 <= factor <= 1.4
        np.testing.assert_allclose(after - after.mean(), (before - before.mean()) * factor, atol=1e-5)
    brightened = ColourJitter(0.1, 0.0, 0.0, 0.0)(mid, training=True).numpy() - mid.numpy()
    for shift in brightened:  # one shift per image, every pixel and channel alike
        assert np.ptp(shift) < 1e-5 and abs(shift.mean()) <= 0.1


def test_colour_jitter_changes_colour_per_image_and_only_in_training():
    layer = ColourJitter(0.0, 0.0, 0.0, 0.0, grayscale=0.0, stain=0.3, gamma=0.4)
    np.testing.assert_array_equal(layer(IMAGES, training=False), IMAGES)
    tf.random.set_seed(1)
    jittered = layer(IMAGES, training=True).numpy()
    assert 0.0 <= jittered.min() and jittered.max() <= 1.0
    ratios = (jittered.mean(axis=(1, 2)) / IMAGES.numpy().mean(axis=(1, 2)))  # per image and channel
    assert np.std(ratios[:, 0]) > 0.01 and not np.allclose(ratios[:, 0], ratios[:, 2])


def test_histogram_transfer_keeps_the_shapes_and_takes_the_other_images_colours():
    peach = tf.constant(RNG.uniform(0.6, 1.0, (2, 16, 16, 3)).astype(np.float32) ** 2)  # another site's look
    moved = histogram_transfer(IMAGES[:2], peach).numpy()
    for image in range(2):
        for channel in range(3):
            gap = np.sort(moved[image, ..., channel], axis=None) - np.sort(peach.numpy()[image, ..., channel], axis=None)
            assert np.abs(gap).mean() < 1 / 255 and np.abs(gap).max() < 6 / 255  # the same histogram, to 256 levels
            original = IMAGES.numpy()[image, ..., channel].ravel()
            assert np.all(np.diff(moved[image, ..., channel].ravel()[np.argsort(original)]) >= 0)  # same order of brightness


def test_each_image_is_paired_with_another_sites_image_while_the_batch_holds_one():
    tf.random.set_seed(5)
    sites = tf.constant([0, 0, 0, 1, 1, 2])
    for _ in range(20):
        partners = cross_site_partners(sites).numpy()
        assert np.all(sites.numpy()[partners] != sites.numpy())
    one_site = cross_site_partners(tf.zeros([5], tf.int32)).numpy()
    assert np.all(one_site != np.arange(5))  # another image, never itself


def test_in_another_sites_colours_each_image_takes_its_partners_histogram():
    peach = tf.constant(RNG.uniform(0.6, 1.0, (2, 16, 16, 3)).astype(np.float32) ** 2)
    batch = tf.concat([IMAGES[:2], peach], axis=0)  # two images of site 0, two of site 1
    moved = in_another_sites_colours(batch, tf.constant([0, 0, 1, 1])).numpy()
    for image, looks in ((0, peach.numpy()), (3, IMAGES.numpy()[:2])):
        gaps = [np.abs(np.sort(moved[image], axis=None) - np.sort(look, axis=None)).mean() for look in looks]
        assert min(gaps) < 2 / 255  # the histogram of one of the other site's images


def test_colour_transfer_moves_some_images_to_another_images_colours():
    tf.random.set_seed(3)
    layer = ColourJitter(0.0, 0.0, 0.0, 0.0, transfer=1.0)
    histograms = [np.sort(image[..., 0], axis=None) for image in IMAGES.numpy()]
    moved = [layer(IMAGES, training=True).numpy() for _ in range(4)]
    for batch in moved:  # every image has the red histogram of an image of its batch
        assert all(any(np.abs(np.sort(m[..., 0], axis=None) - h).mean() < 1 / 255 for h in histograms) for m in batch)
    assert not all(np.allclose(batch, IMAGES.numpy(), atol=1e-5) for batch in moved)  # some took another's


def test_random_convolution_of_width_one_mixes_each_pixels_channels_alone():
    mid = IMAGES * 0.5 + 0.25  # away from the clip at 0 and 1
    one = tf.ones([4], tf.int32)
    np.testing.assert_allclose(random_convolution(mid, one, tf.zeros([4])), mid, atol=1e-6)
    tf.random.set_seed(4)
    moved = random_convolution(mid, one, tf.ones([4])).numpy()
    assert not np.allclose(moved, mid.numpy(), atol=1e-2)
    for image in range(4):  # a linear map of each pixel's own colour: an exact least-squares fit
        pixels = np.c_[mid.numpy()[image].reshape(-1, 3), np.ones(256)]
        fitted = pixels @ np.linalg.lstsq(pixels, moved[image].reshape(-1, 3), rcond=None)[0]
        clipped = (moved[image].reshape(-1, 3) <= 0) | (moved[image].reshape(-1, 3) >= 1)
        np.testing.assert_allclose(fitted[~clipped], moved[image].reshape(-1, 3)[~clipped], atol=1e-4)


def test_random_convolution_changes_the_edges_only_and_keeps_the_colour_statistics():
    rng = np.random.default_rng(6)
    pattern = np.kron(rng.integers(0, 2, (4, 4)), np.ones((16, 16)))  # blocks of 16 px
    images = tf.constant(np.repeat((pattern[None, ..., None] * [0.4, 0.3, 0.2] + 0.3), 8, axis=0), tf.float32)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(pattern, 3, mode="reflect"), (7, 7))
    inside = windows.min(axis=(2, 3)) == windows.max(axis=(2, 3))  # 7 px around holds one block's colour
    tf.random.set_seed(5)
    moved = random_convolution(images, tf.fill([8], 7), tf.ones([8])).numpy()
    for image in moved:
        assert not np.allclose(image, images.numpy()[0], atol=0.02)
        for value in (0, 1):  # inside the blocks each colour maps to one colour: the shapes stay
            assert image[inside & (pattern == value)].std(axis=0).max() < 1e-4  # float32 sums: CPUs differ
        if image.min() > 0 and image.max() < 1:  # not clipped: the original's mean and spread per channel
            np.testing.assert_allclose(image.mean(axis=(0, 1)), images.numpy()[0].mean(axis=(0, 1)), atol=1e-4)
            np.testing.assert_allclose(image.std(axis=(0, 1)), images.numpy()[0].std(axis=(0, 1)), atol=1e-3)
    near = ~inside & (pattern == 0)  # one colour in the input, 3 px or less from another block
    assert min(image[near].std(axis=0).max() for image in moved) > 0.01  # a new texture along the edges


def test_random_convolution_layer_only_in_training_and_in_range():
    layer = RandomConvolution(1.0)
    np.testing.assert_array_equal(layer(IMAGES, training=False), IMAGES)
    tf.random.set_seed(2)
    moved = layer(IMAGES, training=True).numpy()
    assert 0.0 <= moved.min() and moved.max() <= 1.0 and not np.allclose(moved, IMAGES.numpy(), atol=1e-3)
    np.testing.assert_array_equal(RandomConvolution(0.0)(IMAGES, training=True), IMAGES)


def test_site_look_blurs_and_re_encodes_within_range():
    image = IMAGES[0]
    np.testing.assert_array_equal(site_look(image, max_blur=0.0, jpeg_quality=()), image)
    tf.random.set_seed(0)
    blurred = [site_look(image, max_blur=2.0, jpeg_quality=()).numpy() for _ in range(8)]
    assert np.mean([roughness(b) for b in blurred]) < 0.8 * roughness(image.numpy())
    encoded = site_look(image, max_blur=0.0, jpeg_quality=(20, 30)).numpy()
    assert encoded.shape == (16, 16, 3) and 0.0 <= encoded.min() and encoded.max() <= 1.0
    assert np.mean(np.abs(encoded - image.numpy())) > 0.02  # quality 20-30 loses detail


def test_site_look_sharpens_half_of_the_time_when_asked():
    image = gaussian_blur(IMAGES[0], 1.0)  # a soft image, as a blurry scanner's
    tf.random.set_seed(1)
    sharpened = [site_look(image, max_blur=0.0, jpeg_quality=(), max_sharpen=2.0).numpy() for _ in range(8)]
    assert np.mean([roughness(s) for s in sharpened]) > 1.2 * roughness(image.numpy())
    both = [roughness(site_look(image, max_blur=1.5, jpeg_quality=(), max_sharpen=2.0).numpy()) for _ in range(40)]
    assert min(both) < roughness(image.numpy()) < max(both)  # blurred some of the time, sharpened some
    assert all(0.0 <= s.min() and s.max() <= 1.0 for s in sharpened)


def disk(size: int, radius: float) -> tf.Tensor:
    """A bright centred disk on a dark background, [size, size, 3]."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    return tf.constant(np.repeat(((x**2 + y**2) <= radius**2)[..., None], 3, axis=-1).astype(np.float32))


def area(image: tf.Tensor) -> float:
    return float(tf.reduce_sum(image[..., 0]))


def test_rescale_about_centre_grows_or_shrinks_the_content_and_keeps_the_size():
    image = disk(40, 8.0)
    np.testing.assert_allclose(rescale_about_centre(image, 1.0), image, atol=1e-6)
    grown, shrunk = rescale_about_centre(image, 1.5), rescale_about_centre(image, 0.75)
    assert grown.shape == shrunk.shape == (40, 40, 3)
    assert area(grown) / area(image) == pytest.approx(1.5**2, rel=0.1)
    assert area(shrunk) / area(image) == pytest.approx(0.75**2, rel=0.1)
    assert float(shrunk[20, 20, 0]) > 0.9 and float(tf.reduce_max(shrunk[:, :5])) < 0.1  # still centred, dark border


def test_magnification_choices_lead_each_known_site_to_every_other_one():
    choices = magnification_choices(["barcelona", "munich", "oslo"], {"barcelona": 1.0, "munich": 1.25})
    assert choices == [[1.25], [pytest.approx(0.8)], [1.0]]  # oslo: magnification unknown, kept as it is
    three = magnification_choices(["a", "b", "c"], {"a": 1.0, "b": 2.0, "c": 0.5})
    assert three == [[2.0, 0.5], [0.5, 0.25], [2.0, 4.0]]


def test_at_another_magnification_with_probability_one_rescales_by_a_choice():
    image = disk(40, 8.0)
    np.testing.assert_array_equal(at_another_magnification(image, tf.constant([1.5]), 0.0), image)
    np.testing.assert_allclose(
        at_another_magnification(image, tf.constant([1.5]), 1.0), rescale_about_centre(image, 1.5), atol=1e-6
    )
    tf.random.set_seed(0)
    areas = {round(area(at_another_magnification(image, tf.constant([0.5, 1.5]), 1.0))) for _ in range(12)}
    assert areas == {round(area(rescale_about_centre(image, f))) for f in (0.5, 1.5)}  # both choices drawn
