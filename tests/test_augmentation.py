"""Augmentations that move an image to another site's look: stain, gamma, another image's colours, blur,
sharpening and JPEG encoding."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.augmentation import ColourJitter, gaussian_blur, histogram_transfer, site_look, stain_jitter

RNG = np.random.default_rng(0)
IMAGES = tf.constant(RNG.uniform(0.05, 1.0, (4, 16, 16, 3)).astype(np.float32))


def roughness(image: np.ndarray) -> float:
    return float(np.mean(np.abs(np.diff(image, axis=0))))


def test_stain_jitter_is_the_identity_at_scale_one_and_moves_one_stain_otherwise():
    ones, zeros = tf.ones([4, 1, 1, 3]), tf.zeros([4, 1, 1, 3])
    np.testing.assert_allclose(stain_jitter(IMAGES, ones, zeros), IMAGES, atol=1e-5)
    more_haematoxylin = stain_jitter(IMAGES, tf.constant([[[[1.5, 1.0, 1.0]]]] * 4), zeros)
    assert float(tf.reduce_mean(more_haematoxylin)) < float(tf.reduce_mean(IMAGES))  # more stain, darker


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


def test_colour_transfer_moves_some_images_to_another_images_colours():
    tf.random.set_seed(3)
    layer = ColourJitter(0.0, 0.0, 0.0, 0.0, transfer=1.0)
    histograms = [np.sort(image[..., 0], axis=None) for image in IMAGES.numpy()]
    moved = [layer(IMAGES, training=True).numpy() for _ in range(4)]
    for batch in moved:  # every image has the red histogram of an image of its batch
        assert all(any(np.abs(np.sort(m[..., 0], axis=None) - h).mean() < 1 / 255 for h in histograms) for m in batch)
    assert not all(np.allclose(batch, IMAGES.numpy(), atol=1e-5) for batch in moved)  # some took another's


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
