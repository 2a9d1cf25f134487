"""The baselines every worker figure is divided by, measured in the same run on the same data.

- ceiling: the worker's own rows, already built as tuples (in the form the store binds them),
  `executemany` into the same schema (same store, same PRAGMAs), one transaction per batch of the
  worker's batch size. Also measured without the secondary indexes of `events`, to show their cost.
- naive: one event per message, one message per receive, one INSERT + COMMIT per event, one
  delete per message, against the same local queue, into the same schema, on the settings a
  first version has: `sqlite3.connect(path)` and SQLite's defaults (rollback journal,
  synchronous=FULL). Also measured on the store's own settings (WAL, synchronous=NORMAL), to show
  how much of the gap is the per-event commit's fsync.
- sqlite-utils: `sqlite-utils insert DB events FILE --pk tune_event_id --ignore --alter`.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from chalicelib.codec import DEFAULT_MAX_DECODED_BYTES
from chalicelib.queues.local import LocalQueue
from db.store import INSERT_ADJUSTMENTS, INSERT_ENVELOPES, INSERT_EVENTS, INSERT_REJECTS, Store
from worker.decoders import decode_batch
from worker.rows import Batch

NOW = 1_790_000_000


def built(queue_path: Path, messages_per_batch: int) -> Iterator[Batch]:
    """The worker's rows for the messages of a queue file, in the worker's batches, one at a time."""
    db = sqlite3.connect(f"file:{queue_path}?mode=ro", uri=True)
    try:
        cursor = db.execute("SELECT message_id, body FROM messages ORDER BY seq")
        while chunk := cursor.fetchmany(messages_per_batch):
            yield decode_batch([(message_id, body, 1) for message_id, body in chunk], DEFAULT_MAX_DECODED_BYTES, NOW)
    finally:
        db.close()


def prebuilt(queue_path: Path, messages_per_batch: int) -> list[Batch]:
    """All of `built`, in memory: for a ceiling measured more than once."""
    return list(built(queue_path, messages_per_batch))


def secondary_indexes(db: sqlite3.Connection, table: str = "events") -> list[str]:
    """The indexes the migrations create on `table` (not the primary key's own)."""
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL ORDER BY name",
        (table,),
    ).fetchall()
    return [name for (name,) in rows]


def ceiling(batches: Iterable[Batch], db_path: Path, without_indexes: bool = False) -> dict[str, Any]:
    """Time only BEGIN, executemany and COMMIT per batch into a fresh database, and its close (the
    last WAL checkpoint).

    The rows are handed over exactly as the worker builds them and the store binds them (building
    them, when `batches` is `built`, is untimed).
    `without_indexes` drops the secondary indexes of `events` first: what the analysts' indexes cost.
    """
    store = Store.open(db_path)
    db = store.db
    dropped = secondary_indexes(db) if without_indexes else []
    for name in dropped:
        db.execute(f"DROP INDEX {name}")  # names read from sqlite_master just above
    events, seconds, build_seconds = 0, 0.0, 0.0
    source = iter(batches)
    while True:
        built_at = time.perf_counter()
        b = next(source, None)
        build_seconds += time.perf_counter() - built_at  # decoding, when `batches` is `built`
        if b is None:
            break
        rows, adjustments, envelopes, rejects = b.events, b.adjustments, b.envelopes, b.rejects
        events += len(rows) + len(adjustments) + len(rejects)
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(INSERT_EVENTS, rows)
        db.executemany(INSERT_ADJUSTMENTS, adjustments)
        db.executemany(INSERT_ENVELOPES, envelopes)
        db.executemany(INSERT_REJECTS, rejects)
        db.execute("COMMIT")
        seconds += time.perf_counter() - started
    started = time.perf_counter()
    store.close()  # the final WAL checkpoint: every consumer pays for writing its pages home
    seconds += time.perf_counter() - started
    return {
        "seconds": seconds,
        "events": events,
        "build_seconds": build_seconds,
        "dropped_indexes": dropped,
        "db_bytes": file_bytes(db_path),
    }


def file_bytes(path: Path) -> int:
    return sum(Path(f"{path}{suffix}").stat().st_size for suffix in ("", "-wal") if Path(f"{path}{suffix}").exists())


def naive(queue_path: Path, db_path: Path, store_settings: bool = False) -> dict[str, float]:
    """A first version: receive one, insert and commit each event, delete it; repeat."""
    queue = LocalQueue(queue_path)
    store = Store.open(db_path)  # the schema, every migration
    if not store_settings:
        store.db.execute("PRAGMA journal_mode=DELETE")  # WAL is a property of the file: undo it
        store.close()
        store = Store(sqlite3.connect(db_path, isolation_level=None), db_path)
    db = store.db
    events = 0
    started = time.perf_counter()
    while True:
        got = queue.receive(1, 0, 60)
        if not got:
            break
        message = got[0]
        batch = Batch()
        batch.add_message(message.message_id, message.body, message.receive_count)
        for sql, rows in ((INSERT_EVENTS, batch.events), (INSERT_ADJUSTMENTS, batch.adjustments)):
            for row in rows:
                db.execute("BEGIN")
                db.execute(sql, row)
                db.execute("COMMIT")
                events += 1
        for row in batch.rejects:
            db.execute("BEGIN")
            db.execute(INSERT_REJECTS, row)
            db.execute("COMMIT")
            events += 1
        queue.delete([message.receipt])
    store.close()
    seconds = time.perf_counter() - started
    queue.close()
    return {"seconds": seconds, "events": events}


SQLITE_UTILS_ARGS = ["insert", "DB", "events", "FILE", "--pk", "tune_event_id", "--ignore", "--alter"]


def sqlite_utils(json_path: Path, db_path: Path, events: int) -> dict[str, Any]:
    """The CLI an analyst would run, timed as a whole process (start-up included, ~0.3 s)."""
    exe = Path(sys.executable).parent / "sqlite-utils"
    args = [str(db_path) if a == "DB" else str(json_path) if a == "FILE" else a for a in SQLITE_UTILS_ARGS]
    started = time.perf_counter()
    subprocess.run([str(exe), *args], check=True, capture_output=True)
    return {"seconds": time.perf_counter() - started, "events": events, "db_bytes": file_bytes(db_path)}
