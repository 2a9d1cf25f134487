"""How rows bind fastest: NULL as a float NaN.

Python's sqlite3 binds None through its adapter registry (a tuple, a dict lookup and two attribute
lookups per value), which costs more than the rest of an events row together: most of its ~100
columns are empty. A float NaN binds directly and SQLite stores it as NULL (sqlite3VdbeMemSetDouble
never stores a NaN), so NULL columns are bound as NaN. No row value is ever a NaN of its own: the
coercers turn non-finite numbers into None or a reject. `_nan_binds_as_null` checks the behaviour
once per process, and NULL stays None if a SQLite build ever differs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any


def _nan_binds_as_null() -> bool:
    db = sqlite3.connect(":memory:")
    try:
        return db.execute("SELECT typeof(?)", (float("nan"),)).fetchone()[0] == "null"
    finally:
        db.close()


NULL: float | None = float("nan") if _nan_binds_as_null() else None
# to_null(value, value): the value as it binds fastest.
to_null = {None: NULL}.get


def bindable(rows: list[tuple[Any, ...]]) -> Iterable[Sequence[Any]]:
    """The rows as `executemany` binds them fastest, with the same values stored."""
    if NULL is None:
        return rows
    return (tuple(map(to_null, row, row)) for row in rows)
