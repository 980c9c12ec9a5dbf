"""The shortcut audit: does the model classify cells, or image sources?

Four checks on the test split, beside the CNN's clean figures:
- a colour-only baseline (colour histogram + logistic regression, fitted on the train split);
- accuracy and per-class recall within each acquisition group (size and background tone, from pixels);
- accuracy and per-class recall at each site, and the classes whose training images all come from one
  site (the model may have learnt that site's look for them: nothing on this data can show otherwise);
- the CNN on stress variants: grayscale, one reference stain, each group resampled to the size and
  magnification of another group, and each image in the colours and magnification of an image of that
  other group (another site's look: what a new scanner shows the model), or in that group's stains (a second
  colour move: the two stains' hues change, not only their amounts as in training's stain jitter).

The variants are made at 1/VARIANT_REDUCTION of each side: the model sees its window (288 to 320 px of these
images) area-resized to 96 px, so the content reaches it alike, for a quarter of the pixel work.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from components.audit import acquisition, stress
from contracts.progress import progress

HISTOGRAM_BINS = 16  # per channel: 48 features
STAIN_REFERENCE_IMAGES = 200  # train images whose median stain is the reference
SCALE_SAMPLE = 60  # images per group whose median red-cell diameter gives the group's scale
VARIANT_WORKERS = 2  # threads making stress variants while the model answers the ones made before
VARIANT_AHEAD = 32  # variants made ahead of the model at most (a 200 px PNG is 120 kB)
VARIANT_REDUCTION = 2  # stress variants are made at half of each side (module docstring)

T = TypeVar("T")



@dataclass(frozen=True)
class Predictions:
    """The served model's answer for each image: the top class's index, and whether the critical-class alert
    (its calibrated operating point, which may also flag images whose top class is another) was raised."""

    indices: np.ndarray
    alerts: np.ndarray

    @staticmethod
    def joined(parts: Sequence[Predictions]) -> Predictions:
        """The answers of consecutive batches, as one."""
        return Predictions(np.concatenate([p.indices for p in parts]), np.concatenate([p.alerts for p in parts]))


Predict = Callable[[Iterable[bytes]], Predictions]  # encoded images, consumed as they come -> the model's answers


def colour_histogram(image: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Per-channel colour histogram, normalised to sum to 1 per channel: no shape information at all."""
    pixels = image.reshape(-1, 3).astype(np.int64) * bins // 256  # uint8 levels -> bin index (np.histogram's bins, 3x faster)
    return np.concatenate([np.bincount(pixels[:, c], minlength=bins) / len(pixels) for c in range(3)])


def colour_baseline(
    train_histograms: np.ndarray, train_labels: Sequence[int], test_images: Sequence[np.ndarray]
) -> np.ndarray:
    """Fits logistic regression on the train images' colour histograms; predicts the test images."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    model.fit(train_histograms, np.asarray(train_labels))
    return model.predict(np.stack([colour_histogram(i) for i in test_images]))


def read_train_split(train_images: Iterable[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One pass over the (lazily decoded) train images: every colour histogram, and the first
    STAIN_REFERENCE_IMAGES images for the reference stain. Keeps memory to the test split's size."""
    histograms, kept = [], []
    for image in train_images:
        histograms.append(colour_histogram(image))
        if len(kept) < STAIN_REFERENCE_IMAGES:
            kept.append(image)
    return np.stack(histograms), kept


def figures(
    labels: Sequence[int],
    predicted: Sequence[int],
    classes: list[str],
    critical_class: str,
    alerts: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Count, accuracy, recall per class present, the critical class's recall and, with the model's `alerts`,
    the share of critical-class images it raised the alert for (each None when there are none)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    recall = {
        name: float(np.mean(predicted[labels == k] == k)) for k, name in enumerate(classes) if np.any(labels == k)
    }
    critical = labels == classes.index(critical_class)
    return {
        "count": int(len(labels)),
        "accuracy": float(np.mean(labels == predicted)) if len(labels) else float("nan"),
        "recall": recall,
        "critical_recall": recall.get(critical_class),
        "critical_alert_recall": float(np.mean(np.asarray(alerts)[critical])) if alerts is not None and critical.any() else None,
    }


def figures_by(
    keys: Sequence[str], labels: Sequence[int], predictions: Predictions, classes: list[str], critical_class: str
) -> dict[str, dict[str, Any]]:
    """`figures` within each value of `keys` (an acquisition group or a site per image), sorted by key."""
    keys, labels = np.asarray(keys), np.asarray(labels)
    return {
        key: figures(
            labels[keys == key], predictions.indices[keys == key], classes, critical_class, predictions.alerts[keys == key]
        )
        for key in sorted(set(keys.tolist()))
    }


MIN_SITE_IMAGES = 30  # a site is a source of a class for the model when training has this many of its images


def images_per_class_and_site(labels: Sequence[int], sites: Sequence[str], classes: list[str]) -> dict[str, dict[str, int]]:
    """Every class's images per site, every site of the images named (0 where a site has none of a class)."""
    counts = Counter(zip(labels, sites, strict=True))
    return {
        name: {site: counts[(index, site)] for site in sorted(set(sites))}
        for index, name in enumerate(classes)
        if any(counts[(index, site)] for site in set(sites))
    }


def single_site_classes(per_site: dict[str, dict[str, int]], minimum: int = MIN_SITE_IMAGES) -> dict[str, str]:
    """The classes that training has from one site only, or from one site and a few images (under `minimum`)
    of others: {class: that site}."""
    single = {}
    for name, counts in per_site.items():
        sources = [site for site, n in counts.items() if n >= minimum] or [max(counts, key=counts.get)]
        if len(sources) == 1:
            single[name] = sources[0]
    return single


def group_geometry(images: Sequence[np.ndarray], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per acquisition group: image count, the most common (height, width) and the median red-cell diameter."""
    geometry = {}
    for group, count in Counter(groups).most_common():
        members = [i for i, g in zip(images, groups, strict=True) if g == group]
        shape = Counter(m.shape[:2] for m in members).most_common(1)[0][0]
        diameters = [acquisition.red_cell_diameter(m) for m in members[:SCALE_SAMPLE]]
        diameter = float(np.nanmedian(diameters)) if not np.all(np.isnan(diameters)) else float("nan")
        geometry[group] = {"count": count, "size": list(shape), "red_cell_diameter": diameter}
    return geometry


def swap_targets(geometry: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each group's counterpart for the geometry swap: the largest group with another image size."""
    targets = {}
    for group, info in geometry.items():
        others = [g for g, o in geometry.items() if o["size"] != info["size"]]  # ordered largest first
        if others:
            targets[group] = others[0]
    return targets


def swap_geometry(image: np.ndarray, own: dict[str, Any], target: dict[str, Any], reduction: int = 1) -> np.ndarray:
    """Resamples an image to the target group's size and magnification (ratio of red-cell diameters); an
    image reduced `reduction` times (each side) goes to the target's size reduced as much."""
    scale = target["red_cell_diameter"] / own["red_cell_diameter"]
    if not np.isfinite(scale):
        scale = target["size"][0] / own["size"][0]
    return stress.rescale(image, scale, (target["size"][0] // reduction, target["size"][1] // reduction))


def encode_png(image: np.ndarray) -> bytes:
    """A lossless PNG without compression (stored zlib blocks, no row filter) of a uint8 RGB image: five
    stress variants of every test image are encoded; Pillow's compress_level 0 took 5 ms for a 400 px image."""
    height, width = image.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), np.ascontiguousarray(image).reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, no filter, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)) + chunk(b"IEND", b"")


def prefetched(function: Callable[..., T], arguments: Iterable[tuple], workers: int, ahead: int) -> Iterator[T]:
    """`function(*a)` for each `a` of `arguments`, in order, computed by `workers` threads at most `ahead`
    results before the consumer takes them: numpy, PIL and TensorFlow release the GIL, so the stress
    variants are made on the cores the model's batches leave idle."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[T]] = deque()
        for item in arguments:
            pending.append(pool.submit(function, *item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def run_audit(
    train_images: Iterable[np.ndarray],
    train_labels: Sequence[int],
    train_sites: Sequence[str],
    test_images: Sequence[np.ndarray],
    test_labels: Sequence[int],
    test_sites: Sequence[str],
    test_bytes: Sequence[bytes],
    predict: Predict,
    classes: list[str],
    critical_class: str,
    max_stress_drop: float,
    min_stress_critical_recall: float,
) -> dict[str, Any]:
    """All audit figures as one JSON-ready dict; `predict` runs the model on encoded images (a variant's
    images are encoded as `predict` consumes them, never all held). `train_images` come at 1/VARIANT_REDUCTION
    of each side: their colour histograms are compared with those of the test images reduced as much."""
    groups = [acquisition.signature(i) for i in test_images]
    reduced = [stress.reduce(image, VARIANT_REDUCTION) for image in test_images]
    clean_predicted = predict(test_bytes)
    clean = figures(test_labels, clean_predicted.indices, classes, critical_class, clean_predicted.alerts)
    train_histograms, reference_images = read_train_split(train_images)
    logging.info("audit: colour-histogram baseline on %d train images", len(train_histograms))
    baseline = figures(test_labels, colour_baseline(train_histograms, train_labels, reduced), classes, critical_class)

    per_group = figures_by(groups, test_labels, clean_predicted, classes, critical_class)
    per_site = figures_by(test_sites, test_labels, clean_predicted, classes, critical_class)
    train_site_coverage = images_per_class_and_site(train_labels, train_sites, classes)

    geometry = group_geometry(test_images, groups)
    targets = swap_targets(geometry)
    reference = stress.reference_stain(reference_images)
    members = {group: [i for i, g in enumerate(groups) if g == group] for group in geometry}

    def geometry_swapped(image: np.ndarray, group: str, index: int) -> np.ndarray:
        """The size and magnification of the counterpart group."""
        if group not in targets:
            return image
        return swap_geometry(image, geometry[group], geometry[targets[group]], VARIANT_REDUCTION)

    def look_swapped(image: np.ndarray, group: str, index: int) -> np.ndarray:
        """The colours of an image of the counterpart group (taken in turn), then its size and magnification."""
        if group not in targets:
            return image
        target = members[targets[group]]
        return geometry_swapped(stress.take_colours(image, reduced[target[index % len(target)]]), group, index)

    stains = {g: stress.fit_stains([reduced[i] for i in members[g][:SCALE_SAMPLE]]) for g in set(targets.values())}

    def stain_swapped(image: np.ndarray, group: str, index: int) -> np.ndarray:
        """The stains of the counterpart group (Macenko vectors of its first images), then its size and
        magnification."""
        if group not in targets or stains[targets[group]] is None:
            return image
        return geometry_swapped(stress.swap_stains(image, stains[targets[group]]), group, index)

    transforms: dict[str, Callable[[np.ndarray, str, int], np.ndarray]] = {
        "grayscale": lambda image, group, index: stress.grayscale(image),
        "stain_normalised": lambda image, group, index: stress.normalise_stain(image, reference),
        "geometry_swapped": geometry_swapped,
        "look_swapped": look_swapped,
        "stain_swapped": stain_swapped,
    }

    def stressed(transform: Callable[[np.ndarray, str, int], np.ndarray], index: int, group: str) -> bytes:
        """One test image's variant, as the PNG bytes the served signature takes."""
        return encode_png(transform(reduced[index], group, index))

    variants = {}
    for name, transform in transforms.items():
        encoded = prefetched(
            stressed, ((transform, index, group) for index, group in enumerate(groups)), VARIANT_WORKERS, VARIANT_AHEAD
        )
        predicted = predict(progress(encoded, total=len(groups), desc=f"stress {name}", unit="img"))
        result = figures(test_labels, predicted.indices, classes, critical_class, predicted.alerts)
        result["drop"] = clean["accuracy"] - result["accuracy"]
        result["passes"] = bool(
            result["drop"] <= max_stress_drop
            and (result["critical_recall"] is None or result["critical_recall"] >= min_stress_critical_recall)
        )
        variants[name] = result
        logging.info("audit: %s accuracy %.4f (drop %.4f)", name, result["accuracy"], result["drop"])
    return {
        "clean": clean,
        "colour_baseline": baseline,
        "morphology_gain": clean["accuracy"] - baseline["accuracy"],
        "groups": per_group,
        "sites": per_site,
        "train_sites_per_class": train_site_coverage,
        "single_site_classes": single_site_classes(train_site_coverage),
        "geometry": {g: {**info, "swapped_to": targets.get(g)} for g, info in geometry.items()},
        "stain_reference": {"lab_mean": reference[0].tolist(), "lab_std": reference[1].tolist()},
        "stress": variants,
        "bars": {"max_stress_drop": max_stress_drop, "min_stress_critical_recall": min_stress_critical_recall},
        "passes": all(v["passes"] for v in variants.values()),
    }
