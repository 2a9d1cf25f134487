"""The SQLite toolkit: every connection, transaction and lock wait in the project goes through here.

- `connect(path, ...)`: a connection opened by URI, the path percent-escaped, so a file name holding
  `#`, `?` or `%` names that file and nothing else; a read-only open never creates a file.
- `atomic(db)`: one transaction as a context manager. `BEGIN IMMEDIATE` for a writer (it takes the
  write lock up front, so it waits at BEGIN instead of failing half-way), `BEGIN` for a reader's
  snapshot; COMMIT when the block ends, ROLLBACK when it raises.
- `is_busy(exc)`: another connection holds a lock, told by SQLite's error code, never by the text
  (a table named `x_locked` is not a lock).
- `retry_while_busy(work, ...)`: run `work` again while it fails only because of a lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar
from urllib.parse import quote_from_bytes

T = TypeVar("T")

# How long one statement waits for another connection's lock before SQLite gives up with SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000
# Longest pause between two attempts of `retry_while_busy` (it grows by 0.1 s per attempt).
MAX_RETRY_PAUSE_SECONDS = 2.0

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_BEGIN = {"immediate": "BEGIN IMMEDIATE", "deferred": "BEGIN", "exclusive": "BEGIN EXCLUSIVE"}
# Primary result codes of "another connection holds a lock"; extended codes (SQLITE_BUSY_SNAPSHOT,
# SQLITE_LOCKED_SHAREDCACHE, ...) carry the primary code in their low byte.
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def uri(path: str | os.PathLike[str], mode: Literal["ro", "rw", "rwc"] = "rwc") -> str:
    """`path` as an SQLite URI: absolute, every byte outside [A-Za-z0-9_.~/-] percent-escaped."""
    absolute = os.path.abspath(os.fsencode(path))
    # "file://" and an absolute path: a path starting with "//" must not read as an authority.
    return f"file://{quote_from_bytes(absolute, safe='/')}?mode={mode}"


def connect(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    wal: bool = False,
    synchronous: Synchronous | None = None,
    cache_kib: int | None = None,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> sqlite3.Connection:
    """Open `path` in autocommit mode (transactions are `atomic()` blocks).

    A writable open creates the file and its directory if missing; `wal` switches the file to
    write-ahead logging, `synchronous` and `cache_kib` set those PRAGMAs for this connection."""
    if not readonly:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = sqlite3.connect(
        uri(path, "ro" if readonly else "rwc"),
        uri=True,
        timeout=busy_timeout_ms / 1000,  # set before any statement: switching to WAL already needs a lock
        isolation_level=None,
        check_same_thread=False,  # the local queue shares its connection with the heartbeat thread
    )
    try:
        if wal and not readonly:
            db.execute("PRAGMA journal_mode=WAL")
        if synchronous is not None:
            set_synchronous(db, synchronous)
        if cache_kib is not None:
            db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    except BaseException:
        db.close()
        raise
    return db


def set_synchronous(db: sqlite3.Connection, level: Synchronous) -> None:
    if level not in _SYNCHRONOUS:  # a PRAGMA takes no parameters: only these four words reach SQL
        raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, got {level!r}")
    db.execute(f"PRAGMA synchronous={level}")


@contextmanager
def atomic(
    db: sqlite3.Connection, begin: Literal["immediate", "deferred", "exclusive"] = "immediate"
) -> Iterator[None]:
    """One transaction: BEGIN, the block, COMMIT; ROLLBACK if the block (or the COMMIT) raises."""
    db.execute(_BEGIN[begin])
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT may have ended the transaction already
            db.execute("ROLLBACK")
        raise


@contextmanager
def snapshot(db: sqlite3.Connection) -> Iterator[None]:
    """A read transaction whose snapshot starts now: every read in the block sees the same
    database, while other connections go on committing (in WAL mode)."""
    with atomic(db, "deferred"):
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a deferred BEGIN reads nothing yet
        yield


def is_busy(exc: BaseException) -> bool:
    """True when `exc` says only that another connection holds a lock: worth waiting out."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and isinstance(code, int) and (code & 0xFF) in _BUSY_CODES


def _never() -> bool:
    return False


def retry_while_busy(
    work: Callable[[], T],
    *,
    give_up: Callable[[], bool] = _never,
    on_wait: Callable[[int, sqlite3.Error], None] | None = None,
) -> T:
    """`work()`, run again while it fails with a lock held elsewhere (each attempt has already
    waited the busy timeout), until `give_up()` says stop: then the lock error is raised.

    `on_wait(attempt, error)` runs before each pause (log it: the wait is otherwise silent). Any
    other error is raised at once: `work` must leave nothing half-done when it raises (an
    `atomic()` block rolls back)."""
    attempt = 0
    while True:
        try:
            return work()
        except sqlite3.Error as exc:
            if not is_busy(exc) or give_up():
                raise
            attempt += 1
            if on_wait is not None:
                on_wait(attempt, exc)
            time.sleep(min(0.1 * attempt, MAX_RETRY_PAUSE_SECONDS))
