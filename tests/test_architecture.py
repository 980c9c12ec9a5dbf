"""The layers import one way (.importlinter), and the web image needs only requirements-serving.lock."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = ("contracts", "training", "bloodcell", "components", "pipelines", "serving", "cli")
# What the web image runs: `bloodcell web` and `bloodcell predict` import these when they run.
SERVING_MODULES = ("cli.main", "serving.web_app", "serving.model_server", "serving.explain", "serving.screening")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the packages under `root` (they shadow the installed ones)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / ".importlinter"), "--no-cache"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def copy_of_the_layers(tmp_path: Path) -> Path:
    for name in LAYERS:
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / ".importlinter", tmp_path)
    return tmp_path


def test_the_layers_import_one_way():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_reverse_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: serving importing the pipeline, or the contracts importing training, fail."""
    root = copy_of_the_layers(tmp_path)
    client = root / "serving" / "client.py"
    client.write_text(client.read_text() + "\nfrom pipelines import configs  # noqa\n")
    features = root / "contracts" / "features.py"
    features.write_text(features.read_text() + "\nimport training.preprocessing  # noqa\n")
    result = lint_imports(root)
    assert result.returncode == 1
    assert "0 kept, 2 broken" in result.stdout
    assert re.search(r"serving\.client -> pipelines(\.configs)?", result.stdout), result.stdout
    assert re.search(r"contracts\.features -> training\.preprocessing", result.stdout), result.stdout


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory) -> Path:
    """A virtual environment with requirements-serving.lock only: what the web image installs."""
    venv = tmp_path_factory.mktemp("serving") / "venv"
    uv = [str(Path(sys.base_prefix) / "bin" / "python3.10"), "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", "-p", uv[0], str(venv)], check=True, timeout=300)
    lock = str(REPO_ROOT / "requirements-serving.lock")
    subprocess.run([*uv, "pip", "sync", "-q", "-p", str(venv / "bin" / "python"), lock], check=True, timeout=900)
    return venv


def test_the_web_image_runs_on_the_serving_lock_alone(serving_venv):
    """`bloodcell web` and everything the serving layer imports work in an environment built from
    requirements-serving.lock alone (no TFX, Beam, TFDV, TFMA, KFP, MLflow), pinned as requirements.lock."""
    python = str(serving_venv / "bin" / "python")
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = f"import importlib\nfor m in {SERVING_MODULES!r}: importlib.import_module(m)\nprint('imported')"
    imported = subprocess.run([python, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert imported.stdout.strip() == "imported", imported.stderr[-3000:]
    web = subprocess.run([python, "-m", "cli.main", "web", "--help"], env=env, capture_output=True, text=True, timeout=300)
    assert web.returncode == 0 and "--grpc" in web.stdout, web.stderr[-3000:]
    missing = subprocess.run([python, "-c", "import tfx"], env=env, capture_output=True, timeout=60)
    assert missing.returncode != 0  # the environment really lacks the pipeline's packages
    pins = {line for line in (REPO_ROOT / "requirements-serving.lock").read_text().splitlines() if "==" in line}
    assert pins <= set((REPO_ROOT / "requirements.lock").read_text().splitlines())


def test_no_test_module_imports_another():
    """Shared code lives in tests/helpers; test modules and conftest.py are never imported."""
    offenders = []
    for path in sorted((REPO_ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.name}: {n}" for n in names if re.match(r"tests\.(test_\w+|conftest)\b", n)]
    assert offenders == []
