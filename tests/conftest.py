"""Fixtures shared by the tests (helpers are in tests/helpers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import CLASSES, CONFIG, export_model, image_bytes


@pytest.fixture
def generated_root(tmp_path: Path) -> Path:
    """A data root with 10 distinct generated JPEGs per class."""
    for k, name in enumerate(CLASSES):
        (tmp_path / name).mkdir()
        for i in range(10):
            (tmp_path / name / f"{name}_{i}.jpg").write_bytes(image_bytes(seed=100 * k + i))
    return tmp_path


@pytest.fixture(scope="session")
def model_exports(tmp_path_factory) -> dict[str, Path]:
    """Four real SavedModels with the served signatures: random weights, always basophil, always myeloblast,
    always out of scope (each answers the five classes and out of scope, as the default config trains)."""
    root = tmp_path_factory.mktemp("exports")
    return {
        "random": export_model(root / "random"),
        "basophil": export_model(root / "basophil", favour="basophil"),
        "myeloblast": export_model(root / "myeloblast", favour="myeloblast"),
        "out_of_scope": export_model(root / "out_of_scope", favour="out_of_scope"),
    }


@pytest.fixture
def model_server(tmp_path, model_exports):
    """`bloodcell serve`'s server on 127.0.0.1 (free port), serving the random model as version 1."""
    from serving.model_server import start_server

    base = tmp_path / "models" / CONFIG.model_name
    shutil.copytree(model_exports["random"], base / "1")
    running = start_server(CONFIG.model_name, base, port=0, host="127.0.0.1", poll_wait_s=0.2, max_message_mb=4)
    running.base = base
    running.target = f"127.0.0.1:{running.port}"
    yield running
    running.stop()
