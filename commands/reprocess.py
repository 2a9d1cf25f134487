"""`read_queue.py reprocess-rejects`: retry stored rejects with the current decoder.

After a fix (a codec that now understands a format, a coercion that now accepts a field),
each reject is decoded again exactly as the worker would: a whole-message reject (event_index
NULL) through `Batch.add_message`, a single event through `Batch.add_events`. What now
succeeds is written and its reject deleted in the same transaction; what still fails stays,
untouched. Running it twice changes nothing the second time, as every row has its key.

On PostgreSQL (DATABASE_URL, or --db postgresql://...) the rows go through the store's own write
(COPY into staging, INSERT ... ON CONFLICT DO NOTHING in key order), and the envelope fix-up and
the deletes of the fixed rejects run in that same transaction (`PostgresStore.write(then=...)`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.settings import Settings
from chalicelib.sqlite import atomic, retry_while_busy
from db.batch import Rows
from db.errors import DatabaseFault
from db.postgres.url import scrub
from db.store import INSERT_ADJUSTMENTS, INSERT_ENVELOPES, INSERT_EVENTS, INSERT_REJECTS, Store
from db.stores import describe, open_store
from worker.rows import Batch, empty_as_none

from .progress import progress

if TYPE_CHECKING:  # psycopg is loaded only when PostgreSQL is selected
    from db.postgres.store import PostgresStore

log = logging.getLogger("tune_firehose.reprocess")

NAME = "reprocess-rejects"
HELP = "retry stored rejects with the current decoder; store what now succeeds and drop those rejects"
EPILOG = """examples:
  python read_queue.py status                       # read the reject reasons, fix the cause, upgrade
  python read_queue.py reprocess-rejects            # retry them all
  python read_queue.py reprocess-rejects --dry-run  # only count what would now succeed

Safe while workers run: each chunk is one short write transaction, like a worker's batch."""

CHUNK = 500
# A chunk's write on PostgreSQL: how long a lost connection or a lock conflict is retried.
WRITE_RETRY_SECONDS = 60.0


@dataclass
class ReprocessResult:
    retried: int = 0
    fixed: int = 0
    kept: int = 0
    events: int = 0
    adjustments: int = 0
    new_rejects: int = 0


def retry_one(
    message_id: str | None, key: str, event_index: int | None, raw: str, max_decoded_bytes: int | None, now: int
) -> Batch | None:
    """The rows the reject would give now, or None if it still fails."""
    batch = Batch()
    if event_index is None:
        batch.add_message(message_id or f"reject:{key}", raw, None, max_decoded_bytes, now)
        # The message now decodes; events in it that are still bad become their own rejects.
        return None if any(r[2] is None for r in batch.rejects) else batch
    try:
        event = json.loads(raw)
    except ValueError:
        return None  # stored truncated, or not JSON at all: nothing more to learn from it
    batch.add_events([event], message_id, now)
    return None if batch.rejects else batch


def _write(db: sqlite3.Connection, fixed: list[tuple[str, Batch]]) -> tuple[int, int, int]:
    events = adjustments = new_rejects = 0
    with atomic(db):
        for key, batch in fixed:
            if batch.events:
                events += db.executemany(INSERT_EVENTS, batch.events).rowcount
            if batch.adjustments:
                adjustments += db.executemany(INSERT_ADJUSTMENTS, batch.adjustments).rowcount
            for envelope in batch.envelopes:
                # The undecodable message left an envelope with no events; now we know better.
                message_id, _at, _count, control, event_count = envelope
                db.execute(
                    "UPDATE envelopes SET control_json = ?, event_count = ? "
                    "WHERE message_id = ? AND event_count = 0 AND control_json IS NULL",
                    (control, event_count, message_id),
                )
                db.execute(INSERT_ENVELOPES, envelope)
            if batch.rejects:
                new_rejects += db.executemany(INSERT_REJECTS, batch.rejects).rowcount
            db.execute("DELETE FROM rejects WHERE reject_key = ?", (key,))
    return events, adjustments, new_rejects


def _write_retrying(db: sqlite3.Connection, fixed: list[tuple[str, Batch]]) -> tuple[int, int, int]:
    def waiting(attempt: int, _exc: sqlite3.Error) -> None:
        log.warning("database is locked by a worker (attempt %d); retrying", attempt)

    return retry_while_busy(lambda: _write(db, fixed), on_wait=waiting)


# One chunk of rejects as read: (reject_key, message_id, event_index, raw).
Chunk = list[tuple[str, str | None, int | None, str]]


class _SqliteRejects:
    """The rejects of a SQLite store, in insertion order (rowid)."""

    def __init__(self, store: Store) -> None:
        self.db = store.db
        # Rejects a retried message adds are newer than `end`: they were just decided, not retried now.
        self.total, self.end = self.db.execute("SELECT count(*), coalesce(max(rowid), 0) FROM rejects").fetchone()
        self.last = 0

    def chunk(self) -> Chunk:
        rows = self.db.execute(
            "SELECT rowid, reject_key, message_id, event_index, raw FROM rejects WHERE rowid > ? AND rowid <= ? "
            "ORDER BY rowid LIMIT ?",
            (self.last, self.end, CHUNK),
        ).fetchall()
        if rows:
            self.last = rows[-1][0]
        return [row[1:] for row in rows]

    def write(self, fixed: list[tuple[str, Batch]]) -> tuple[int, int, int]:
        return _write_retrying(self.db, fixed)


class _PostgresRejects:
    """The rejects of a PostgreSQL store, in key order (it keeps no insertion order)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.total = int(store.connection().execute("SELECT count(*) FROM rejects").fetchone()[0])
        self.after = ""  # keys are sha256 hex digests: every one sorts after ""
        # Rejects a retried message adds were just decided, not retried now (SQLite: rowid > end).
        self.added: set[str] = set()

    def chunk(self) -> Chunk:
        while True:
            rows = (
                self.store.connection()
                .execute(
                    "SELECT reject_key, message_id, event_index, raw FROM rejects WHERE reject_key > %s "
                    "ORDER BY reject_key LIMIT %s",
                    (self.after, CHUNK),
                )
                .fetchall()
            )
            if not rows:
                return []
            self.after = rows[-1][0]
            unseen = [row for row in rows if row[0] not in self.added]
            if unseen:
                return unseen

    def write(self, fixed: list[tuple[str, Batch]]) -> tuple[int, int, int]:
        rows = Rows()
        for _key, batch in fixed:
            rows.extend(batch)
        keys = sorted(key for key, _batch in fixed)
        # The undecodable message left an envelope with no events; now we know better. In key
        # order, after the store's inserts, like every other lock this transaction takes.
        fix_ups = sorted(
            ((m, control, count) for m, _at, _n, control, count in map(empty_as_none, rows.envelopes)),
            key=lambda fix_up: str(fix_up[0]),
        )

        def then(cur: Any) -> None:
            if fix_ups:
                cur.executemany(
                    "UPDATE envelopes SET control_json = %s, event_count = %s "
                    "WHERE message_id = %s AND event_count = 0 AND control_json IS NULL",
                    [(control, count, message_id) for message_id, control, count in fix_ups],
                )
            cur.execute("DELETE FROM rejects WHERE reject_key = ANY(%s)", (keys,))

        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        stats = self.store.write(rows, give_up=lambda: time.monotonic() > deadline, then=then)
        self.added.update(row[0] for row in rows.rejects)
        return stats.events, stats.adjustments, stats.rejects


def _driver_errors(store: Store | PostgresStore) -> tuple[type[Exception], ...]:
    if isinstance(store, Store):
        return (sqlite3.DatabaseError,)
    import psycopg  # loaded only when PostgreSQL is selected

    return (psycopg.Error,)


def reprocess(
    store: Store | PostgresStore,
    max_decoded_bytes: int | None = None,
    dry_run: bool = False,
    show_progress: bool | None = None,
) -> ReprocessResult:
    rejects = _SqliteRejects(store) if isinstance(store, Store) else _PostgresRejects(store)
    result = ReprocessResult()
    with progress("reprocess", "rejects", rejects.total, show=show_progress) as bar:
        while rows := rejects.chunk():
            now = int(time.time())
            fixed: list[tuple[str, Batch]] = []
            for key, message_id, event_index, raw in rows:
                batch = retry_one(message_id, key, event_index, raw, max_decoded_bytes, now)
                if batch is not None:
                    fixed.append((key, batch))
            result.retried += len(rows)
            result.fixed += len(fixed)
            result.kept += len(rows) - len(fixed)
            if fixed and not dry_run:
                events, adjustments, new_rejects = rejects.write(fixed)
                result.events += events
                result.adjustments += adjustments
                result.new_rejects += new_rejects
            bar.advance(len(rows))
    return result


def run(settings: Settings, *, dry_run: bool = False, allow_network_fs: bool = False) -> int:
    """Retry the rejects in the settings' database and print what happened to them."""
    # A refused DATABASE_URL is exit 2, an unreachable server exit 3 at once (no waiting).
    store = open_store(settings, allow_network_fs=allow_network_fs, wait_for_server=False)
    try:
        result = reprocess(store, settings.max_decoded_bytes, dry_run=dry_run)
    except _driver_errors(store) as exc:
        reason = str(exc) if settings.database_url is None else scrub(str(exc), settings.database_url)
        raise DatabaseFault(f"cannot reprocess rejects in {describe(settings)}: {reason}") from None
    finally:
        store.close()
    verb = "would succeed" if dry_run else "succeeded"
    summary: dict[str, Any] = {
        "retried": result.retried,
        verb: result.fixed,
        "still rejected": result.kept,
    }
    if not dry_run:
        summary.update(
            {"new events": result.events, "new adjustments": result.adjustments, "new rejects": result.new_rejects}
        )
    print("reprocess-rejects: " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
    return 0
