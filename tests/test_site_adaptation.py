"""training/site_adaptation.py and benchmarks/site_adaptation.py: batch-norm statistics re-estimated on a
site's images, plain and class-balanced; the model restored from an export; the label-free halves."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras
from typer.testing import CliRunner

from benchmarks.leave_one_site_out import halves
from benchmarks.site_adaptation import app
from contracts import features
from tests.helpers import TRAINER_CONFIG
from training.export import export_serving_model
from training.site_adaptation import adapted_to_site, batch_norm_layers, drift, entropy_tuned, restored_model
from training.trainer_module import configured_model

CONFIG = dataclasses.replace(
    TRAINER_CONFIG,
    preprocessing=dataclasses.replace(TRAINER_CONFIG.preprocessing, image_size=16),
    training=dataclasses.replace(TRAINER_CONFIG.training, filters=[4, 8], dense_units=8),
)


def site_images(seed: int, n: int, shift: float) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0.5 + shift, 0.1, (n, 16, 16, 3)), 0, 1).astype(np.float32)


def first_block_inputs(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return keras.Model(model.inputs, batch_norm_layers(model)[0].input)(images, training=False).numpy()


def test_the_first_block_takes_the_site_statistics_and_nothing_else_changes():
    keras.utils.set_random_seed(0)
    model = configured_model(CONFIG)
    before = [w.copy() for w in model.get_weights()]
    images = site_images(1, 40, 0.2)
    adapted = adapted_to_site(model, images, blocks=1)
    x = first_block_inputs(model, images)
    bn1, bn2 = batch_norm_layers(adapted)[:2]
    np.testing.assert_allclose(bn1.moving_mean.numpy(), x.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), x.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(bn2.moving_mean.numpy(), batch_norm_layers(model)[1].moving_mean.numpy())
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))  # the base is untouched
    learnt = [(a, b) for a, b in zip(model.weights, adapted.weights, strict=True) if "moving" not in a.name]
    assert learnt and all(np.array_equal(a.numpy(), b.numpy()) for a, b in learnt)  # only statistics move


def test_class_balanced_statistics_do_not_follow_the_class_mix():
    """Ten times as many images of one group move plain AdaBN, not the balanced one."""
    keras.utils.set_random_seed(0)
    model = configured_model(CONFIG)
    pale, dark = site_images(2, 10, 0.3), site_images(3, 10, -0.3)
    mostly_pale = np.concatenate([np.repeat(pale, 10, axis=0), dark])
    groups = np.array([0] * 100 + [1] * 10)
    balanced = adapted_to_site(model, np.concatenate([pale, dark]), 1, np.array([0] * 10 + [1] * 10))
    skewed_balanced = adapted_to_site(model, mostly_pale, 1, groups)
    skewed_plain = adapted_to_site(model, mostly_pale, 1)
    mean = lambda m: batch_norm_layers(m)[0].moving_mean.numpy()  # noqa: E731
    np.testing.assert_allclose(mean(skewed_balanced), mean(balanced), atol=1e-5)
    assert np.abs(mean(skewed_plain) - mean(balanced)).max() > 10 * np.abs(mean(skewed_balanced) - mean(balanced)).max()


def test_tent_tunes_only_the_scales_and_shifts_of_the_first_blocks():
    keras.utils.set_random_seed(0)
    model = configured_model(CONFIG)
    tuned = entropy_tuned(model, site_images(6, 40, 0.2), blocks=1, steps=5, learning_rate=0.05)
    changed = [a.name for a, b in zip(model.weights, tuned.weights, strict=True) if not np.array_equal(a.numpy(), b.numpy())]
    assert sorted(changed) == ["bn1/beta:0", "bn1/gamma:0"]  # moving statistics, other blocks, the head: as they were


def test_drift_is_small_for_images_like_those_the_statistics_came_from_and_large_for_other_pictures():
    keras.utils.set_random_seed(0)
    model = adapted_to_site(configured_model(CONFIG), site_images(7, 60, 0.0), blocks=2)
    stripes = np.zeros((60, 16, 16, 3), np.float32)
    stripes[:, :, ::4] = 1.0  # pixel noise in, vertical stripes out: colour and brightness alone would not show
    same, other = drift(model, site_images(8, 60, 0.0)), drift(model, stripes)
    assert len(same) == 2 and max(same) < 0.1 and min(other) > 5 * max(same)


def test_the_model_restored_from_an_export_answers_bit_for_bit_as_trained(tmp_path):
    keras.utils.set_random_seed(4)
    model = configured_model(CONFIG)
    images = site_images(5, 8, 0.0)
    adapted = adapted_to_site(model, images, blocks=2)  # non-default batch-norm statistics must come back too
    export_serving_model(adapted, CONFIG, str(tmp_path / "model"))
    restored = restored_model(str(tmp_path / "model"), CONFIG)
    np.testing.assert_array_equal(restored(images, training=False).numpy(), adapted(images, training=False).numpy())


def test_the_halves_split_a_site_by_content_hash_without_labels():
    examples = []
    for i in range(40):
        example = tf.train.Example()
        example.features.feature[features.SHA256].bytes_list.value.append(f"{i:064x}".encode())
        examples.append(example)
    adapt, score = halves(examples)
    assert len(adapt) + len(score) == 40 and len(adapt) == 20
    assert halves(list(reversed(examples)))[0] == list(reversed(adapt))  # the order does not choose the half


def test_the_benchmark_refuses_blocks_the_model_does_not_have(tmp_path):
    done = CliRunner().invoke(
        app, [str(tmp_path), str(tmp_path), "--output", str(tmp_path / "out"), "--blocks", "0", "--blocks", "9"]
    )
    assert done.exit_code == 2 and "--blocks [0, 9]: the model has blocks 1 to 5" in done.output
    assert not (tmp_path / "out").exists()
