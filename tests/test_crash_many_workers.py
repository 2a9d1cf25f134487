"""Issue 5, item 7: four worker processes on one local queue and one database.

They start together on a database that does not exist yet (so they also race to migrate it),
drain 40,000 events, and must end with every event once, the queue empty, every process exited
0, and no "database is locked" error anywhere in their output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from tests.faultkit import Expected, WorkerProcess, assert_exactly_once, local_queue_state, pack

WORKERS = 4
EVENTS = 40_000


@pytest.mark.slow
def test_four_workers_one_queue_one_database(tmp_path: Path) -> None:
    events = Generator(71).events(EVENTS)
    expected = Expected.of(events)
    queue_path, db_path = tmp_path / "queue.db", tmp_path / "firehose.db"
    queue = LocalQueue(queue_path)
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
    state = local_queue_state(queue_path)
    assert (state.visible, state.in_flight, state.dead) == (0, 0, 0)
    assert len(got.envelopes) == len(bodies)
    busy = sum(1 for output in outputs if "messages 0 " not in output.splitlines()[-1])
    queue.close()
    print(
        f"\n[many-workers] workers={WORKERS} busy={busy} messages={len(bodies)} events={expected.offered} "
        f"redelivered={sum(1 for c in got.envelopes.values() if (c or 1) > 1)} lost=0 duplicates=0"
    )
