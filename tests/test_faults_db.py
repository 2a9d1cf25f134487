"""Issue 5, item 5: database faults, on both queue backends and with both decoders; every delete
is checked at the moment it happens (tests/invariants.py).

- An analyst holds a long write transaction (longer than the busy timeout) or a long read
  transaction: the worker waits and retries, deletes nothing meanwhile, and drops nothing.
- The disk fills up: the worker stops taking messages, deletes nothing it has not committed,
  exits 3 with a clear message, and resumes cleanly once there is room. Everywhere, a file-size
  limit on the worker (RLIMIT_FSIZE: its writes past it fail with EFBIG, which binds root and
  needs no privilege); where mounting is allowed, also a small tmpfs that really fills.
- The database is read-only: everywhere, file modes (a 0444 file in a 0555 directory; a worker
  run by root gets them enforced by starting without CAP_DAC_OVERRIDE); where mounting is
  allowed, also a tmpfs remounted read-only; and, in process, mid-run with PRAGMA query_only.
  The test ids name the method that ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.generate import Generator
from chalicelib.codec import decode_body
from chalicelib.queues.base import Queue
from chalicelib.queues.local import LocalQueue
from db.schema import current_version, migrate
from db.store import Store
from tests.faultkit import (
    Expected,
    WorkerProcess,
    assert_exactly_once,
    can_mount,
    drop_permission_override,
    file_size_limit,
    is_root,
    is_update,
    local_queue_state,
    pack,
    remount,
    stored,
    tmpfs,
    wait_for,
)
from tests.invariants import Harness, LocalHarness, harness, leftovers
from worker.decoders import InlineDecoder, ProcessDecoder
from worker.loop import Limits, Worker

EXIT_DB_FAULT = 3


BACKENDS, DECODERS = ["local", "sqs"], ["inline", "process"]


@pytest.fixture(params=BACKENDS)
def watched(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A fresh queue of either backend, every delete checked; its database is tmp/firehose.db."""
    moto = request.getfixturevalue("moto_server") if request.param == "sqs" else None
    with harness(request.param, tmp_path, moto_server=moto) as h:
        yield h


def _fill(queue: Queue, events: list[dict[str, Any]], per_message: int = 100) -> int:
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
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("hold", ["write", "read"])
def test_analyst_transaction_makes_the_worker_wait_not_drop(
    hold: str, decoder: str, watched: Harness, tmp_path: Path
) -> None:
    h = watched
    db_path = h.db_path
    Store.open(db_path).close()
    events = Generator(51).events(5_000)
    expected = Expected.of(events)
    _fill(h.queue, events, per_message=50)  # 100 messages: more than one batch

    analyst = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    if hold == "write":
        analyst.execute("BEGIN IMMEDIATE")
        analyst.execute("CREATE TABLE analyst_scratch (note TEXT)")
    else:
        analyst.execute("BEGIN")
        analyst.execute("SELECT count(*) FROM events").fetchone()
    worker = WorkerProcess(db_path, h.url, tmp_path, visibility_timeout=10, env=h.env(), decode=decoder)
    try:
        if hold == "write":
            # The worker notices the lock, and keeps waiting past the 5 s busy timeout: its second
            # retry is logged only after a second busy timeout has run out.
            h.wait_for(lambda: "(attempt 2)" in worker.output() or not worker.alive(), 60, "a second retry")
            assert worker.alive(), worker.output()[-2000:]
            assert h.checked() == 0, "a message was deleted while the database was locked"
            assert stored(db_path).events == []
            analyst.execute("ROLLBACK")
        assert h.wait(worker, 120) == 0, worker.output()[-2000:]
        if hold == "read":
            analyst.execute("COMMIT")
    finally:
        analyst.close()
        worker.stop()
    assert_exactly_once(db_path, expected)
    assert leftovers(h) == (0, 0, 0)
    assert "database is locked" not in worker.output().replace("is locked by another", "")


# -- a full disk -------------------------------------------------------------------------------------------


# Where mounting is allowed (root, outside a locked-down container) a small tmpfs fills up too.
DISK_FULL = ["file-size-limit", *(["tmpfs"] if can_mount() else [])]
FILE_SIZE_LIMIT = 12 * 1024 * 1024  # above the local queue file and its WAL (~7 MB), below the database's 30 MB
# What SQLite says: a full file system is SQLITE_FULL; a write refused with EFBIG is an I/O error.
DISK_FULL_WORDS = {"tmpfs": "disk is full", "file-size-limit": "disk I/O error"}


@contextlib.contextmanager
def _small_disk(directory: Path, method: str) -> Iterator[tuple[Callable[[], None] | None, Callable[[], None]]]:
    """Yield (preexec for the worker that fills the disk, make room): `directory` holds the database."""
    if method == "tmpfs":
        with tmpfs(directory, "3m"):
            yield None, lambda: remount(directory, "size=256m")  # the operator frees space
        return
    directory.mkdir(parents=True, exist_ok=True)
    yield file_size_limit(FILE_SIZE_LIMIT), lambda: None  # the resumed worker runs without the limit


@pytest.mark.slow
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("method", DISK_FULL)
def test_disk_full_stops_deletes_nothing_and_resumes(
    method: str, decoder: str, watched: Harness, tmp_path: Path
) -> None:
    h = watched
    events = Generator(52).events(20_000)
    expected = Expected.of(events)
    messages = _fill(h.queue, events)
    with _small_disk(tmp_path / "small", method) as (full, make_room):
        db_path = tmp_path / "small" / "firehose.db"
        h.use_database(db_path)
        worker = WorkerProcess(
            db_path, h.url, tmp_path, "full", visibility_timeout=2, env=h.env(), decode=decoder, preexec=full
        )
        rc = h.wait(worker, 120)
        output = worker.output()
        assert rc == EXIT_DB_FAULT, output[-3000:]
        assert DISK_FULL_WORDS[method] in output, output[-3000:]
        assert "without deleting" in output or "nothing was deleted" in output, output[-3000:]
        if isinstance(h, LocalHarness):
            _assert_nothing_deleted_uncommitted(db_path, h.queue_path, expected)
        committed = len(stored(db_path).events)
        visible, in_flight, dead = leftovers(h)
        assert visible + in_flight > 0 and dead == 0
        assert committed < len(expected.events)

        make_room()
        worker = WorkerProcess(db_path, h.url, tmp_path, "resumed", visibility_timeout=2, env=h.env(), decode=decoder)
        assert h.wait(worker, 180) == 0, worker.output()[-3000:]
        assert_exactly_once(db_path, expected)
        assert leftovers(h) == (0, 0, 0)
    print(
        f"\n[disk-full:{method}:{h.backend}:{decoder}] messages={messages} committed_before_full={committed} "
        f"deletes_checked={h.checked()} lost=0"
    )


# -- a read-only database ----------------------------------------------------------------------------------


READ_ONLY = ["file-modes", *(["ro-mount"] if can_mount() else [])]


@contextlib.contextmanager
def _read_only_db(directory: Path, method: str) -> Iterator[tuple[Callable[[bool], None], Callable[[], None] | None]]:
    """Yield (set, preexec): set(True) makes the database read-only, set(False) writable again;
    preexec is for the worker that runs while it is read-only."""
    if method == "ro-mount":
        with tmpfs(directory, "256m"):
            yield (lambda ro: remount(directory, "ro" if ro else "rw")), None
        return

    def flip(ro: bool) -> None:
        for path in [directory, *directory.iterdir()]:
            path.chmod((0o555 if path.is_dir() else 0o444) if ro else (0o755 if path.is_dir() else 0o644))

    directory.mkdir(parents=True, exist_ok=True)
    # Root ignores file modes through CAP_DAC_OVERRIDE: its worker starts without it.
    yield flip, (drop_permission_override if is_root() else None)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("method", READ_ONLY)
def test_read_only_database_stops_deletes_nothing_and_resumes(
    method: str, decoder: str, watched: Harness, tmp_path: Path
) -> None:
    h = watched
    directory = tmp_path / "dbdir"
    generator = Generator(53)
    first, second = generator.events(2_000), generator.events(3_000)
    expected = Expected.of(first + second)
    with _read_only_db(directory, method) as (set_read_only, read_only_preexec):
        db_path = directory / "firehose.db"
        h.use_database(db_path)
        _fill(h.queue, first, per_message=20)  # 100 messages: more than one batch
        worker = WorkerProcess(db_path, h.url, tmp_path, "before", visibility_timeout=2, env=h.env(), decode=decoder)
        assert h.wait(worker, 120) == 0, worker.output()
        messages = _fill(h.queue, second)
        deleted_before = h.checked()

        set_read_only(True)
        worker = WorkerProcess(
            db_path,
            h.url,
            tmp_path,
            "readonly",
            visibility_timeout=2,
            env=h.env(),
            decode=decoder,
            preexec=read_only_preexec,
        )
        rc = h.wait(worker, 120)
        output = worker.output()
        assert rc == EXIT_DB_FAULT, output[-3000:]
        assert "readonly" in output.replace("read-only", "readonly").replace("read only", "readonly"), output[-3000:]
        assert h.checked() == deleted_before, "a message was deleted though nothing could be written"
        visible, in_flight, _ = leftovers(h)
        assert visible + in_flight == messages

        set_read_only(False)
        worker = WorkerProcess(db_path, h.url, tmp_path, "resumed", visibility_timeout=2, env=h.env(), decode=decoder)
        assert h.wait(worker, 120) == 0, worker.output()[-3000:]
        assert_exactly_once(db_path, expected)
    how = "root without CAP_DAC_OVERRIDE" if method == "file-modes" and is_root() else "as is"
    print(f"\n[read-only:{method}:{h.backend}:{decoder}] worker run {how}; messages_held={messages} lost=0")


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


@pytest.mark.parametrize("decoder", DECODERS)
def test_database_turning_read_only_mid_run_stops_the_worker(tmp_path: Path, decoder: str) -> None:
    """In process: the store becomes read-only after the first batch; the worker stops taking
    messages at once, deletes none of the batch in hand, and returns 3."""
    h = LocalHarness(tmp_path / "queue.db", tmp_path / "firehose.db", tmp_path)
    queue = h.queue
    generator = Generator(54)
    first, second = generator.events(300), generator.events(700)
    expected = Expected.of(first + second)
    store = Store.open(tmp_path / "firehose.db")
    failed: list[bool] = []
    recorder = _Recorder(queue, failed)
    decoders = InlineDecoder() if decoder == "inline" else ProcessDecoder().start()
    limits = Limits(wait_seconds=0.2, visibility_timeout=60)
    worker = Worker(recorder, store, limits, out=None, decoder=decoders)  # type: ignore[arg-type]
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
    worker = Worker(queue, store, limits, out=None, decoder=decoders)
    assert worker.run(until_empty=True) == 0
    decoders.close()
    store.close()
    h.check()
    assert_exactly_once(tmp_path / "firehose.db", expected)
    h.close()


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


@pytest.mark.slow
def test_sigterm_ends_a_wait_to_migrate_a_locked_database(tmp_path: Path) -> None:
    """Issue 12, finding 8: a database with an older schema, whose write lock another process holds.
    The worker waits to migrate it and says so; SIGTERM ends the wait (exit 3, the reason on stderr)
    instead of going unheard while the worker retries for ever."""
    db_path, queue_path = tmp_path / "firehose.db", tmp_path / "queue.db"
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    migrate(other, target=1)
    other.execute("BEGIN IMMEDIATE")
    LocalQueue(queue_path).close()
    worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, "locked-migration")
    try:
        wait_for(lambda: "waiting to migrate" in worker.output(), 60, "the worker to report the lock")
        assert worker.signal(signal.SIGTERM)
        rc = worker.finish(60)
    finally:
        other.execute("ROLLBACK")
    output = worker.output()
    assert rc == EXIT_DB_FAULT, output[-2000:]
    assert str(db_path) in output and "stayed locked" in output and "Traceback" not in output, output[-2000:]
    assert current_version(other) == 1  # nothing half-migrated
    other.close()
