"""One preprocessing function: the served signature and the training input path agree on real files."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts.config import Preprocessing
from contracts.signatures import EXAMPLES_SIGNATURE, SERVING_INPUT
from tests.helpers import CLASSES, CONFIG, TRAINER_CONFIG, png_header, real_files, write_examples
from training.augmentation import build_augmenter
from training.export import export_serving_model
from training.model import build_model
from training.operating_point import OperatingPoint, alerts, scale
from training.preprocessing import image_window, preprocess_image
from training.test_time_views import averaged_probabilities
from training.trainer_module import make_dataset

SIZE = CONFIG.preprocessing.image_size


def preprocessing(**changes) -> Preprocessing:
    return dataclasses.replace(CONFIG.preprocessing, **changes)


def test_served_model_and_training_path_see_the_same_tensor(tmp_path):
    files = real_files("myeloblast", 2) + real_files("basophil", 2)
    write_examples(tmp_path / "data.gz", files)
    images, labels = next(iter(make_dataset([str(tmp_path / "data.gz")], CONFIG.preprocessing, batch_size=8)))
    assert images.shape == (4, SIZE, SIZE, 3) and list(labels.numpy()) == [3, 3, 0, 0]
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0 + 1e-5  # float32 area-resize rounding

    model = build_model(len(CLASSES), SIZE, [8, 16], 16, 0.0, 1e-3)
    export_serving_model(model, TRAINER_CONFIG, str(tmp_path / "model"))
    served = tf.saved_model.load(str(tmp_path / "model"))
    outputs = served.signatures["serving_default"](**{SERVING_INPUT: tf.constant([f.read_bytes() for f in files])})
    expected = averaged_probabilities(model, images, TRAINER_CONFIG.preprocessing.test_time_views).numpy()
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    assert outputs["probabilities"].shape == (4, 5)
    assert [c.decode() for c in outputs["predicted_class"].numpy()] == [
        CLASSES[i] for i in np.argmax(outputs["probabilities"].numpy(), axis=1)
    ]
    assert [c.decode() for c in outputs["class_names"].numpy()[0]] == CLASSES

    serialized = [rec.numpy() for rec in tf.data.TFRecordDataset(str(tmp_path / "data.gz"), compression_type="GZIP")]
    by_examples = served.signatures[EXAMPLES_SIGNATURE](examples=tf.constant(serialized))
    np.testing.assert_allclose(by_examples["probabilities"].numpy(), outputs["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(by_examples["predicted_one_hot"].numpy().argmax(1), outputs["predicted_index"].numpy())


def test_png_and_jpeg_of_the_same_pixels_are_served_alike(tmp_path):
    model = build_model(len(CLASSES), SIZE, [8], 8, 0.0, 1e-3)
    export_serving_model(model, TRAINER_CONFIG, str(tmp_path / "model"))
    served = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    jpeg = real_files("monocyte", 1)[0].read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(png, format="PNG")
    jpeg_probs = served(**{SERVING_INPUT: tf.constant([jpeg])})["probabilities"].numpy()
    png_probs = served(**{SERVING_INPUT: tf.constant([png.getvalue()])})["probabilities"].numpy()
    np.testing.assert_allclose(jpeg_probs, png_probs, atol=0.02)


def test_augmentation_only_in_training():
    augmenter = build_augmenter(CONFIG.augmentation)
    images = tf.random.stateless_uniform([8, SIZE, SIZE, 3], seed=[1, 2])
    augmented = augmenter(images, training=True)
    assert augmented.shape == images.shape
    assert float(tf.reduce_mean(tf.abs(augmented - images))) > 0.01
    assert 0.0 <= float(tf.reduce_min(augmented)) and float(tf.reduce_max(augmented)) <= 1.0
    np.testing.assert_array_equal(augmenter(images, training=False).numpy(), images.numpy())
    assert [layer.__class__.__name__ for layer in augmenter.layers] == [
        "RandomGeometry", "ColourJitter",
    ]
    with_convolution = build_augmenter(dataclasses.replace(CONFIG.augmentation, random_convolution=0.5))
    assert with_convolution.layers[-1].__class__.__name__ == "RandomConvolution"


def test_central_crop_keeps_the_centre():
    pixels = np.zeros((100, 100, 3), np.uint8)
    pixels[25:75, 25:75] = 255  # a white square filling the central half
    encoded = tf.io.encode_png(pixels)
    full = preprocess_image(encoded, preprocessing(image_size=20, central_crop=1.0, cell_window=0.0)).numpy()
    cropped = preprocess_image(encoded, preprocessing(image_size=20, central_crop=0.5, cell_window=0.0)).numpy()
    assert full.shape == cropped.shape == (20, 20, 3)
    assert cropped.min() == 1.0  # only the white square is left
    assert full[0, 0, 0] == 0.0 and full[10, 10, 0] == 1.0


def test_served_model_refuses_bombs_and_non_images_before_decoding(tmp_path):
    model = build_model(len(CLASSES), SIZE, [8], 8, 0.0, 1e-3)
    export_serving_model(model, TRAINER_CONFIG, str(tmp_path / "model"))
    served = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    good = real_files("basophil", 1)[0].read_bytes()
    assert served(**{SERVING_INPUT: tf.constant([good])})["probabilities"].shape == (1, len(CLASSES))
    bad = {
        "max_image_pixels": png_header(20000, 20000),
        "min_side": png_header(0, 0),
        "not a JPEG or PNG": b"GIF89a not accepted",
        "not a JPEG or PNG ": b"",
    }
    for message, data in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message.strip()):
            served(**{SERVING_INPUT: tf.constant([good, data])})


def test_served_model_applies_the_operating_point(tmp_path):
    """Calibrated probabilities, the myeloblast alert and needs_review follow the stored operating point."""
    files = real_files("myeloblast", 2) + real_files("seg_neutrophil", 2) + real_files("monocyte", 2)
    write_examples(tmp_path / "data.gz", files)
    images, _ = next(iter(make_dataset([str(tmp_path / "data.gz")], CONFIG.preprocessing, batch_size=8)))
    model = build_model(len(CLASSES), SIZE, [8, 16], 16, 0.0, 1e-3)
    point = OperatingPoint(temperature=2.5, threshold=0.2, review_confidence=0.6)
    export_serving_model(model, TRAINER_CONFIG, str(tmp_path / "model"), point)
    outputs = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"](
        **{SERVING_INPUT: tf.constant([f.read_bytes() for f in files])}
    )
    expected = scale(averaged_probabilities(model, images, TRAINER_CONFIG.preprocessing.test_time_views).numpy(), 2.5)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    critical = CLASSES.index("myeloblast")
    np.testing.assert_array_equal(outputs["myeloblast_alert"].numpy(), alerts(expected, critical, 0.2))
    np.testing.assert_array_equal(outputs["needs_review"].numpy(), expected.max(axis=1) < 0.6)
    stored = json.loads((tmp_path / "model" / "assets.extra" / "operating_point.json").read_text())
    assert stored["temperature"] == 2.5 and stored["threshold"] == 0.2


def synthetic_cell(magnification: float, centre: tuple[int, int] = (150, 150), side: int = 300) -> tf.Tensor:
    """A PNG of a purple nucleus in a pink cell on a pale background, with two red cells, at a magnification."""
    y, x = np.mgrid[0:side, 0:side]
    pixels = np.full((side, side, 3), (235, 225, 215), np.uint8)
    for (cy, cx), radius, colour in (
        ((40, 40), 22, (215, 160, 160)), ((260, 250), 22, (215, 160, 160)),  # red cells, same in both
        (centre, 48 * magnification, (225, 190, 205)),  # cytoplasm
        ((centre[0] - 4 * magnification, centre[1] + 3 * magnification), 28 * magnification, (95, 45, 140)),  # nucleus
    ):  # fmt: skip
        pixels[(y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = colour
    return tf.io.encode_png(pixels)


def test_cell_window_sees_a_cell_at_one_size_whatever_the_magnification():
    settings = preprocessing(image_size=48, cell_window=6.0)
    near, far = (preprocess_image(synthetic_cell(m), settings).numpy() for m in (1.5, 1.0))
    assert np.abs(near - far).mean() < 0.01  # the same cell, whatever the scanner's magnification
    central = preprocessing(image_size=48, central_crop=0.8, cell_window=0.0)
    near, far = (preprocess_image(synthetic_cell(m), central).numpy() for m in (1.5, 1.0))
    assert np.abs(near - far).mean() > 0.03  # a fixed crop shows them at different sizes


def test_cell_window_is_centred_on_the_nucleus_and_stays_inside_the_image():
    image = tf.io.decode_png(synthetic_cell(1.0, centre=(120, 180)))
    top, left, height, width = image_window(image, preprocessing(cell_window=6.0)).numpy()
    assert height == width and 0 <= top and 0 <= left and top + height <= 300 and left + width <= 300
    assert abs(top + height / 2 - 116) <= 4 and abs(left + width / 2 - 183) <= 4  # the nucleus centre
    corner = tf.io.decode_png(synthetic_cell(1.0, centre=(40, 260)))
    top, left, height, width = image_window(corner, preprocessing(cell_window=6.0)).numpy()
    assert 0 <= top and left + width <= 300  # shifted inside, not padded
