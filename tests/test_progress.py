"""Progress bars: drawn on a terminal, never written into a log file."""

from __future__ import annotations

import io
import sys

from contracts.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_and_counts_what_it_iterates(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(5), desc="stress grayscale", unit="img")) == [0, 1, 2, 3, 4]
    assert "stress grayscale" in terminal.getvalue() and "5/5" in terminal.getvalue()


def test_a_log_file_gets_no_bar_and_small_work_none_either(monkeypatch, tmp_path):
    with open(tmp_path / "run.log", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        with progress(total=3, desc="reading the site's images") as bar:
            bar.update(3)
    assert (tmp_path / "run.log").read_text() == ""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(total=3, small=True) as bar:
        bar.update(3)
    assert terminal.getvalue() == ""
