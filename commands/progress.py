"""The progress bar the long commands (backup, merge, redrive, reprocess-rejects) draw on stderr.

One place decides when a bar shows: by default only when stderr is a terminal, so logs, pipes and
cron mail stay clean; the library functions pass `show=False` from tests, `show=True` forces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Bar:
    """A counting bar. Its methods are all the commands need, so tqdm stays behind this class."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def reached(self, done: int, total: int) -> None:
        """Set the bar to `done` of `total`, for work (backup pages) that reports where it is, not steps."""
        self._bar.total = total
        self._bar.update(done - self._bar.n)


@contextmanager
def progress(desc: str, unit: str, total: int | None = None, show: bool | None = None) -> Iterator[Bar]:
    """A bar for the duration of the block; `show` None: only on a terminal."""
    from tqdm import tqdm  # imported here: the worker and the quick commands never load it

    # tqdm's disable=None means "disable unless the stream is a TTY".
    with tqdm(total=total, unit=unit, desc=desc, disable=None if show is None else not show) as bar:
        yield Bar(bar)
