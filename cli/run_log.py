"""The run log: what a `bloodcell` process prints on stderr while the pipeline runs."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings

from absl import logging as absl_logging


class RunLog(logging.Filter):
    """A run's log, each thing said once: the project's messages, one line when each component starts and
    one when it finishes (with its duration), and each distinct warning once. Drops the protos and Beam
    worker chatter TFX and Beam log at INFO (see everything with BLOODCELL_VERBOSE=1)."""

    COMPONENT = re.compile(r"Component (\S+) is (running|finished)\.$")

    def __init__(self) -> None:
        super().__init__()
        self.started: dict[str, float] = {}
        self.warned: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        component = self.COMPONENT.match(message)
        if component:
            name, state = component.groups()
            if state == "running":
                self.started[name] = time.monotonic()
                record.msg, record.args = "%s started", (name,)
            else:
                now = time.monotonic()
                record.msg, record.args = "%s finished in %.0f s", (name, now - self.started.pop(name, now))
            return True
        if record.levelno >= logging.WARNING:
            if message in self.warned or message.startswith("Worker: "):
                return False
            self.warned.add(message)
            return True
        return record.name.startswith(("components", "pipelines", "training", "benchmarks")) or message.startswith(
            ("ImageExampleGen", "Trainer", "epoch ", "data root", "operating point")
        )


def tensorflow_environment() -> None:
    """TensorFlow's settings for this process and its subprocesses; must run before TensorFlow is imported.

    oneDNN's CPU kernels: TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI or BF16 or
    AMX. On a 2-core AVX2 CPU a training step took 0.164 s with them, 0.288 s without (docs/results.md). The C++
    banner is silenced, also in Beam workers and TFX's packaging subprocess."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def configure_process() -> None:
    """Environment and logging of a `bloodcell` process: TensorFlow's settings, the run log on stderr,
    quiet libraries."""
    tensorflow_environment()
    os.environ.setdefault("PIP_QUIET", "1")  # the Trainer pip-installs its packaged module: no pip chatter
    # Google client deprecation notices and setuptools' notice about the way TFX packages the Trainer's module.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore:setup.py install is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # TensorFlow restores absl's verbosity to absl's default (WARNING) whenever it saves a model, which
    # silenced TFX's component lines after the Trainer; with INFO set here it restores INFO.
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.captureWarnings(True)  # warnings go through the run log too: each said once
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if not os.environ.get("BLOODCELL_VERBOSE"):
        handler.addFilter(RunLog())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
