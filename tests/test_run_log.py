"""The run's log: each component's start and finish with its duration, each warning once, chatter out; and the
TensorFlow settings of a `bloodcell` process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from cli.run_log import RunLog
from tests.helpers import REPO_ROOT


def record(message: str, level: int = logging.INFO, name: str = "absl", *args) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_component_lines_carry_the_duration(monkeypatch):
    clock = iter([100.0, 112.4])
    monkeypatch.setattr("cli.run_log.time.monotonic", lambda: next(clock))
    log = RunLog()
    started, finished = record("Component %s is running.", logging.INFO, "absl", "Trainer"), record(
        "Component %s is finished.", logging.INFO, "absl", "Trainer"
    )
    assert log.filter(started) and started.getMessage() == "Trainer started"
    assert log.filter(finished) and finished.getMessage() == "Trainer finished in 12 s"


def test_a_warning_is_said_once_and_chatter_is_dropped():
    log = RunLog()
    warnings = [record("ArtifactQuery.property_predicate is not supported.", logging.WARNING) for _ in range(40)]
    assert [log.filter(w) for w in warnings] == [True] + [False] * 39
    assert log.filter(record("another warning", logging.WARNING))
    assert not log.filter(record("Worker: severity: INFO timestamp { seconds: 1 }", logging.WARNING))
    assert not log.filter(record("Using deployment config:\n executor_specs {...}"))
    assert log.filter(record("epoch 1/2  loss 1.2", name="training.trainer_module"))
    assert log.filter(record("data roots /a, fingerprint 1234", name="root"))
    assert log.filter(record("leave-one-site-out: training without munich", name="benchmarks"))
    assert not log.filter(record("leave-one-site-out: training without munich", name="root"))


ONEDNN_IN_USE = (
    "import cli.run_log; cli.run_log.tensorflow_environment()\n"
    "from tensorflow.python.util import _pywrap_util_port\n"
    "print(_pywrap_util_port.IsMklEnabled())"
)


@pytest.mark.parametrize("user_setting, in_use", [(None, "True"), ("0", "False")])
def test_tensorflow_runs_on_onednn_kernels_unless_the_user_says_otherwise(user_setting, in_use):
    """A fresh process with `tensorflow_environment` runs on oneDNN's kernels (TensorFlow itself turns them on
    only on AVX-512 VNNI/BF16 or AMX CPUs); TF_ENABLE_ONEDNN_OPTS=0 set by the user is kept."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_setting
    result = subprocess.run(
        [sys.executable, "-c", ONEDNN_IN_USE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == in_use


def test_the_command_line_imports_tensorflow_only_after_setting_it_up():
    """`bloodcell`'s entry module loads no TensorFlow, so `configure_process` runs before TensorFlow reads its settings."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, cli.main; print('tensorflow' in sys.modules)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
