"""The store: opens the database (WAL, migrations) and writes each batch in one transaction.

A handful of verbs: `Store.open`, `write`, `counts`, `close`. Keys make every write
idempotent: an event, update or reject seen before changes nothing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from chalicelib.sqlite import Synchronous, atomic, connect, is_busy, retry_while_busy
from db.batch import ADJUSTMENT_COLUMNS, ENVELOPE_COLUMNS, EVENT_COLUMNS, REJECT_COLUMNS, Incoming, Rows
from db.errors import DatabaseFault
from db.schema import migrate

log = logging.getLogger("tune_firehose.store")

# SQLite's page cache for the writer (negative: KiB). The default 2 MiB makes every insert at a
# random key of the events b-tree read its page back from the OS; bench/RESULTS.md has the effect.
# 32 MiB: as fast as 64 MiB at 100,000 events and about 10% slower once a database passes 800,000,
# which buys the memory the decoding helper needs (bench: peak RSS of the worker and its helper).
CACHE_KIB = 32_768
TABLES = ("events", "adjustments", "envelopes", "rejects")
# Durable before deleted: the worker deletes a batch's messages right after its COMMIT returns, so
# that COMMIT must be on disk by then. In WAL mode NORMAL syncs only at checkpoints, and SQLite
# documents that a commit since the last one can roll back after a power loss, when the queue no
# longer holds its messages. FULL syncs the WAL at every COMMIT: one fsync per batch, whose cost
# `make bench` reports (bench/durability.py).
SYNCHRONOUS: Synchronous = "FULL"
# Event times come from the sender's clock. One dated in the future (a wrong clock, a hostile
# sender) must not make the data look fresh for ever: the newest event is the newest dated at most
# this far ahead of now (a small skew between clocks is normal).
FUTURE_SKEW_SECONDS = 300


def _insert(table: str, columns: list[str]) -> str:
    # Identifiers come from the constant column lists in db/batch.py, never from input.
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"


INSERT_EVENTS = _insert("events", EVENT_COLUMNS)
INSERT_ADJUSTMENTS = _insert("adjustments", ADJUSTMENT_COLUMNS)
INSERT_ENVELOPES = _insert("envelopes", ENVELOPE_COLUMNS)
INSERT_REJECTS = _insert("rejects", REJECT_COLUMNS)


@dataclass
class WriteStats:
    events: int = 0
    duplicates: int = 0
    adjustments: int = 0
    duplicate_adjustments: int = 0
    rejects: int = 0

    def add(self, other: WriteStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def newest_event_time(db: sqlite3.Connection, now: float) -> int | None:
    """The newest event time not in the future (beyond FUTURE_SKEW_SECONDS); the index makes it cheap."""
    row = db.execute("SELECT max(event_time) FROM events WHERE event_time <= ?", (now + FUTURE_SKEW_SECONDS,))
    (newest,) = row.fetchone()
    return None if newest is None else int(newest)


def _why_unwritable(path: Path) -> str:
    """A hint for an operator when SQLite's own message ("unable to open database file") is vague."""
    directory = path.parent if path.parent.exists() else Path(".")
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f" (the file system holding {directory} is mounted read-only)"
    except OSError:
        return ""
    if not os.access(directory, os.W_OK):
        return f" (the directory {directory} is not writable)"
    if path.exists() and not os.access(path, os.W_OK):
        return " (the file is read-only)"
    return ""


class Store:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | Path, give_up: Callable[[], bool] = lambda: False) -> Store:
        """Open (creating if missing) and migrate the database; wait out another process's lock
        on it until `give_up()` says stop, as `write` does."""
        path = Path(path)

        def connect_and_migrate() -> sqlite3.Connection:
            db = connect(path, wal=True, synchronous=SYNCHRONOUS, cache_kib=CACHE_KIB)
            try:
                migrate(db)
            except BaseException:
                db.close()
                raise
            return db

        def waiting(attempt: int, _exc: sqlite3.Error) -> None:
            log.warning(
                "database %s is locked by another process (attempt %d); waiting to migrate it (SIGTERM or "
                "Ctrl-C stops waiting)",
                path,
                attempt,
            )

        try:
            return cls(retry_while_busy(connect_and_migrate, give_up=give_up, on_wait=waiting), path)
        except sqlite3.DatabaseError as exc:
            if is_busy(exc):
                raise DatabaseFault(f"database {path} stayed locked; gave up waiting to migrate it: {exc}") from exc
            raise DatabaseFault(f"cannot open database {path}: {exc}{_why_unwritable(path)}") from exc

    def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
        """Write the whole batch in one transaction; wait out locks held by other processes
        until `give_up()` says stop. An `Incoming` batch is written part by part as it arrives."""

        def waiting(attempt: int, _exc: sqlite3.Error) -> None:
            log.warning(
                "database %s is locked by another connection (attempt %d); retrying, nothing is lost",
                self.path,
                attempt,
            )

        try:
            return retry_while_busy(
                lambda: self._write_once(batch.parts() if isinstance(batch, Incoming) else [batch]),
                give_up=give_up,
                on_wait=waiting,
            )
        except sqlite3.DatabaseError as exc:
            if is_busy(exc):
                raise DatabaseFault(f"database {self.path} stayed locked: {exc}") from exc
            raise DatabaseFault(f"cannot write to {self.path}: {exc}") from exc

    def _write_once(self, parts: Iterable[Rows]) -> WriteStats:
        stats = WriteStats()
        with atomic(self.db):
            for batch in parts:
                stats.add(self._insert(batch))
        return stats

    def _insert(self, batch: Rows) -> WriteStats:
        db = self.db
        # Bound as built (worker/rows.py builds them as they bind fastest).
        events = db.executemany(INSERT_EVENTS, batch.events).rowcount if batch.events else 0
        adjustments = db.executemany(INSERT_ADJUSTMENTS, batch.adjustments).rowcount if batch.adjustments else 0
        if batch.envelopes:
            db.executemany(INSERT_ENVELOPES, batch.envelopes)
        rejects = db.executemany(INSERT_REJECTS, batch.rejects).rowcount if batch.rejects else 0
        return WriteStats(
            events=events,
            duplicates=len(batch.events) - events,
            adjustments=adjustments,
            duplicate_adjustments=len(batch.adjustments) - adjustments,
            rejects=rejects,
        )

    def counts(self) -> dict[str, int]:
        return {t: self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}

    def newest_event_time(self, now: float) -> int | None:
        try:
            return newest_event_time(self.db, now)
        except sqlite3.Error as exc:
            raise DatabaseFault(f"cannot read {self.path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()
