"""Durable before deleted (issue 12, finding 5).

The worker deletes a batch's messages only after the COMMIT holding them is on disk: every COMMIT
of the store runs with synchronous=FULL (in WAL mode: the WAL is synced before COMMIT returns;
NORMAL would leave it to the next checkpoint, and a power cut could roll it back after the queue
had already forgotten the messages), and no delete comes before the COMMIT of its messages.

Recorded through the real worker, store and queues: the store connection's trace callback sees each
COMMIT and reads the connection's synchronous level as it starts; a wrapper around the queue sees
each delete and, at that moment, asks a separate connection whether the deleted messages' rows are
committed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chalicelib.queues.base import Message, Queue
from chalicelib.sqlite import connect
from db.store import Store
from tests.kit import send
from tests.ops_kit import bodies
from worker.decoders import make_decoder
from worker.loop import Limits, Worker

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


@dataclass
class Timeline:
    """What happened, in order: ("commit", synchronous level) and ("delete", message ids, of those
    the ones whose rows another connection saw committed at that moment)."""

    events: list[tuple[Any, ...]] = field(default_factory=list)


class RecordingQueue:
    """The real queue; each delete is recorded with what was committed when it was asked for."""

    def __init__(self, queue: Queue, db_path: Path, timeline: Timeline) -> None:
        self.queue, self.timeline = queue, timeline
        self.backend = queue.backend
        self.ids: dict[str, str] = {}  # receipt -> message id
        self._reader = connect(db_path, readonly=True)

    def receive(self, *args: Any, **kwargs: Any) -> list[Message]:
        got = self.queue.receive(*args, **kwargs)
        self.ids.update((m.receipt, m.message_id) for m in got)
        return got

    def delete(self, receipts: list[str]) -> list[str]:
        ids = [self.ids[r] for r in receipts]
        marks = ", ".join("?" * len(ids))
        committed = {
            row[0]
            for row in self._reader.execute(f"SELECT message_id FROM envelopes WHERE message_id IN ({marks})", ids)
        }
        self.timeline.events.append(("delete", ids, committed))
        return self.queue.delete(receipts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


def _watch_commits(store: Store, timeline: Timeline) -> None:
    db = store.db

    def traced(statement: str) -> None:
        if statement.strip().upper().startswith(("COMMIT", "END")):
            # Runs as the COMMIT starts, on the store's own connection: the level this COMMIT uses.
            (level,) = db.execute("PRAGMA synchronous").fetchone()
            timeline.events.append(("commit", level))

    db.set_trace_callback(traced)


@pytest.mark.parametrize("decode", ["inline", "process"])
def test_every_delete_follows_the_durable_commit_of_its_messages(decode: str, any_queue: Queue, tmp_path: Path) -> None:
    db_path = tmp_path / "firehose.db"
    messages = bodies(seed=61, events=1_500, per_message_bytes=6_000)
    send(any_queue, messages)
    store = Store.open(db_path)
    timeline = Timeline()
    _watch_commits(store, timeline)
    queue = RecordingQueue(any_queue, db_path, timeline)
    decoder = make_decoder(decode)
    try:
        # Small batches: several commits and deletes, and with the helper process one batch decoding
        # while the one before it is written.
        limits = Limits(wait_seconds=0.2, visibility_timeout=60, max_batch_events=300, max_batch_seconds=0.05)
        worker = Worker(queue, store, limits, out=None, decoder=decoder)  # type: ignore[arg-type]
        assert worker.run(until_empty=True) == 0
    finally:
        decoder.close()
        store.close()

    commits = [e for e in timeline.events if e[0] == "commit"]
    deletes = [e for e in timeline.events if e[0] == "delete"]
    assert len(deletes) >= 3, timeline.events  # the property is about more than one batch
    assert all(level >= FULL for _, level in commits), f"a COMMIT ran below synchronous=FULL: {commits}"
    for position, event in enumerate(timeline.events):
        if event[0] == "delete":
            _, ids, committed = event
            assert set(ids) == committed, f"deleted before its COMMIT: {sorted(set(ids) - committed)}"
            assert any(e[0] == "commit" for e in timeline.events[:position])
    deleted = [i for _, ids, _c in deletes for i in ids]
    assert len(deleted) == len(set(deleted)) == len(messages)  # every message, once
    depth = any_queue.depth()
    assert (depth.visible, depth.in_flight) == (0, 0)


def test_the_store_connection_commits_with_synchronous_full(tmp_path: Path) -> None:
    """What the worker's commits run with, read from the connection itself, and kept by a reopen."""
    for _ in range(2):
        store = Store.open(tmp_path / "firehose.db")
        assert store.db.execute("PRAGMA synchronous").fetchone() == (FULL,)
        assert store.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        store.close()
    assert sqlite3.connect(tmp_path / "firehose.db").execute("PRAGMA user_version").fetchone()[0] > 0
