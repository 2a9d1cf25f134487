"""The store: opens the database (WAL, migrations) and writes each batch in one transaction.

A handful of verbs: `Store.open`, `write`, `counts`, `close`. Keys make every write
idempotent: an event, update or reject seen before changes nothing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.batch import ADJUSTMENT_COLUMNS, EVENT_COLUMNS, Incoming, Rows
from db.binding import bindable
from db.schema import migrate

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# SQLite's page cache for the writer (negative: KiB). The default 2 MiB makes every insert at a
# random key of the events b-tree read its page back from the OS; bench/RESULTS.md has the effect.
# 32 MiB: as fast as 64 MiB at 100,000 events and about 10% slower once a database passes 800,000,
# which buys the memory the decoding helper needs (bench: peak RSS of the worker and its helper).
CACHE_KIB = 32_768
TABLES = ("events", "adjustments", "envelopes", "rejects")


def _insert(table: str, columns: list[str]) -> str:
    # Identifiers come from the constant column lists in db/batch.py, never from input.
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"


INSERT_EVENTS = _insert("events", EVENT_COLUMNS)
INSERT_ADJUSTMENTS = _insert("adjustments", ADJUSTMENT_COLUMNS)
INSERT_ENVELOPES = _insert("envelopes", ["message_id", "received_at", "receive_count", "control_json", "event_count"])
INSERT_REJECTS = _insert("rejects", ["reject_key", "message_id", "event_index", "reason", "raw", "rejected_at"])


def _as_built(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return rows


class DatabaseFault(RuntimeError):
    """The database cannot be written (disk full, read-only, corrupt): stop, delete nothing."""


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


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{int(CACHE_KIB)}")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class Store:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> Store:
        path = Path(path)
        try:
            db = connect(path)
            while True:
                try:
                    migrate(db)
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    log.warning("database %s is locked by another process; waiting to migrate", path)
        except sqlite3.DatabaseError as exc:
            raise DatabaseFault(f"cannot open database {path}: {exc}{_why_unwritable(path)}") from exc
        return cls(db, path)

    def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
        """Write the whole batch in one transaction; wait out locks held by other processes
        until `give_up()` says stop. An `Incoming` batch is written part by part as it arrives."""
        attempt = 0
        while True:
            try:
                return self._write_once(batch.parts() if isinstance(batch, Incoming) else [batch])
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise DatabaseFault(f"cannot write to {self.path}: {exc}") from exc
                attempt += 1
                if give_up():
                    raise DatabaseFault(f"database {self.path} stayed locked: {exc}") from exc
                log.warning(
                    "database %s is locked by another connection (attempt %d); retrying, nothing is lost",
                    self.path,
                    attempt,
                )
                time.sleep(min(0.1 * attempt, 2.0))
            except sqlite3.DatabaseError as exc:
                raise DatabaseFault(f"cannot write to {self.path}: {exc}") from exc

    def _write_once(self, parts: Iterable[Rows]) -> WriteStats:
        db = self.db
        stats = WriteStats()
        db.execute("BEGIN IMMEDIATE")
        try:
            for batch in parts:
                stats.add(self._insert(batch))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return stats

    def _insert(self, batch: Rows) -> WriteStats:
        db = self.db
        bind = _as_built if batch.bound else bindable
        events = db.executemany(INSERT_EVENTS, bind(batch.events)).rowcount if batch.events else 0
        adjustments = db.executemany(INSERT_ADJUSTMENTS, bind(batch.adjustments)).rowcount if batch.adjustments else 0
        if batch.envelopes:
            db.executemany(INSERT_ENVELOPES, bind(batch.envelopes))
        rejects = db.executemany(INSERT_REJECTS, bind(batch.rejects)).rowcount if batch.rejects else 0
        return WriteStats(
            events=events,
            duplicates=len(batch.events) - events,
            adjustments=adjustments,
            duplicate_adjustments=len(batch.adjustments) - adjustments,
            rejects=rejects,
        )

    def counts(self) -> dict[str, int]:
        return {t: self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}

    def close(self) -> None:
        self.db.close()
