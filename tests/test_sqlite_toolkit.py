"""The SQLite toolkit (db/sqlite.py): connections by escaped URI, one transaction helper, lock
detection by error code, one retry-while-busy loop; and the store's use of them."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings

from chalicelib.sqlite import atomic, connect, is_busy, retry_while_busy, snapshot
from db.errors import DatabaseFault
from db.store import Store
from tests.kit import tune_message
from tests.ops_kit import examples, file_names, new_files
from worker.rows import Batch

# -- connect ---------------------------------------------------------------------------------------


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=file_names())
@example(name="host#1.db")
@example(name="a?mode=ro")
@example(name="%41%00.db")
@example(name="-x.db")
@example(name="file:x.db")
@example(name=" sp ace ")
@example(name="ünïcödé.db")
def test_connect_opens_the_file_it_is_given(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever the file name, writing creates that file and nothing else, and a read-only open
    reads that same file."""
    directory = tmp_path_factory.mktemp("names")
    path = directory / name
    db = connect(path, wal=True, synchronous="FULL")
    with atomic(db):
        db.execute("CREATE TABLE marker (name TEXT)")
        db.execute("INSERT INTO marker VALUES (?)", (name,))
    db.close()
    assert path.is_file()
    reader = connect(path, readonly=True)
    assert reader.execute("SELECT name FROM marker").fetchall() == [(name,)]
    reader.close()
    assert new_files(directory, set(), {name}) == set()


def test_connect_relative_path_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    connect("sub dir/#a.db").close()
    assert (tmp_path / "sub dir" / "#a.db").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"sub dir"}


def test_readonly_connect_never_creates_a_file(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        connect(tmp_path / "missing#1.db", readonly=True)
    assert list(tmp_path.iterdir()) == []


def test_readonly_connect_cannot_write(tmp_path: Path) -> None:
    connect(tmp_path / "f.db").execute("CREATE TABLE t (x)")
    db = connect(tmp_path / "f.db", readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("INSERT INTO t VALUES (1)")


def test_synchronous_takes_only_its_four_words(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        connect(tmp_path / "f.db", synchronous="FULL; DROP TABLE t")  # type: ignore[arg-type]


# -- atomic ----------------------------------------------------------------------------------------


def test_atomic_commits_the_block(tmp_path: Path) -> None:
    db, other = connect(tmp_path / "f.db", wal=True), connect(tmp_path / "f.db")
    db.execute("CREATE TABLE t (x)")
    with atomic(db):
        db.execute("INSERT INTO t VALUES (1)")
        assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)  # not before the end
    assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert not db.in_transaction


def test_atomic_rolls_back_when_the_block_raises(tmp_path: Path) -> None:
    db = connect(tmp_path / "f.db")
    db.execute("CREATE TABLE t (x)")
    with pytest.raises(KeyError), atomic(db):
        db.execute("INSERT INTO t VALUES (1)")
        raise KeyError("boom")
    assert not db.in_transaction
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_atomic_rolls_back_when_the_commit_fails(tmp_path: Path) -> None:
    """A deferred foreign key fails at COMMIT, which leaves the transaction open: it is rolled back."""
    db = connect(tmp_path / "f.db")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), atomic(db):
        db.execute("INSERT INTO child VALUES (7)")
    assert not db.in_transaction
    assert db.execute("SELECT count(*) FROM child").fetchone() == (0,)


def test_snapshot_sees_one_point_in_time(tmp_path: Path) -> None:
    writer = connect(tmp_path / "f.db", wal=True)
    writer.execute("CREATE TABLE t (x)")
    reader = connect(tmp_path / "f.db", readonly=True)
    with snapshot(reader):
        writer.execute("INSERT INTO t VALUES (1)")  # committed after the snapshot began
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)


# -- busy ------------------------------------------------------------------------------------------


def _locked(tmp_path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """(holder, waiter): the holder has the write lock; the waiter gives up on it at once."""
    holder = connect(tmp_path / "f.db", wal=True)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder.execute("BEGIN IMMEDIATE")
    return holder, connect(tmp_path / "f.db", busy_timeout_ms=0)


def test_is_busy_by_error_code_not_by_text(tmp_path: Path) -> None:
    holder, waiter = _locked(tmp_path)
    with pytest.raises(sqlite3.OperationalError) as lock:
        waiter.execute("BEGIN IMMEDIATE")
    assert is_busy(lock.value)
    for name in ("x_locked", "busy", "database_is_locked"):
        with pytest.raises(sqlite3.OperationalError) as missing:
            waiter.execute(f"SELECT * FROM {name}")
        assert name in str(missing.value) and not is_busy(missing.value)
    assert not is_busy(RuntimeError("database is locked"))
    holder.execute("ROLLBACK")


def test_a_table_locked_by_a_reader_of_the_same_connection_is_busy(tmp_path: Path) -> None:
    db = connect(tmp_path / "f.db")
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    reading = db.execute("SELECT x FROM t")
    reading.fetchone()
    with pytest.raises(sqlite3.OperationalError) as exc:
        db.execute("DROP TABLE t")  # SQLITE_LOCKED: "database table is locked"
    assert is_busy(exc.value)


def test_retry_while_busy_waits_out_a_lock(tmp_path: Path) -> None:
    holder, waiter = _locked(tmp_path)
    waits: list[int] = []

    def release(attempt: int, exc: sqlite3.Error) -> None:
        waits.append(attempt)
        assert is_busy(exc)
        if holder.in_transaction:
            holder.execute("COMMIT")

    def insert() -> int:
        with atomic(waiter):
            return int(waiter.execute("INSERT INTO t VALUES (1)").rowcount)

    assert retry_while_busy(insert, on_wait=release) == 1
    assert waits == [1]
    assert holder.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_retry_while_busy_gives_up_when_told(tmp_path: Path) -> None:
    holder, waiter = _locked(tmp_path)
    waits: list[int] = []
    with pytest.raises(sqlite3.OperationalError) as exc:
        retry_while_busy(lambda: waiter.execute("BEGIN IMMEDIATE"), give_up=lambda: True, on_wait=waits.append)
    assert is_busy(exc.value) and waits == []
    holder.execute("ROLLBACK")


def test_retry_while_busy_raises_other_errors_at_once(tmp_path: Path) -> None:
    db = connect(tmp_path / "f.db")
    asked: list[str] = []

    def give_up() -> bool:
        asked.append("give_up")
        return True  # were it taken for a lock, stop at once rather than wait for ever

    with pytest.raises(sqlite3.OperationalError, match="x_locked"):
        retry_while_busy(lambda: db.execute("SELECT * FROM x_locked"), give_up=give_up)
    assert asked == []


# -- the store's use of them -------------------------------------------------------------------------


def _one_message() -> Batch:
    batch = Batch()
    batch.add_message("m1", tune_message([{"action": "click", "tune_event_id": "e1"}]), 1)
    return batch


def test_store_write_does_not_take_a_missing_table_named_locked_for_a_lock(tmp_path: Path) -> None:
    """An analyst's trigger writes to a table that no longer exists, `audit_locked`: every insert
    fails with "no such table: main.audit_locked". That is a fault to report, not a lock to wait
    for (matching the message text took it for one)."""
    store = Store.open(tmp_path / "f.db")
    store.db.execute("CREATE TABLE audit_locked (id TEXT)")
    store.db.execute(
        "CREATE TRIGGER audit AFTER INSERT ON events BEGIN INSERT INTO audit_locked VALUES (new.tune_event_id); END"
    )
    store.db.execute("DROP TABLE audit_locked")
    consulted: list[bool] = []

    def give_up() -> bool:
        consulted.append(True)
        return True

    with pytest.raises(DatabaseFault) as fault:
        store.write(_one_message(), give_up=give_up)
    assert "audit_locked" in str(fault.value) and "stayed locked" not in str(fault.value)
    assert consulted == []  # never treated as a lock
    assert not store.db.in_transaction
    store.close()


def test_store_write_waits_out_a_real_lock_and_gives_up_when_told(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "f.db")
    holder = connect(tmp_path / "f.db")
    holder.execute("BEGIN IMMEDIATE")
    store.db.execute("PRAGMA busy_timeout = 0")  # each attempt fails at once instead of after 5 s
    attempts: list[bool] = []

    def give_up() -> bool:
        attempts.append(True)
        if len(attempts) == 2:
            holder.execute("ROLLBACK")  # the lock goes away after the second wait: the write succeeds
        return False

    assert store.write(_one_message(), give_up=give_up).events == 1
    assert len(attempts) == 2

    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseFault, match="stayed locked"):
        store.write(_one_message(), give_up=lambda: True)
    holder.execute("ROLLBACK")
    store.close()
    assert os.path.getsize(tmp_path / "f.db") > 0
