"""Loading rows read elsewhere into PostgreSQL: what `read_queue.py merge` does with a PostgreSQL
target, moving existing hosts' SQLite files up to the server.

Every chunk goes through the store's own write (db/postgres/store.py): COPY into staging, one
`INSERT ... SELECT ... ORDER BY key ON CONFLICT DO NOTHING`, months created first. So a merged row
is the row a worker would have written from the same event (types, NULLs, exact money, its
partition), a row already there changes nothing, and a merge running beside workers cannot
deadlock with them: each of its transactions inserts one table in key order, a part of the order
every worker's transaction follows.

The high-water marks live in `merge_sources` (migration 0003), written by a transaction of their
own after a table's rows have committed: a merge stopped half-way leaves the old mark, and the
next run copies again what the keys then turn away.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from db.batch import Rows
from db.errors import DatabaseFault
from db.postgres.store import TABLES, PostgresStore
from db.postgres.url import scrub

# How long a lost connection (restart, failover) is retried per chunk before the merge stops
# (exit 3; run it again: nothing is duplicated).
RETRY_SECONDS = 60.0

_COLUMNS = {t.name: t.columns for t in TABLES}

_RECORD = (
    "INSERT INTO merge_sources (source, table_name, high_water, rows_copied, merged_at) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source, table_name) DO UPDATE SET "
    "high_water = excluded.high_water, rows_copied = merge_sources.rows_copied + excluded.rows_copied, "
    "merged_at = excluded.merged_at"
)


class Loader:
    """A PostgreSQL target for `merge`: the columns it takes, its marks, and chunks written once."""

    def __init__(self, store: PostgresStore, retry_seconds: float = RETRY_SECONDS) -> None:
        self.store = store
        self.location = store.location
        self.retry_seconds = retry_seconds

    @classmethod
    def open(cls, url: str, retry_seconds: float = RETRY_SECONDS) -> Loader:
        """Connect and migrate. Unreachable: a `DatabaseFault` at once (merge is run again, not
        left waiting); refused credentials or database: a `DatabaseUrlError`."""
        return cls(PostgresStore.open(url), retry_seconds)

    def close(self) -> None:
        self.store.close()

    @staticmethod
    def columns(table: str) -> list[str]:
        """The columns of `table` in the order the store's rows hold them."""
        return list(_COLUMNS[table])

    def high_water(self, source: str, table: str) -> int | None:
        try:
            row = (
                self.store.connection()
                .execute("SELECT high_water FROM merge_sources WHERE source = %s AND table_name = %s", (source, table))
                .fetchone()
            )
        except psycopg.Error as exc:
            raise self._fault("cannot read the merge marks", exc) from None
        return None if row is None else int(row[0])

    def load(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Write these rows of `table` in one transaction; return how many were new."""
        part = Rows()
        getattr(part, table).extend(rows)  # table is one of the store's four: Rows has a list of each
        self._write(part, f"cannot load {table}")
        return int(self.store.inserted.get(table, 0))

    def record(self, source: str, table: str, high_water: int, new: int) -> None:
        """Remember that `source`'s `table` has been copied up to `high_water`."""
        values = (source, table, high_water, new, int(time.time()))
        self._write(Rows(), "cannot record the merge mark", lambda cur: cur.execute(_RECORD, values))

    def _write(self, rows: Rows, what: str, then: Callable[[Any], None] | None = None) -> None:
        deadline = time.monotonic() + self.retry_seconds
        try:
            self.store.write(rows, give_up=lambda: time.monotonic() > deadline, then=then)
        except psycopg.Error as exc:  # a row the server refuses even with its text cleaned
            raise self._fault(what, exc) from None

    def _fault(self, what: str, exc: BaseException) -> DatabaseFault:
        return DatabaseFault(f"{what} at {self.location}: {scrub(str(exc).strip(), self.store.url)}")


__all__ = ["RETRY_SECONDS", "Loader"]
