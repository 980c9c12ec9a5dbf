"""The run's log: each component's start and finish with its duration, each warning once, chatter out."""

from __future__ import annotations

import logging

from cli.run_log import RunLog


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
