"""A site's own model from its unlabelled images (`bloodcell adapt`): the images are read and checked, the base
model adapted to the site's look (training.site_adaptation), the adaptation refused where it is unsafe, and the
adapted model published as the next version of the site's served model (contracts.site_models); a version can
be rolled back. The base model is never changed: every other site keeps its answers."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.atomic_pusher import publish
from components.file_listing import UnreadableFileError, list_files, read_file
from contracts.artifacts import (
    ADAPTATION_FILE,
    EXPORTED_OPERATING_POINT_FILE,
    EXPORTED_TRAINER_CONFIG_FILE,
    read_json,
    served_versions,
    write_json,
)
from contracts.config import Adaptation
from contracts.image_check import ImageRejectedError, Limits, check_image
from contracts.progress import progress
from contracts.signatures import PREDICTED_INDEX, PROBABILITIES, alert_output, site_model_name
from contracts.site_models import (
    ROLLED_BACK_FOLDER,
    AdaptationRecord,
    model_base_path,
    write_model_server_config,
)
from training.export import ServingModule, export_serving_model
from training.operating_point import OperatingPoint
from training.preprocessing import preprocess_batch
from training.site_adaptation import (
    adapted_to_site,
    batch_norm_layers,
    drift,
    entropy_tuned,
    exported_config,
    restored_model,
)
from training.trainer_config import TrainerConfig

log = logging.getLogger(__name__)
BLANK = "blank or a single colour"  # why such an image is not used
BLANK_SPREAD = 2.0  # an image whose values spread less than this (of 255) in every channel is blank or one colour
BATCH = 64


AUTO_METHODS = ("adabn", "balanced_adabn")  # adaptation.method auto: the candidates, measured in docs/results.md


class AdaptationRefusedError(RuntimeError):
    """An adaptation that is not made; the message names the cause."""


@dataclasses.dataclass(frozen=True)
class SiteImages:
    """A site's folder, read: the usable images (encoded, one per distinct content) and what was set aside."""

    images: list[bytes]
    files: list[str]  # the file of each image, relative to the folder
    rejected: dict[str, str]  # file -> why it is not used
    duplicates: int  # files whose bytes another file already had (used once)


def read_site_images(folder: str, limits: Limits) -> SiteImages:
    """Every file under `folder` (any layout; class folders are not read as labels): each readable, checked
    image with content of its own is used; every other file is rejected with the reason, or counted as a repeat."""
    images, files, rejected, seen, duplicates = [], [], {}, set(), 0
    listed = list_files(folder)
    for entry in progress(listed, desc="reading the site's images", unit="file"):
        if entry.problem:
            rejected[entry.relpath] = entry.problem
            continue
        try:
            data = read_file(os.path.join(folder, entry.relpath))
            checked = check_image(data, limits)
        except (UnreadableFileError, ImageRejectedError) as err:
            rejected[entry.relpath] = str(err)
            continue
        digest = hashlib.sha256(np.asarray(checked.pixels).tobytes()).hexdigest()
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        if float(np.asarray(checked.pixels, np.float32).reshape(-1, 3).std(axis=0).max()) < BLANK_SPREAD:
            rejected[entry.relpath] = BLANK
            continue
        images.append(checked.image_bytes)
        files.append(entry.relpath)
    return SiteImages(images, files, rejected, duplicates)


def check_enough(site_images: SiteImages, folder: str, min_images: int) -> None:
    """Refuses a folder with fewer than `min_images` usable, distinct images, saying what the rest were."""
    usable = len(site_images.images)
    if usable >= min_images:
        return
    reasons: dict[str, int] = {}
    for reason in site_images.rejected.values():
        kind = BLANK if reason == BLANK else "unreadable or not an image"
        reasons[kind] = reasons.get(kind, 0) + 1
    if site_images.duplicates:
        reasons["a repeat of another image"] = site_images.duplicates
    found = "; ".join(f"{n} {kind}" for kind, n in reasons.items())
    raise AdaptationRefusedError(
        f"{folder}: {usable} usable distinct images, adaptation needs at least {min_images}"
        + (f" (set aside: {found})" if found else "")
    )


def _preprocessed(images: list[bytes], config: TrainerConfig) -> np.ndarray:
    parts = [
        preprocess_batch(tf.constant(images[i : i + BATCH]), config.preprocessing)[0].numpy()
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class AdaptedModel:
    """A base model adapted to a site's images, and what was measured on them (labels never used)."""

    model: keras.Model
    method: str  # the method that made it (adabn, balanced_adabn or tent)
    blocks: int  # batch-norm blocks adapted, the first first
    drift: list[float]  # per block: `training.site_adaptation.drift` of the site under the base model
    share_base: float  # share of the site's images that raise the critical alert, base model
    share_adapted: float  # ... adapted model
    confident_alerts: int  # images whose alert the base model raises with confidence (settings.confident_alert)
    confident_alerts_kept: int  # ... that the adapted model raises too


def _adapted(
    base: keras.Model, pixels: np.ndarray, blocks: int, method: str, settings: Adaptation, predicted: np.ndarray
) -> keras.Model:
    start = base
    if method == "tent":
        start = entropy_tuned(base, pixels, blocks, settings.tent_steps, settings.tent_learning_rate)
    return adapted_to_site(start, pixels, blocks, None if method == "adabn" else predicted)


def adapted_for_site(
    base: keras.Model, config: TrainerConfig, point: OperatingPoint, images: list[bytes], settings: Adaptation, site: str
) -> AdaptedModel:
    """The base model adapted to the site's encoded images by `settings.method` (`auto`: plain and class-balanced
    AdaBN, and of those the safeguards accept, `check_alerts`, the one that raises the fewest alerts).
    AdaptationRefusedError when the images are too far from the training sites (drift) or every candidate would
    raise fewer alerts than the base model, or silence one it raises with confidence."""
    alert = alert_output(config.critical_class)
    pixels = _preprocessed(images, config)
    drifts = drift(base, pixels)
    if np.mean(drifts) > settings.max_drift:
        raise AdaptationRefusedError(
            f"{site}: the images are too far from what the model was trained on to be blood cells of this kind"
            f" (drift {np.mean(drifts):.2f} over adaptation.max_drift {settings.max_drift:g}; per block"
            f" {', '.join(f'{d:.2f}' for d in drifts)})"
        )
    base_answers = _served(ServingModule(base, config, point), images, alert)
    log.info("adapt: %d images of %s, drift %s", len(images), site, ", ".join(f"{d:.3f}" for d in drifts))
    blocks = min(settings.blocks, len(batch_norm_layers(base)))
    confident = base_answers[alert] & (base_answers[PROBABILITIES][:, config.critical_index] >= settings.confident_alert)
    accepted, refusals = [], []
    for method in AUTO_METHODS if settings.method == "auto" else (settings.method,):
        model = _adapted(base, pixels, blocks, method, settings, base_answers[PREDICTED_INDEX])
        answers = _served(ServingModule(model, config, point), images, alert)
        kept = int((confident & answers[alert]).sum())
        shares = float(base_answers[alert].mean()), float(answers[alert].mean())
        try:
            check_alerts(*shares, int(confident.sum()), kept, settings, f"{site} ({method})", config.critical_class)
        except AdaptationRefusedError as err:
            refusals.append(str(err))
            continue
        log.info("adapt: %s by %s: alert on %.1f%% of the images", site, method, 100 * answers[alert].mean())
        accepted.append((float(answers[alert].mean()), method, model, kept))
    if not accepted:
        raise AdaptationRefusedError("; ".join(refusals) + "; the base model keeps answering this site")
    share, method, model, kept = min(accepted, key=lambda candidate: candidate[0])
    return AdaptedModel(model, method, blocks, drifts, float(base_answers[alert].mean()), share, int(confident.sum()), kept)


def adapt_site(
    base_dir: str,
    folder: str,
    site: str,
    settings: Adaptation,
    limits: Limits,
    serving_root: str,
    model_name: str,
    base_version: int | None = None,
) -> AdaptationRecord:
    """Adapts the exported model in `base_dir` to the site's images in `folder` and publishes it as the next
    version of the site's served model under `serving_root` (and lists it in models.config). Raises
    AdaptationRefusedError, naming the cause."""
    site_name = site_model_name(model_name, site)  # checks the site's name first
    site_images = read_site_images(folder, limits)
    check_enough(site_images, folder, settings.min_images)
    if not tf.io.gfile.exists(os.path.join(base_dir, EXPORTED_TRAINER_CONFIG_FILE)):
        raise AdaptationRefusedError(
            f"{base_dir}: exported without {EXPORTED_TRAINER_CONFIG_FILE} (before adaptation existed): push a model"
            " trained with this version first"
        )
    config = exported_config(base_dir)
    point = OperatingPoint(**read_json(base_dir, EXPORTED_OPERATING_POINT_FILE))
    found = adapted_for_site(restored_model(base_dir, config), config, point, site_images.images, settings, site)
    with tempfile.TemporaryDirectory() as staging:
        export_serving_model(found.model, config, staging, point)
        base_path = model_base_path(serving_root, site_name)
        version = max(
            [int(datetime.datetime.now(datetime.timezone.utc).timestamp()), *(v + 1 for v in served_versions(base_path))]
        )
        record = AdaptationRecord(
            site=site,
            version=version,
            base_model=os.path.abspath(base_dir),
            base_version=base_version,
            method=found.method,
            blocks=found.blocks,
            images_used=len(site_images.images),
            images_rejected=site_images.rejected,
            duplicates=site_images.duplicates,
            drift=[round(d, 4) for d in found.drift],
            critical_share_base=round(found.share_base, 4),
            critical_share_adapted=round(found.share_adapted, 4),
            confident_alerts=found.confident_alerts,
            confident_alerts_kept=found.confident_alerts_kept,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        write_json(staging, ADAPTATION_FILE, record)
        published, _ = publish(staging, base_path)
    if published != version:
        record = dataclasses.replace(record, version=published)
        write_json(os.path.join(base_path, str(published)), ADAPTATION_FILE, record)
    write_model_server_config(serving_root, model_name)
    return record


def check_alerts(
    share_base: float, share_adapted: float, confident: int, kept: int, settings: Adaptation, site: str, critical: str
) -> None:
    """Refuses an adaptation that raises the alert on fewer of the site's images than the base model (beyond
    `settings.max_alert_share_drop`), or that silences more than `settings.max_confident_alerts_lost` of the alerts
    the base model raises with confidence: re-estimated statistics can follow the site's class mix rather than
    its look and lose blasts (measured in docs/results.md: a held-out Munich kept every confident alert and lost
    a third of its blasts)."""
    if share_adapted < share_base - settings.max_alert_share_drop:
        raise AdaptationRefusedError(
            f"{site}: the adapted model raises the {critical} alert on {share_adapted:.1%} of the site's images, the"
            f" base model on {share_base:.1%} (allowed drop: adaptation.max_alert_share_drop"
            f" {settings.max_alert_share_drop:.1%}): it could lose {critical}s"
        )
    lost = confident - kept
    if lost > settings.max_confident_alerts_lost * confident:
        raise AdaptationRefusedError(
            f"{site}: the adapted model silences {lost} of the {confident} {critical} alerts the base model raises with"
            f" confidence >= {settings.confident_alert:g} on the site's images (allowed:"
            f" adaptation.max_confident_alerts_lost {settings.max_confident_alerts_lost:.0%}): it would lose"
            f" {critical}s"
        )


def _served(module: ServingModule, images: list[bytes], alert: str) -> dict[str, np.ndarray]:
    """The served answers (probabilities, predicted index, alert) of a model for encoded images."""
    batches = [module.serve_images(tf.constant(images[i : i + BATCH])) for i in range(0, len(images), BATCH)]
    return {key: np.concatenate([b[key].numpy() for b in batches]) for key in (PROBABILITIES, PREDICTED_INDEX, alert)}


def rollback_site(serving_root: str, model_name: str, site: str) -> tuple[int, int | None]:
    """Takes the newest version of the site's model back (moved to <serving_root>/.rolled-back/, kept for the
    record): (the version taken back, the version that answers now; None: the base model). Raises
    AdaptationRefusedError when the site has no version."""
    name = site_model_name(model_name, site)
    base_path = model_base_path(serving_root, name)
    versions = served_versions(base_path)
    if not versions:
        raise AdaptationRefusedError(f"{site}: no adapted version under {base_path} to roll back; the base model answers")
    kept = os.path.join(serving_root, ROLLED_BACK_FOLDER, name)
    os.makedirs(kept, exist_ok=True)
    shutil.move(os.path.join(base_path, str(versions[-1])), os.path.join(kept, str(versions[-1])))
    write_model_server_config(serving_root, model_name)
    return versions[-1], versions[-2] if len(versions) > 1 else None
