"""The baselines every worker figure is divided by, measured in the same run on the same data.

- ceiling: the worker's own rows, already built as tuples, `executemany` into the same schema
  (same store, same PRAGMAs), one transaction per batch of the worker's batch size.
- naive: one event per message, one message per receive, one INSERT + COMMIT per event, one
  delete per message, against the same local queue.
- sqlite-utils: `sqlite-utils insert DB events FILE --pk tune_event_id --ignore --alter`.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from chalicelib.queues.local import LocalQueue
from db.rows import Batch
from db.schema import migrations, statements
from db.store import INSERT_ADJUSTMENTS, INSERT_ENVELOPES, INSERT_EVENTS, INSERT_REJECTS, Store, connect

from .data import queue_bodies

NOW = 1_790_000_000


def prebuilt(queue_path: Path, messages_per_batch: int) -> list[Batch]:
    """The worker's rows for these messages, in the worker's batches (built untimed)."""
    bodies = queue_bodies(queue_path)
    batches = []
    for start in range(0, len(bodies), messages_per_batch):
        batch = Batch()
        for message_id, body in bodies[start : start + messages_per_batch]:
            batch.add_message(message_id, body, 1, None, NOW)
        batches.append(batch)
    return batches


def rowid_events_db(path: Path) -> sqlite3.Connection:
    """The same schema and PRAGMAs, except `events` as a rowid table with a UNIQUE key (an
    experiment for the schema's owner: rows append at the end instead of at a random key)."""
    db = connect(path)
    for _version, migration in migrations():
        for statement in statements(migration.read_text()):
            if "CREATE TABLE events" in statement:
                statement = statement.replace(") WITHOUT ROWID", ")").replace(
                    "tune_event_id TEXT PRIMARY KEY", "tune_event_id TEXT NOT NULL UNIQUE"
                )
                assert "UNIQUE" in statement and "WITHOUT ROWID" not in statement
            db.execute(statement)
    return db


def ceiling(batches: list[Batch], db_path: Path, rowid_events: bool = False) -> dict[str, float]:
    """Time only BEGIN, executemany and COMMIT per batch, into a fresh database."""
    db = rowid_events_db(db_path) if rowid_events else Store.open(db_path).db
    events = sum(len(b.events) + len(b.adjustments) + len(b.rejects) for b in batches)
    started = time.perf_counter()
    for batch in batches:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(INSERT_EVENTS, batch.events)
        db.executemany(INSERT_ADJUSTMENTS, batch.adjustments)
        db.executemany(INSERT_ENVELOPES, batch.envelopes)
        db.executemany(INSERT_REJECTS, batch.rejects)
        db.execute("COMMIT")
    seconds = time.perf_counter() - started
    db.close()
    return {"seconds": seconds, "events": events}


def naive(queue_path: Path, db_path: Path) -> dict[str, float]:
    """A first version: receive one, insert and commit each event, delete it; repeat."""
    queue = LocalQueue(queue_path)
    store = Store.open(db_path)
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
    seconds = time.perf_counter() - started
    store.close()
    queue.close()
    return {"seconds": seconds, "events": events}


SQLITE_UTILS_ARGS = ["insert", "DB", "events", "FILE", "--pk", "tune_event_id", "--ignore", "--alter"]


def sqlite_utils(json_path: Path, db_path: Path, events: int) -> dict[str, float]:
    """The CLI an analyst would run, timed as a whole process (start-up included, ~0.3 s)."""
    exe = Path(sys.executable).parent / "sqlite-utils"
    args = [str(db_path) if a == "DB" else str(json_path) if a == "FILE" else a for a in SQLITE_UTILS_ARGS]
    started = time.perf_counter()
    subprocess.run([str(exe), *args], check=True, capture_output=True)
    return {"seconds": time.perf_counter() - started, "events": events}
