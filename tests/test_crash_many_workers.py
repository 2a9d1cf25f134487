"""Issue 5, item 7: four worker processes on one local queue and one database.

They start together on a database that does not exist yet (so they also race to migrate it),
drain 40,000 events, and must end with every event once, the queue empty, every process exited
0, and no "database is locked" error anywhere in their output. A trigger in the queue file logs
every hand-out: with nothing crashing, no message may be handed out twice.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from tests.faultkit import Expected, WorkerProcess, assert_exactly_once, local_queue_state, pack, read_only

WORKERS = 4
EVENTS = 40_000


@pytest.mark.slow
def test_four_workers_one_queue_one_database(tmp_path: Path) -> None:
    events = Generator(71).events(EVENTS)
    expected = Expected.of(events)
    queue_path, db_path = tmp_path / "queue.db", tmp_path / "firehose.db"
    queue = LocalQueue(queue_path)
    # Instrument the queue file: log every hand-out (each receive sets a new receipt).
    with contextlib.closing(sqlite3.connect(queue_path)) as db, db:
        db.execute("CREATE TABLE handouts (message_id TEXT, receive_count INTEGER)")
        db.execute(
            "CREATE TRIGGER log_handout AFTER UPDATE OF receipt ON messages "
            "BEGIN INSERT INTO handouts VALUES (new.message_id, new.receive_count); END"
        )
    bodies = [body for body, _ in pack(events, 100)]
    for start in range(0, len(bodies), 50):
        assert queue.send_all(bodies[start : start + 50]).ok

    workers = [
        WorkerProcess(db_path, f"local:{queue_path}", tmp_path, f"worker{i}", visibility_timeout=60)
        for i in range(WORKERS)
    ]
    try:
        codes = [w.wait(240) for w in workers]
    finally:
        for w in workers:
            w.stop()
    outputs = [w.output() for w in workers]
    for code, output in zip(codes, outputs, strict=True):
        assert code == 0, f"a worker exited {code}: {output[-3000:]}"
        assert "database is locked" not in output, f"'database is locked' in a worker's output: {output[-3000:]}"
        assert "Traceback" not in output, f"a traceback in a worker's output: {output[-3000:]}"

    got = assert_exactly_once(db_path, expected)
    assert len(got.envelopes) == len(bodies)
    with contextlib.closing(read_only(queue_path)) as db:
        handouts = dict(db.execute("SELECT message_id, count(*) FROM handouts GROUP BY message_id").fetchall())
    assert len(handouts) == len(bodies)
    twice = sum(1 for n in handouts.values() if n > 1)
    assert twice == 0, f"{twice} messages were handed to more than one worker (or twice to one)"
    state = local_queue_state(queue_path)
    assert (state.visible, state.in_flight, state.dead) == (0, 0, 0)
    busy = sum(1 for output in outputs if "messages 0 " not in output.splitlines()[-1])
    queue.close()
    print(
        f"\n[many-workers] workers={WORKERS} busy={busy} messages={len(bodies)} events={expected.offered} "
        f"redelivered={sum(1 for c in got.envelopes.values() if (c or 1) > 1)} lost=0 duplicates=0"
    )
