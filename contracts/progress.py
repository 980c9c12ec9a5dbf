"""Progress bars where a person watches them: on a terminal. In a log file a long step says what it did in one
line of its own instead (a bar there is hundreds of carriage-return updates)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, total: int | None = None, desc: str | None = None,
             unit: str = "it", small: bool = False) -> tqdm:
    """A tqdm bar on stderr when stderr is a terminal and the work is not `small`; otherwise a silent tqdm
    (it still iterates and counts)."""  # fmt: skip
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=small or not sys.stderr.isatty())
