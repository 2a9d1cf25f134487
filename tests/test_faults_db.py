"""Issue 5, item 5: database faults.

- An analyst holds a long write transaction (longer than the busy timeout) or a long read
  transaction: the worker waits and retries, deletes nothing meanwhile, and drops nothing.
- The disk fills up (a small tmpfs mounted for the test): the worker stops taking messages,
  deletes nothing it has not committed, exits 3 with a clear message, and resumes cleanly once
  the file system is grown.
- The database is read-only (a tmpfs remounted read-only; a chmod-ed file when the test cannot
  mount, i.e. not root; and, in process, mid-run with PRAGMA query_only): the same.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from bench.generate import Generator
from chalicelib.codec import decode_body
from chalicelib.queues.local import LocalQueue
from db.store import Store
from tests.faultkit import (
    Expected,
    WorkerProcess,
    assert_exactly_once,
    can_mount,
    is_update,
    local_queue_state,
    pack,
    remount,
    stored,
    tmpfs,
    wait_for,
)
from worker.loop import Limits, Worker

EXIT_DB_FAULT = 3


def _fill(queue: LocalQueue, events: list[dict[str, Any]], per_message: int = 100) -> int:
    bodies = [body for body, _ in pack(events, per_message)]
    for start in range(0, len(bodies), 50):
        assert queue.send_all(bodies[start : start + 50]).ok
    return len(bodies)


def _assert_nothing_deleted_uncommitted(db_path: Path, queue_path: Path, expected: Expected) -> int:
    """Every expected event is either committed or still in a message on the queue."""
    got = stored(db_path)
    on_queue_events: set[str] = set()
    on_queue_updates: set[int] = set()
    for body in local_queue_state(queue_path).bodies:
        for e in decode_body(body).events:
            if is_update(e):
                on_queue_updates.add(int(e["adjustment_sequence_id"]))
            else:
                on_queue_events.add(str(e["tune_event_id"]))
    lost = expected.events - set(got.events) - on_queue_events
    lost_updates = expected.adjustments - set(got.adjustments) - on_queue_updates
    assert not lost and not lost_updates, f"{len(lost)} events and {len(lost_updates)} updates were deleted unstored"
    return len(got.events)


# -- locks held by an analyst ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("hold", ["write", "read"])
def test_analyst_transaction_makes_the_worker_wait_not_drop(hold: str, tmp_path: Path) -> None:
    db_path, queue_path = tmp_path / "firehose.db", tmp_path / "queue.db"
    Store.open(db_path).close()
    events = Generator(51).events(5_000)
    expected = Expected.of(events)
    queue = LocalQueue(queue_path)
    messages = _fill(queue, events)

    analyst = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    if hold == "write":
        analyst.execute("BEGIN IMMEDIATE")
        analyst.execute("CREATE TABLE analyst_scratch (note TEXT)")
    else:
        analyst.execute("BEGIN")
        analyst.execute("SELECT count(*) FROM events").fetchone()
    worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, visibility_timeout=10)
    try:
        if hold == "write":
            # The worker notices the lock, and keeps waiting past the 5 s busy timeout.
            wait_for(lambda: "locked" in worker.output(), 60, "the worker to report the lock")
            time.sleep(6)
            assert worker.alive(), worker.output()[-2000:]
            state = local_queue_state(queue_path)
            assert state.visible + state.in_flight == messages, "a message was deleted while the database was locked"
            assert stored(db_path).events == []
            analyst.execute("ROLLBACK")
            assert worker.wait(120) == 0, worker.output()[-2000:]
        else:
            assert worker.wait(120) == 0, worker.output()[-2000:]
            analyst.execute("COMMIT")
    finally:
        analyst.close()
        worker.stop()
    assert_exactly_once(db_path, expected)
    state = local_queue_state(queue_path)
    assert (state.visible, state.in_flight, state.dead) == (0, 0, 0)
    assert "database is locked" not in worker.output().replace("is locked by another", "")
    queue.close()


# -- a full disk -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not can_mount(), reason="mounting a small tmpfs needs root on Linux")
def test_disk_full_stops_deletes_nothing_and_resumes(tmp_path: Path) -> None:
    small = tmp_path / "small"
    queue_path = tmp_path / "queue.db"
    events = Generator(52).events(20_000)
    expected = Expected.of(events)
    queue = LocalQueue(queue_path)
    messages = _fill(queue, events)
    with tmpfs(small, "3m"):
        db_path = small / "firehose.db"
        worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, "full", visibility_timeout=2)
        rc = worker.finish(120)
        output = worker.output()
        assert rc == EXIT_DB_FAULT, output[-3000:]
        assert "disk is full" in output, output[-3000:]
        assert "without deleting" in output or "nothing was deleted" in output, output[-3000:]
        committed = _assert_nothing_deleted_uncommitted(db_path, queue_path, expected)
        left = local_queue_state(queue_path)
        assert left.visible + left.in_flight > 0 and left.dead == 0
        assert committed < len(expected.events)

        remount(small, "size=256m")  # the operator frees space
        worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, "resumed", visibility_timeout=2)
        assert worker.finish(180) == 0, worker.output()[-3000:]
        assert_exactly_once(db_path, expected)
        state = local_queue_state(queue_path)
        assert (state.visible, state.in_flight, state.dead) == (0, 0, 0)
        print(f"\n[disk-full] messages={messages} committed_before_full={committed} lost=0")
    queue.close()


# -- a read-only database ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _read_only_db(directory: Path) -> Any:
    """Yield a setter: set(True) makes the database read-only, set(False) writable again."""
    if can_mount():
        with tmpfs(directory, "256m"):
            yield lambda ro: remount(directory, "ro" if ro else "rw")
        return

    # Fallback without root: file permissions (root would ignore them).
    def flip(ro: bool) -> None:
        for path in [directory, *directory.iterdir()]:
            path.chmod((0o555 if path.is_dir() else 0o444) if ro else (0o755 if path.is_dir() else 0o644))

    directory.mkdir(parents=True, exist_ok=True)
    yield flip


@pytest.mark.slow
def test_read_only_database_stops_deletes_nothing_and_resumes(tmp_path: Path) -> None:
    directory = tmp_path / "dbdir"
    queue_path = tmp_path / "queue.db"
    generator = Generator(53)
    first, second = generator.events(2_000), generator.events(3_000)
    expected = Expected.of(first + second)
    queue = LocalQueue(queue_path)
    with _read_only_db(directory) as set_read_only:
        db_path = directory / "firehose.db"
        _fill(queue, first)
        worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, "before", visibility_timeout=2)
        assert worker.wait(120) == 0, worker.output()
        messages = _fill(queue, second)

        set_read_only(True)
        worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, "readonly", visibility_timeout=2)
        rc = worker.finish(120)
        output = worker.output()
        assert rc == EXIT_DB_FAULT, output[-3000:]
        assert "readonly" in output.replace("read-only", "readonly").replace("read only", "readonly"), output[-3000:]
        left = local_queue_state(queue_path)
        assert left.visible + left.in_flight == messages, "a message was deleted though nothing could be written"

        set_read_only(False)
        worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, "resumed", visibility_timeout=2)
        assert worker.finish(120) == 0, worker.output()[-3000:]
        assert_exactly_once(db_path, expected)
    queue.close()
    print(f"\n[read-only] mounted={can_mount()} messages_held={messages} lost=0")


class _Recorder:
    """Wraps a queue; records every call made after the store failed."""

    def __init__(self, queue: LocalQueue, failed: list[bool]) -> None:
        self.queue, self.failed, self.after_fault = queue, failed, []  # type: ignore[var-annotated]
        self.backend = queue.backend

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.queue, name)
        if name not in ("receive", "delete", "change_visibility"):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.failed:
                self.after_fault.append(name)
            return real(*args, **kwargs)

        return call


def test_database_turning_read_only_mid_run_stops_the_worker(tmp_path: Path) -> None:
    """In process: the store becomes read-only after the first batch; the worker stops taking
    messages at once, deletes none of the batch in hand, and returns 3."""
    queue = LocalQueue(tmp_path / "queue.db")
    generator = Generator(54)
    first, second = generator.events(300), generator.events(700)
    expected = Expected.of(first + second)
    store = Store.open(tmp_path / "firehose.db")
    failed: list[bool] = []
    recorder = _Recorder(queue, failed)
    worker = Worker(recorder, store, Limits(wait_seconds=0.2, visibility_timeout=60), out=None)  # type: ignore[arg-type]
    real_write = store.write

    def write(batch: Any, give_up: Any = lambda: False) -> Any:
        try:
            return real_write(batch, give_up)
        except Exception:
            failed.append(True)
            raise

    store.write = write  # type: ignore[method-assign]
    _fill(queue, first)
    assert worker.run(until_empty=True) == 0
    messages = _fill(queue, second)
    store.db.execute("PRAGMA query_only = ON")
    assert worker.run(until_empty=True) == EXIT_DB_FAULT
    assert failed and recorder.after_fault in ([], ["change_visibility"]), recorder.after_fault
    depth = queue.depth()
    assert depth.visible + depth.in_flight == messages

    store.db.execute("PRAGMA query_only = OFF")  # fixed; the held messages come back without waiting
    with contextlib.closing(sqlite3.connect(queue.path)) as q, q:
        q.execute("UPDATE messages SET visible_at = 0")
    worker = Worker(queue, store, Limits(wait_seconds=0.2, visibility_timeout=60), out=None)
    assert worker.run(until_empty=True) == 0
    store.close()
    assert_exactly_once(tmp_path / "firehose.db", expected)
    queue.close()


def test_cli_reports_a_database_it_cannot_open(tmp_path: Path) -> None:
    """A database path that cannot be a file: exit 3, a message naming the path, nothing deleted."""
    queue_path = tmp_path / "queue.db"
    queue = LocalQueue(queue_path)
    messages = _fill(queue, Generator(55).events(200))
    bad = tmp_path / "a-directory.db"
    bad.mkdir()
    worker = WorkerProcess(bad, f"local:{queue_path}", tmp_path, "cannot-open")
    rc = worker.finish(60)
    assert rc == EXIT_DB_FAULT, worker.output()
    assert str(bad) in worker.output() and "Traceback" not in worker.output()
    state = local_queue_state(queue_path)
    assert state.visible == messages and state.in_flight == 0
    queue.close()
    assert os.path.isdir(bad)
