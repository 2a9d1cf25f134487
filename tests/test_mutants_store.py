"""The SQLite store's waiting and freshness paths, where `make mutation` found no test to say what
they do (docs/mutation.md).

- A write that meets another connection's lock waits it out, telling the operator each time which
  database and which attempt, until `give_up()` says stop: then it raises a DatabaseFault that
  names the database, and nothing of the batch is stored. Once the lock is gone the batch is written.
- A write reports exactly what it stored: a batch of rejects alone counts no event and no update.
- A write fault that is not a lock names the database and SQLite's error.
- An `Incoming` batch reaches the database part by part, in one transaction: the first parts are
  inserted before the later ones are even produced (the helper is still decoding them).
- The store opens in WAL mode, synchronous=FULL, with its page cache; opening a database another
  process holds locked waits, telling the operator, until `give_up()` says stop.
- The newest event time is the newest stored at most FUTURE_SKEW_SECONDS ahead of now (a sender
  with a clock in the future does not make the data look fresh), or None when nothing is stored.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.generate import Generator
from db.batch import Incoming, Rows
from db.errors import DatabaseFault
from db.store import CACHE_KIB, FUTURE_SKEW_SECONDS, Store, WriteStats, newest_event_time
from tests.kit import tune_message
from worker.decoders import decode_batch

NOW = 1_790_100_000
PRAGMAS = ("journal_mode", "synchronous", "cache_size")


def _rows(count: int, seed: int):  # type: ignore[no-untyped-def]
    events = Generator(seed).events(count, adjustment_share=0, duplicate_share=0)
    return decode_batch([(f"m-{seed}", tune_message(events), 1)], 32 * 1024 * 1024, NOW)


def test_a_locked_database_is_waited_out_until_told_to_give_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "firehose.db"
    store = Store.open(path)
    store.db.execute("PRAGMA busy_timeout = 20")  # each attempt waits 20 ms here, not 5 s
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    asked: list[int] = []

    def give_up() -> bool:
        asked.append(len(asked) + 1)
        return len(asked) == 3

    caplog.set_level(logging.WARNING, logger="tune_firehose.store")
    try:
        with pytest.raises(DatabaseFault, match=f"^database {path} stayed locked: database is locked$"):
            store.write(_rows(5, 1801), give_up=give_up)
        assert asked == [1, 2, 3], "give_up is asked after each failed attempt, and obeyed"
        assert [r.getMessage() for r in caplog.records if r.name == "tune_firehose.store"] == [
            f"database {path} is locked by another connection (attempt {n}); retrying, nothing is lost" for n in (1, 2)
        ]
        other.execute("ROLLBACK")
        assert store.counts()["events"] == 0
        assert store.write(_rows(5, 1801)).events == 5  # the lock gone, the same batch is written whole
    finally:
        other.close()
        store.close()


def test_newest_event_time_is_the_newest_not_too_far_in_the_future(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "firehose.db")
    try:
        assert newest_event_time(store.db, NOW) is None
        store.write(_rows(20, 1802))
        times = sorted({t for (t,) in store.db.execute("SELECT event_time FROM events")})
        assert len(times) >= 2 and times[-1] - times[-2] >= 1
        newest = times[-1]
        # Dated exactly the allowed skew ahead of now: still counted; one second further: not.
        assert newest_event_time(store.db, newest - FUTURE_SKEW_SECONDS) == newest
        assert newest_event_time(store.db, newest - FUTURE_SKEW_SECONDS - 1) == times[-2]
        assert newest_event_time(store.db, newest + 10**6) == newest
        assert newest_event_time(store.db, times[0] - FUTURE_SKEW_SECONDS - 1) is None
        assert isinstance(newest_event_time(store.db, newest), int)
    finally:
        store.close()


def test_a_batch_of_rejects_alone_is_counted_as_rejects_alone(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "firehose.db")
    try:
        garbage = decode_batch([("garbage", "H4sI-not-really-gzip", 1)], 1024, NOW)
        assert (len(garbage.events), len(garbage.adjustments), len(garbage.rejects)) == (0, 0, 1)
        assert store.write(garbage) == WriteStats(rejects=1)
        assert store.write(garbage) == WriteStats()  # seen before: nothing new
    finally:
        store.close()


def test_a_write_fault_names_the_database_and_the_error(tmp_path: Path) -> None:
    path = tmp_path / "firehose.db"
    store = Store.open(path)
    try:
        store.db.execute("PRAGMA query_only = 1")  # every write now fails, and not for a lock
        with pytest.raises(DatabaseFault) as fault:
            store.write(_rows(3, 1803))
        assert str(fault.value) == f"cannot write to {path}: attempt to write a readonly database"
    finally:
        store.close()


def test_an_incoming_batch_is_inserted_part_by_part_in_one_transaction(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "firehose.db")
    parts = [_rows(4, seed) for seed in (1804, 1805, 1806)]
    inserted_before: list[int] = []

    def produced() -> Iterator[Rows]:
        for part in parts:
            # The store's own connection sees what this transaction has inserted so far.
            inserted_before.append(store.db.execute("SELECT count(*) FROM events").fetchone()[0])
            yield part

    try:
        stats = store.write(Incoming(produced()))
        assert inserted_before == [0, 4, 8], "each part is inserted before the next one is produced"
        assert stats.events == 12 and store.counts()["envelopes"] == 3
    finally:
        store.close()


def test_a_database_that_cannot_be_opened_is_a_fault_naming_it(tmp_path: Path) -> None:
    # SQLite says only "unable to open database file"; the hint after it (read-only file system,
    # directory or file not writable) is added only when it holds, and none does here, for any user:
    # the path is a directory.
    with pytest.raises(DatabaseFault) as fault:
        Store.open(tmp_path)
    assert str(fault.value) == f"cannot open database {tmp_path}: unable to open database file"


def test_the_store_opens_durable_and_in_wal_mode_with_its_page_cache(tmp_path: Path) -> None:
    # Durable before deleted: FULL syncs the WAL at each COMMIT, before the worker deletes (db/store.py).
    store = Store.open(tmp_path / "firehose.db")
    try:
        pragma = {name: store.db.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS}
    finally:
        store.close()
    assert pragma == {"journal_mode": "wal", "synchronous": 2, "cache_size": -CACHE_KIB}


def test_opening_a_locked_database_waits_until_told_to_give_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each attempt waits SQLite's busy timeout (5 s) first: two attempts in all.
    path = tmp_path / "firehose.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # a process migrating it, say
    caplog.set_level(logging.WARNING, logger="tune_firehose.store")
    try:
        with pytest.raises(DatabaseFault) as fault:
            Store.open(path, give_up=lambda: True)
        assert str(fault.value) == (f"database {path} stayed locked; gave up waiting to migrate it: database is locked")
        assert caplog.records == [], "giving up at once waits no more"

        def let_go() -> bool:  # the other process finishes while this one waits
            other.execute("ROLLBACK")
            return False

        store = Store.open(path, give_up=let_go)
        store.close()
    finally:
        other.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"database {path} is locked by another process (attempt 1); waiting to migrate it (SIGTERM or "
        "Ctrl-C stops waiting)"
    ]


def test_the_store_reads_the_newest_event_time_and_a_failed_read_is_a_fault_naming_the_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "firehose.db"
    store = Store.open(path)
    try:
        store.write(_rows(20, 1803))
        assert store.newest_event_time(NOW) == newest_event_time(store.db, NOW) is not None
        newest = store.newest_event_time(10**12)
        assert newest == store.db.execute("SELECT max(event_time) FROM events").fetchone()[0]
    finally:
        store.close()
    with pytest.raises(DatabaseFault) as fault:
        store.newest_event_time(NOW)
    assert str(fault.value) == f"cannot read {path}: Cannot operate on a closed database."


class _ReadOnlyFs:
    f_flag = os.ST_RDONLY


@pytest.mark.parametrize("why", ["read-only file system", "statvfs fails", "directory", "file"])
def test_a_database_that_cannot_be_opened_is_told_why_when_the_system_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """The hint after SQLite's vague message, for each reason the system can give (faked here: as
    root, file modes never refuse; tests/test_faults_db.py makes a real read-only file system)."""
    path = tmp_path / "firehose.db"
    path.mkdir()  # a directory: SQLite cannot open it, for any user
    if why == "read-only file system":
        monkeypatch.setattr(os, "statvfs", lambda _: _ReadOnlyFs())
        hint = f" (the file system holding {tmp_path} is mounted read-only)"
    elif why == "statvfs fails":
        monkeypatch.setattr(os, "statvfs", lambda _: (_ for _ in ()).throw(OSError("no")))
        hint = ""
    elif why == "directory":
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path)
        hint = f" (the directory {tmp_path} is not writable)"
    else:
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != path)
        hint = " (the file is read-only)"
    with pytest.raises(DatabaseFault) as fault:
        Store.open(path)
    assert str(fault.value) == f"cannot open database {path}: unable to open database file{hint}"
