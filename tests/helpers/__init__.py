"""Helpers shared by the tests: the config, generated images, real samples from ../shared, small models.

Test modules import from here (and from each other never); fixtures live in conftest.py."""

from __future__ import annotations

import dataclasses
import io
import shutil
import socket
from pathlib import Path

import numpy as np
from PIL import Image

from contracts.config import DEFAULT_CONFIG, load_config
from contracts.data_roots import DataRoot
from contracts.features import OUT_OF_SCOPE
from pipelines.configs import trainer_config

REPO_ROOT = DEFAULT_CONFIG.parent
CONFIG = load_config(DEFAULT_CONFIG)
CLASSES = CONFIG.classes
DATA_ROOTS = CONFIG.paths.data_roots  # the real sites' folders in ../shared/data
REAL_DATA = Path(DATA_ROOTS[0].path)  # the five-class folder
TRAINER_CONFIG = trainer_config(CONFIG)
# The small CNN of the exported test models (`export_model`): two blocks, a 16-unit dense layer, no dropout.
SMALL_TRAINER_CONFIG = dataclasses.replace(
    TRAINER_CONFIG, training=dataclasses.replace(TRAINER_CONFIG.training, filters=[8, 16], dense_units=16, dropout=0.0)
)


def image_bytes(fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    """A random image of the given mode and size, encoded in the given format."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16), "I;16")
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8), "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def real_files(class_name: str, count: int, root: Path = REAL_DATA) -> list[Path]:
    """The first `count` real images of a class in a data root (sorted by name)."""
    return sorted(p for p in (root / class_name).iterdir() if p.is_file())[:count]


def write_examples(path: Path, files: list[Path]) -> None:
    """The ingestion's tf.Examples of real files (of any configured root; out of scope, those of the
    out-of-scope root), as one gzipped TFRecord file."""
    import tensorflow as tf

    from components.image_example_gen import to_example
    from components.image_verification import Candidate, verify_image
    from components.site_resolver import SiteResolver
    from contracts.image_check import Limits

    limits = Limits(max_pixels=10**8, min_side=8, max_file_bytes=10**8)
    resolvers = {r.name: SiteResolver(r) for r in DATA_ROOTS}
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for file in files:
            sites = resolvers[file.parent.parent.name]
            relpath = f"{file.parent.name}/{file.name}"
            label = OUT_OF_SCOPE if sites.root.out_of_scope else file.parent.name
            record = verify_image(Candidate(sites.root, relpath, label, sites.site_of(relpath)), limits)
            writer.write(to_example(record, [*CLASSES, OUT_OF_SCOPE]))


def make_real_subset(root: Path, per_class: int, source: Path = REAL_DATA) -> Path:
    """Copies the first `per_class` real images of every class folder of `source` (cell-type folder, for the
    out-of-scope root) into root/<class>/, with the rows of `source`'s MANIFEST.csv that name them."""
    copied = set()
    for name in sorted(p.name for p in source.iterdir() if p.is_dir()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for path in real_files(name, per_class, source):
            shutil.copy(path, root / name / path.name)
            copied.add(f"{name}/{path.name}")
    manifest = source / "MANIFEST.csv"
    if manifest.exists():
        header, *rows = manifest.read_text().splitlines()
        kept = [row for row in rows if row.split(",")[1] in copied]
        (root / "MANIFEST.csv").write_text("\n".join([header, *kept]) + "\n")
    return root


def make_site_subsets(root: Path, per_class: dict[str, int]) -> list[Path]:
    """Real subsets of the configured roots named in `per_class` (that many images of each class, by root
    folder name) in root/<root name>/, each with its MANIFEST.csv rows: several sites, as the default config has."""
    return [make_real_subset(root / r.name, per_class[r.name], Path(r.path)) for r in DATA_ROOTS if r.name in per_class]


def subset_roots(subsets: list[Path]) -> list[DataRoot]:
    """The data roots of `make_site_subsets`' folders, with the role of the configured root of that name."""
    roles = {r.name: r.role for r in DATA_ROOTS}
    return [DataRoot(str(p), role=roles[p.name]) for p in subsets]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG that declares the given size: enough for a header check, not a full image."""
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02"


def bomb_png(side: int = 20000) -> bytes:
    """A real, small PNG file of side x side pixels (1-bit, all black): a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def export_model(export_dir: Path, favour: str | None = None, seed: int = 0) -> Path:
    """Exports a small CNN (five classes and one out-of-scope output) through the project's
    export code. With `favour` (a class or `out_of_scope`), the output layer is set to answer that for every
    image (to tell versions apart); otherwise weights are random (seeded)."""
    import tf_keras as keras

    from training.export import export_serving_model
    from training.model import build_model

    keras.utils.set_random_seed(seed)
    config = SMALL_TRAINER_CONFIG
    training = config.training
    model = build_model(len(CLASSES) + 1, config.preprocessing.image_size, training.filters, training.dense_units, 0.0, 1e-3)
    if favour is not None:
        output = model.get_layer("probabilities")
        kernel, bias = output.get_weights()
        bias[:] = 0.0
        bias[[*CLASSES, OUT_OF_SCOPE].index(favour)] = 8.0
        output.set_weights([np.zeros_like(kernel), bias])
    export_serving_model(model, config, str(export_dir))
    return export_dir


def smear(size=(120, 100), background=(240, 210, 190), cell=(120, 60, 160), radius=20) -> np.ndarray:
    """A synthetic smear: a dark purple disc (the cell) centred on a coloured background."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    image = np.empty((h, w, 3), np.uint8)
    image[:] = background
    image[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= radius**2] = cell
    return image
