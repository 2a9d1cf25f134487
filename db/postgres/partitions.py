"""Monthly partitions of `events`, created by the store as rows need them.

`events` is partitioned by range of `event_time_utc`, one partition per UTC month, named
`events_YYYY_MM`. The store creates the current month and the next ones ahead of time, and any
other month the moment a batch holds an event of it. Events with no usable time, and events
outside the window of months the store creates (`OLDEST`, up to `FURTHEST_AHEAD` months from
now), go to `events_default`; that keeps a producer sending random dates from creating thousands
of tables.

A month is created as a plain table and then attached: ATTACH PARTITION takes only a SHARE
UPDATE EXCLUSIVE lock on `events`, so other workers' inserts go on meanwhile (CREATE TABLE ...
PARTITION OF would lock every reader and writer out). If `events_default` holds rows of that month
(its month was outside the window when they came), they move into the new partition first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from psycopg import sql

# Oldest month that gets a partition of its own: TUNE's Firehose is younger than this.
OLDEST = (2000, 1)
# Months created ahead of the current one, and the furthest ahead a dated event may create.
AHEAD = 2
FURTHEST_AHEAD = 12
# Serialises the creation of partitions across workers (a constant of this project: "fh-parts").
PARTITION_LOCK = int.from_bytes(b"fh-parts", "big") & 0x7FFF_FFFF_FFFF_FFFF
# Longest wait for the locks an ATTACH needs; past it the batch is retried, not stuck behind a
# long analyst query holding events_default.
LOCK_TIMEOUT = "10s"
_NAME = re.compile(r"events_(\d{4})_(\d{2})")


def month_of(epoch: int) -> int:
    """Months since year 0 (year * 12 + month - 1) of an epoch time, in UTC."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.year * 12 + moment.month - 1


def month_start(month: int) -> datetime:
    return datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: int) -> str:
    return f"events_{month // 12:04d}_{month % 12 + 1:02d}"


def _epoch(month: int) -> int:
    return int(month_start(month).timestamp())


@dataclass
class Partitions:
    """The months that have a partition, as this process knows them."""

    months: set[int] = field(default_factory=set)
    # Epoch range [lo, hi) covered by consecutive known months: the quick test for most rows.
    span: tuple[int, int] = (0, 0)

    def load(self, conn: Any) -> None:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass"
        ).fetchall()
        self.months = {int(m[1]) * 12 + int(m[2]) - 1 for (name,) in rows if (m := _NAME.fullmatch(name))}
        self._respan()

    def _respan(self, now: float | None = None) -> None:
        current = month_of(int(now if now is not None else datetime.now(UTC).timestamp()))
        if current not in self.months:
            self.span = (0, 0)
            return
        lo = hi = current
        while lo - 1 in self.months:
            lo -= 1
        while hi + 1 in self.months:
            hi += 1
        self.span = (_epoch(lo), _epoch(hi + 1))

    def missing(self, times: Iterable[Any], now: float | None = None) -> set[int]:
        """Months of these event times (epoch seconds; None or NaN for none) that need a partition."""
        lo, hi = self.span
        first, last = _window(now)
        needed: set[int] = set()
        for t in times:
            if type(t) is not int or lo <= t < hi:  # no usable time (events_default), or known
                continue
            try:
                month = month_of(t)
            except (OverflowError, OSError, ValueError):  # beyond any calendar: events_default
                continue
            if first <= month <= last and month not in self.months:
                needed.add(month)
        return needed

    def ahead(self, now: float | None = None) -> set[int]:
        """The current month and the next AHEAD, where not created yet."""
        current = month_of(int(now if now is not None else datetime.now(UTC).timestamp()))
        return {m for m in range(current, current + AHEAD + 1) if m not in self.months}

    def create(self, conn: Any, months: Iterable[int]) -> list[int]:
        """Create these months' partitions inside the caller's transaction (see the module's notes);
        return the months created. Call `add` with them once that transaction has committed."""
        todo = sorted(set(months) - self.months)
        if not todo:
            return []
        # Bounded waits for these locks only; the batch's own inserts then wait as the session says.
        previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        for month in todo:
            _create_month(conn, month)
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))
        return todo

    def add(self, months: Iterable[int], now: float | None = None) -> None:
        self.months.update(months)
        self._respan(now)


def _window(now: float | None) -> tuple[int, int]:
    current = month_of(int(now if now is not None else datetime.now(UTC).timestamp()))
    return OLDEST[0] * 12 + OLDEST[1] - 1, current + FURTHEST_AHEAD


def _create_month(conn: Any, month: int) -> None:
    name = partition_name(month)
    if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None:
        return  # another worker made it while this one waited for the lock
    table = sql.Identifier(name)
    lo, hi = month_start(month), month_start(month + 1)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(table))
    conn.execute(
        sql.SQL(
            "WITH moved AS (DELETE FROM events_default WHERE event_time_utc >= %s AND event_time_utc < %s RETURNING *) "
            "INSERT INTO {} SELECT * FROM moved"
        ).format(table),
        (lo, hi),
    )
    conn.execute(
        sql.SQL("ALTER TABLE events ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            table, sql.Literal(lo), sql.Literal(hi)
        )
    )


# -- retention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Month:
    name: str
    start: date
    end: date  # exclusive


def months(conn: Any) -> list[Month]:
    """The monthly partitions that exist, oldest first."""
    found = Partitions()
    found.load(conn)
    return [Month(partition_name(m), month_start(m).date(), month_start(m + 1).date()) for m in sorted(found.months)]


def older_than(conn: Any, before: date) -> list[Month]:
    """Partitions whose every event is older than `before` (their month ends on or before it)."""
    return [m for m in months(conn) if m.end <= before]


def drop(conn: Any, doomed: Iterable[Month]) -> None:
    """Detach and drop these partitions, in the caller's transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    for month in doomed:
        table = sql.Identifier(month.name)
        conn.execute(sql.SQL("ALTER TABLE events DETACH PARTITION {}").format(table))
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
