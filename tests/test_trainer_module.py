"""Training: model selection scores the eval split and its grayscale copy, and restores the best epoch; the
weight average is what is validated and kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

from tests.helpers import CLASSES, DATA_ROOTS, TRAINER_CONFIG, real_files, write_examples
from training.augmentation import rescale_about_centre, to_grayscale
from training.trainer_config import TrainerConfig
from training.trainer_module import WeightAverage, fit, load_preprocessed, make_train_dataset


def small_config(grayscale_validation: bool, weight_average: float = 0.0) -> TrainerConfig:
    training = dataclasses.replace(
        TRAINER_CONFIG.training,
        filters=[8, 16], dense_units=8, batch_size=8, learning_rate=0.01, grayscale_validation=grayscale_validation,
        weight_average=weight_average,
    )  # fmt: skip
    return dataclasses.replace(TRAINER_CONFIG, training=training)


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    files = {name: real_files(name, 5) for name in CLASSES}
    barcelona_neutrophils = real_files("seg_neutrophil", 3, Path(DATA_ROOTS[1].path))  # a second site for one class
    write_examples(root / "train.gz", [f for name in CLASSES for f in files[name][:3]] + barcelona_neutrophils)
    write_examples(root / "eval.gz", [f for name in CLASSES for f in files[name][3:]])
    return [str(root / "train.gz")], [str(root / "eval.gz")]


def test_grayscale_validation_logs_the_copy_and_keeps_the_epoch_with_the_lowest_mean_loss(split_files):
    model, history, eval_ds = fit(*split_files, small_config(True), epochs=4)
    assert len(history) == 4
    for row in history:
        assert row["val_selection_loss"] == pytest.approx((row["val_loss"] + row["val_grayscale_loss"]) / 2)
        assert 0.0 <= row["val_grayscale_accuracy"] <= 1.0
    clean_loss, _ = model.evaluate(eval_ds, verbose=0)
    gray_loss, gray_accuracy = model.evaluate(eval_ds.map(lambda x, y: (to_grayscale(x), y)), verbose=0)
    best = min(history, key=lambda row: row["val_selection_loss"])
    assert (clean_loss + gray_loss) / 2 == pytest.approx(best["val_selection_loss"], rel=1e-4)
    assert gray_accuracy == pytest.approx(best["val_grayscale_accuracy"])


def test_without_grayscale_validation_only_the_clean_eval_split_is_scored(split_files):
    model, history, eval_ds = fit(*split_files, small_config(False), epochs=2)
    assert all("val_grayscale_loss" not in row for row in history)
    best = min(history, key=lambda row: row["val_loss"])
    assert model.evaluate(eval_ds, verbose=0)[0] == pytest.approx(best["val_loss"], rel=1e-4)


def test_weight_average_is_held_at_the_end_of_each_epoch_and_the_raw_weights_come_back_for_the_next():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    kernel = model.layers[0].kernel
    kernel.assign([[1.0]])
    average = WeightAverage(decay=0.5)
    average.set_model(model)
    average.on_train_begin()
    expected = 1.0
    for step, value in enumerate([2.0, 4.0, 8.0], start=1):
        kernel.assign([[value]])
        average.on_train_batch_end(step)
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
    average.on_epoch_end(0)
    assert float(kernel[0, 0]) == pytest.approx(expected) and expected < 8.0
    average.on_epoch_begin(1)
    assert float(kernel[0, 0]) == 8.0


def test_with_weight_average_the_kept_model_is_the_validated_average(split_files):
    model, history, eval_ds = fit(*split_files, small_config(False, weight_average=0.9), epochs=3)
    best = min(history, key=lambda row: row["val_loss"])
    assert model.evaluate(eval_ds, verbose=0)[0] == pytest.approx(best["val_loss"], rel=1e-4)


def test_grayscale_copy_has_three_equal_channels_of_luminance():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    gray = to_grayscale(images).numpy()
    expected = images @ np.array([0.2989, 0.587, 0.114], np.float32)
    for channel in range(3):
        np.testing.assert_allclose(gray[..., channel], expected, atol=1e-3)


def test_training_batches_are_drawn_class_by_class_and_site_by_site(split_files):
    config = small_config(False)
    augmentation = dataclasses.replace(config.augmentation, enabled=False)
    dataset, steps = make_train_dataset(
        split_files[0], dataclasses.replace(config.preprocessing, image_size=32), 9, augmentation, site_power=0.0, seed=1
    )
    assert steps == (3 * len(CLASSES) + 3) // 9  # one pass's worth of the 18 training images
    labels = np.concatenate([y.numpy() for _, y in dataset.take(200)])
    share = np.bincount(labels, minlength=len(CLASSES)) / len(labels)
    np.testing.assert_allclose(share, 1 / len(CLASSES), atol=0.03)  # every class equally often


def test_training_images_are_shown_at_the_other_sites_magnification(split_files):
    """Every augmentation off but the magnification swap: each Munich image of the split comes out shrunk to
    Barcelona's magnification and each Barcelona image grown to Munich's, by their sites' ratio."""
    config = small_config(False)
    preprocessing = dataclasses.replace(config.preprocessing, image_size=32)
    still = dataclasses.replace(
        config.augmentation, rotation=0.0, zoom=0.0, shift=0.0, horizontal_flip=False, vertical_flip=False,
        brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale=0.0, stain=0.0, gamma=0.0, blur=0.0,
        jpeg_quality=[], colour_transfer=0.0, random_convolution=0.0,
    )  # fmt: skip
    magnification = {"barcelona": 1.0, "munich": 1.5}
    images, _, sites = load_preprocessed(split_files[0], preprocessing)
    expected = {
        site: np.stack([rescale_about_centre(i, f).numpy() for i, s in zip(images, sites, strict=True) if s == site])
        for site, f in (("barcelona", 1.5), ("munich", 1 / 1.5))
    }

    def drawn(probability: float) -> np.ndarray:
        augmentation = dataclasses.replace(still, magnification_swap=probability, site_magnification=magnification)
        dataset, _ = make_train_dataset(split_files[0], preprocessing, 9, augmentation, site_power=0.0, seed=1)
        return np.concatenate([x.numpy() for x, _ in dataset.take(8)])

    def distance(batch: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return np.abs(batch[:, None] - candidates[None]).max(axis=(2, 3, 4)).min(axis=1)  # to the nearest candidate

    assert distance(drawn(0.0), images).max() < 1e-6  # no swap: every drawn image is one of the split's
    swapped = drawn(1.0)
    to_site = np.minimum(distance(swapped, expected["barcelona"]), distance(swapped, expected["munich"]))
    assert to_site.max() < 1e-5 and distance(swapped, images).min() > 0.01  # each at its other site's size


def test_with_look_consistency_each_batch_comes_with_its_copy_in_the_other_sites_colours(split_files):
    config = small_config(False)
    preprocessing = dataclasses.replace(config.preprocessing, image_size=32)
    (images, copies), labels = next(iter(make_train_dataset(
        split_files[0], preprocessing, 9, config.augmentation, site_power=0.0, seed=1, look_pairs=True
    )[0]))  # fmt: skip
    assert images.shape == copies.shape == (9, 32, 32, 3) and labels.shape == (9,)
    assert np.abs(images.numpy() - copies.numpy()).mean() > 0.01
    training = dataclasses.replace(config.training, look_consistency=1.0)
    model, history, eval_ds = fit(*split_files, dataclasses.replace(config, training=training), epochs=2)
    assert all(row["consistency"] > 0.0 for row in history)  # the copies differ, so do their answers
    best = min(history, key=lambda row: row["val_loss"])
    assert model.evaluate(eval_ds, verbose=0)[0] == pytest.approx(best["val_loss"], rel=1e-4)
