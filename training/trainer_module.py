"""TFX Trainer module: tf.Examples -> preprocessing -> augmentation -> CNN -> SavedModel for serving."""

from __future__ import annotations

import logging
import time
from typing import Any

import keras_tuner
import numpy as np
import tensorflow as tf
import tf_keras as keras
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.components.tuner.component import TunerFnResult

from contracts.artifacts import HISTORY_FILE, TRAINED_OPERATING_POINT_FILE, write_json
from contracts.config import Augmentation, Preprocessing
from contracts.precision import bfloat16_rewrite
from training.augmentation import (
    at_another_magnification,
    build_augmenter,
    in_another_sites_colours,
    magnification_choices,
    site_look,
    to_grayscale,
)
from training.export import export_serving_model
from training.model import build_model
from training.operating_point import OperatingPoint, fit_operating_point
from training.outputs import Outputs, outputs_of
from training.preprocessing import preprocess_image, training_examples
from training.sampling import balanced_dataset
from training.test_time_views import averaged_probabilities
from training.trainer_config import TrainerConfig
from training.tuning import search_space, with_hyperparameters

VALIDATION_BATCH_SIZE = 256  # the eval split scored after each epoch (batch norm in inference mode: the answers
#   do not depend on it): a pass took 0.76 s against 1.27 s in training batches of 32 (2-core CPU), two per epoch


def _matching_files(file_patterns: list[str]) -> list[str]:
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no tf.Example files match {file_patterns}")
    return files


def make_dataset(
    file_patterns: list[str], preprocessing: Preprocessing, batch_size: int, outputs: Outputs | None = None
) -> tf.data.Dataset:
    """Reads gzipped tf.Examples and yields preprocessed (images, labels) batches, in file order; with
    `outputs`, an out-of-scope example's label is its cell type's output."""
    output_of = outputs.output_of if outputs else (lambda label, _: label)
    dataset = training_examples(_matching_files(file_patterns)).map(
        lambda image, label, _, cell: (preprocess_image(image, preprocessing), output_of(label, cell)),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).cache()
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_preprocessed(
    file_patterns: list[str], preprocessing: Preprocessing, outputs: Outputs | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every example of a split, preprocessed: (images [N, size, size, 3] float32, labels, sites); labels as
    in `make_dataset`."""
    output_of = outputs.output_of if outputs else (lambda label, _: label)
    dataset = training_examples(_matching_files(file_patterns)).map(
        lambda image, label, site, cell: (preprocess_image(image, preprocessing), output_of(label, cell), site),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    images, labels, sites = [], [], []
    for batch in dataset.batch(256):
        images.append(batch[0].numpy())
        labels.append(batch[1].numpy())
        sites.append(batch[2].numpy().astype(str))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(sites)


def make_train_dataset(
    file_patterns: list[str],
    preprocessing: Preprocessing,
    batch_size: int,
    augmentation: Augmentation,
    site_power: float,
    seed: int,
    look_pairs: bool = False,
    outputs: Outputs | None = None,
) -> tuple[tf.data.Dataset, int]:
    """Endless training batches drawn class x site balanced (`sampling.group_weights`), augmented when
    `augmentation.enabled` (another site's magnification and the site look per image, then the batch
    augmenter), and the number of steps that make one epoch (one pass's worth of images). With `look_pairs`
    each batch is ((images, the images in another site's colours), labels), for a `LookConsistentModel`."""
    images, labels, sites = load_preprocessed(file_patterns, preprocessing, outputs)
    names, codes = np.unique(sites, return_inverse=True)
    dataset = balanced_dataset(images, labels, codes, site_power, seed)
    augmenter = build_augmenter(augmentation) if augmentation.enabled else None
    if augmenter is not None:
        choices = tf.ragged.constant(magnification_choices(names.tolist(), augmentation.site_magnification))
        look = {
            "max_blur": augmentation.blur,
            "jpeg_quality": tuple(augmentation.jpeg_quality),
            "max_sharpen": augmentation.sharpen,
        }

        def per_image(image: tf.Tensor, label: tf.Tensor, site: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            image = at_another_magnification(image, choices[site], augmentation.magnification_swap)
            return site_look(image, **look), label, site

        dataset = dataset.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size)
    if augmenter is not None:
        dataset = dataset.map(lambda x, y, site: (augmenter(x, training=True), y, site), num_parallel_calls=tf.data.AUTOTUNE)
    if look_pairs:
        dataset = dataset.map(lambda x, y, site: ((x, in_another_sites_colours(x, site)), y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda x, y, site: (x, y))
    return dataset.prefetch(tf.data.AUTOTUNE), max(1, len(labels) // batch_size)


class EpochLog(keras.callbacks.Callback):
    """Logs one line per epoch with the metrics, learning rate and elapsed time."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs, self.start = epochs, time.time()
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        row = {k: float(v) for k, v in (logs or {}).items()}
        row["lr"] = float(keras.backend.get_value(self.model.optimizer.learning_rate))
        row["epoch"] = epoch + 1
        self.rows.append(row)
        logging.info(
            "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  gray val_acc %s  lr %.2g  (%.0f s)",
            epoch + 1,
            self.epochs,
            row.get("loss", 0),
            row.get("accuracy", 0),
            row.get("val_loss", 0),
            row.get("val_accuracy", 0),
            f"{row['val_grayscale_accuracy']:.4f}" if "val_grayscale_accuracy" in row else "-",
            row["lr"],
            time.time() - self.start,
        )


class Validation(keras.callbacks.Callback):
    """Scores the eval split after each epoch: logs `val_loss` and `val_accuracy` and, with `grayscale`, the
    eval split's grayscale copy (`val_grayscale_loss`, `val_grayscale_accuracy`) and `val_selection_loss`, the
    mean of the clean and grayscale eval loss.

    Monitoring that mean picks the checkpoint that reads cells in either form, rather than the one that
    happens to lean most on the stain colour. Must come before the callbacks that monitor it, and after
    `WeightAverage` (it scores the weights the model holds at the end of the epoch)."""

    def __init__(self, eval_ds: tf.data.Dataset, grayscale: bool):
        super().__init__()
        self.dataset = eval_ds
        self.grayscale = eval_ds.map(lambda x, y: (to_grayscale(x), y)) if grayscale else None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs if logs is not None else {}
        clean = self.model.evaluate(self.dataset, verbose=0, return_dict=True)
        logs.update(val_loss=clean["loss"], val_accuracy=clean["accuracy"])
        if self.grayscale is not None:
            gray = self.model.evaluate(self.grayscale, verbose=0, return_dict=True)
            logs.update(val_grayscale_loss=gray["loss"], val_grayscale_accuracy=gray["accuracy"])
            logs["val_selection_loss"] = (clean["loss"] + gray["loss"]) / 2


class WeightAverage(keras.callbacks.Callback):
    """An exponential moving average of every weight of the model (batch-norm statistics too) over the
    training steps (Polyak averaging). At the end of each epoch the model takes the average, so validation,
    early stopping and the exported model see it; the raw weights come back before the next epoch. The
    decay of step t is min(`decay`, (1 + t) / (10 + t)), so the first steps do not leave the average at the
    initial weights. (The optimizer's own `use_ema` averages trainable weights only, without that warm-up,
    and swaps the average in only when training ends.)"""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        # Batch logs stay tensors: converting them to numpy after every step made training 50% slower.
        self._supports_tf_logs = True

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.step = tf.Variable(0.0, trainable=False)
        self.average = [tf.Variable(w, trainable=False) for w in self.model.weights]
        self.raw: list[np.ndarray] | None = None

    @tf.function
    def _update(self) -> None:
        self.step.assign_add(1.0)
        decay = tf.minimum(self.decay, (1.0 + self.step) / (10.0 + self.step))
        for average, weight in zip(self.average, self.model.weights, strict=True):
            average.assign(decay * average + (1.0 - decay) * weight)

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._update()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.raw is not None:
            self.model.set_weights(self.raw)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.raw = self.model.get_weights()
        self.model.set_weights([average.numpy() for average in self.average])


def training_stream_and_model(
    train_files: list[str], config: TrainerConfig, outputs: Outputs | None = None
) -> tuple[tf.data.Dataset, int, keras.Model]:
    """The configured training batches (`make_train_dataset`), the steps of one epoch, and the compiled CNN
    with `outputs` (default: those the train files need, `outputs_of`)."""
    outputs = outputs or outputs_of(_matching_files(train_files), len(config.classes))
    training = config.training
    train_ds, steps = make_train_dataset(
        train_files,
        config.preprocessing,
        training.batch_size,
        config.augmentation,
        training.site_weight_power,
        training.seed,
        look_pairs=training.look_consistency > 0,
        outputs=outputs,
    )
    return train_ds, steps, configured_model(config, outputs.count)


def configured_model(config: TrainerConfig, outputs: int | None = None) -> keras.Model:
    """The compiled CNN of the config (untrained), with `outputs` outputs (default: one per class)."""
    training = config.training
    return build_model(
        outputs or len(config.classes),
        config.preprocessing.image_size,
        training.filters,
        training.dense_units,
        training.dropout,
        training.learning_rate,
        training.mixstyle,
        training.look_consistency,
    )


def fit(
    train_files: list[str], eval_files: list[str], config: TrainerConfig, epochs: int
) -> tuple[keras.Model, list[dict[str, float]], tf.data.Dataset]:
    """Trains the CNN with early stopping and learning-rate reduction, and with `training.weight_average` the
    average of its weights over the last steps: (model, per-epoch history, eval data)."""
    training = config.training
    keras.utils.set_random_seed(training.seed)
    outputs = outputs_of(_matching_files(train_files), len(config.classes))
    if outputs.cell_types:
        logging.info("Trainer: out of scope learnt as one output per cell type: %s", ", ".join(outputs.cell_types))
    train_ds, steps, model = training_stream_and_model(train_files, config, outputs)
    eval_ds = make_dataset(eval_files, config.preprocessing, training.batch_size, outputs)
    epoch_log = EpochLog(epochs)
    monitor = "val_selection_loss" if training.grayscale_validation else "val_loss"
    callbacks = [
        *([WeightAverage(training.weight_average)] if training.weight_average else []),
        Validation(eval_ds.rebatch(VALIDATION_BATCH_SIZE), training.grayscale_validation),
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=training.early_stopping_patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor,
            factor=training.reduce_lr_factor,
            patience=training.reduce_lr_patience,
            min_lr=1e-6,
        ),
        epoch_log,
    ]
    class_weight = {k: 1.0 for k in range(outputs.count)}
    class_weight[config.critical_index] = training.critical_class_weight
    with bfloat16_rewrite(training.precision) as in_bfloat16:
        logging.info("Trainer: training steps in %s", "bfloat16 (oneDNN)" if in_bfloat16 else "float32")
        model.fit(
            train_ds,
            steps_per_epoch=steps,
            epochs=epochs,
            callbacks=callbacks,
            class_weight=class_weight,
            verbose=0,  # EpochLog logs each epoch once
        )
    return model, epoch_log.rows, eval_ds


def train(
    train_files: list[str], eval_files: list[str], config: TrainerConfig, serving_model_dir: str, run_dir: str
) -> list[dict[str, float]]:
    """Trains, fits the operating point on the eval split, exports the model and writes the history."""
    model, history, eval_ds = fit(train_files, eval_files, config, config.training.epochs)
    operating_point = choose_operating_point(model, eval_ds, config)
    export_serving_model(model, config, serving_model_dir, operating_point)
    write_json(run_dir, HISTORY_FILE, history)
    write_json(run_dir, TRAINED_OPERATING_POINT_FILE, operating_point.as_dict())
    logging.info("Trainer: %d epochs, model exported to %s", len(history), serving_model_dir)
    return history


def choose_operating_point(model: keras.Model, eval_ds: tf.data.Dataset, config: TrainerConfig) -> OperatingPoint:
    """Calibration and the critical-class alert threshold, fitted on the eval split's served probabilities
    (averaged over the test-time views)."""
    views = config.preprocessing.test_time_views
    batches = [(averaged_probabilities(model, x, views).numpy(), y.numpy()) for x, y in eval_ds]
    probabilities, labels = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    screening = config.screening
    point = fit_operating_point(
        probabilities, labels, config.critical_index, screening.alert_recall, screening.review_confidence,
        len(config.classes), screening.out_of_scope_budget,
    )  # fmt: skip
    logging.info(
        "operating point: temperature %.3f, ECE %.4f -> %.4f; %s alert at p >= %.4f: eval recall %.4f, precision %.4f",
        point.temperature, point.ece_before, point.ece_after, config.critical_class, point.threshold,
        point.recall, point.precision,
    )  # fmt: skip
    if probabilities.shape[1] > len(config.classes):
        logging.info(
            "operating point: out of scope at p > %.4f: eval out-of-scope images caught %.4f, in-scope called out %.4f",
            point.out_of_scope_threshold, point.out_of_scope_caught, point.in_scope_called_out,
        )  # fmt: skip
    return point


def run_fn(fn_args: FnArgs) -> None:
    """TFX Trainer entry point; applies the Tuner's best hyperparameters when the Tuner ran."""
    config = TrainerConfig.from_dict(fn_args.custom_config)
    if fn_args.hyperparameters:
        values = keras_tuner.HyperParameters.from_config(fn_args.hyperparameters).values
        logging.info("Trainer: best hyperparameters from the Tuner: %s", values)
        config = with_hyperparameters(config, values)
    train(fn_args.train_files, fn_args.eval_files, config, fn_args.serving_model_dir, fn_args.model_run_dir)


class PipelineTuner(keras_tuner.RandomSearch):
    """Random search where each trial trains with the pipeline's own `fit` (datasets follow image_size)."""

    def __init__(self, files: tuple[list[str], list[str]], config: TrainerConfig, **kwargs: Any):
        super().__init__(hypermodel=None, objective=keras_tuner.Objective("val_accuracy", "max"), **kwargs)
        self.files, self.config = files, config

    def run_trial(self, trial: keras_tuner.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        config = with_hyperparameters(self.config, trial.hyperparameters.values)
        _, history, _ = fit(*self.files, config, self.config.tuning.epochs)
        return {"val_accuracy": max(row["val_accuracy"] for row in history)}


def tuner_fn(fn_args: FnArgs) -> TunerFnResult:
    """TFX Tuner entry point: random search over the config's `tuning.search_space`."""
    config = TrainerConfig.from_dict(fn_args.custom_config)
    tuner = PipelineTuner(
        (fn_args.train_files, fn_args.eval_files),
        config,
        hyperparameters=search_space(config.tuning.search_space),
        max_trials=config.tuning.max_trials,
        seed=config.training.seed,
        directory=fn_args.working_dir,
        project_name="bloodcell_tuning",
    )
    return TunerFnResult(tuner=tuner, fit_kwargs={})
