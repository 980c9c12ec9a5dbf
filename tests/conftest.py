"""Shared fixtures: generated images and small samples of the real dataset in ../shared."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.configs import DEFAULT_CONFIG, load_config

CONFIG = load_config(DEFAULT_CONFIG)
CLASSES = CONFIG.classes
REAL_DATA = Path(CONFIG.paths.data_root)


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


def real_files(class_name: str, count: int) -> list[Path]:
    """The first `count` real images of a class (sorted by name)."""
    return sorted((REAL_DATA / class_name).glob("*.jpg"))[:count]


def make_real_subset(root: Path, per_class: int) -> Path:
    """Copies `per_class` real images of every class into root/<class>/."""
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for path in real_files(name, per_class):
            shutil.copy(path, root / name / path.name)
    return root


@pytest.fixture
def generated_root(tmp_path: Path) -> Path:
    """A data root with 10 distinct generated JPEGs per class."""
    for k, name in enumerate(CLASSES):
        (tmp_path / name).mkdir()
        for i in range(10):
            (tmp_path / name / f"{name}_{i}.jpg").write_bytes(image_bytes(seed=100 * k + i))
    return tmp_path
