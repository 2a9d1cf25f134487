"""Schema versions: upgrade in place, never rebuild, never lose a row; refuse a newer database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from db.schema import LATEST_VERSION, SchemaTooNew, migrate, statements
from db.store import DatabaseFault, Store
from tests.kit import one


def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "f.db")
    assert one(tmp_path / "f.db", "PRAGMA user_version") == LATEST_VERSION >= 2
    assert set(store.counts()) == {"events", "adjustments", "envelopes", "rejects"}
    assert one(tmp_path / "f.db", "PRAGMA journal_mode") == "wal"
    store.close()


def test_version_1_database_is_upgraded_in_place_keeping_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, target=1)
    db.execute(
        "INSERT INTO events (tune_event_id, key_source, action, raw_json, ingested_at, offer_id) "
        "VALUES ('old-1', 'tune_event_id', 'click', '{}', 1, 5)"
    )
    db.execute("INSERT INTO rejects VALUES ('k', 'm', NULL, 'why', 'raw', 1)")
    inode = path.stat().st_ino
    db.close()

    store = Store.open(path)
    assert path.stat().st_ino == inode  # the same file, not a rebuilt copy
    assert one(path, "PRAGMA user_version") == LATEST_VERSION
    assert store.counts()["events"] == 1 and store.counts()["rejects"] == 1
    assert one(path, "SELECT offer_id FROM events_reconciled WHERE tune_event_id = 'old-1'") == 5
    store.close()
    Store.open(path).close()  # opening again changes nothing
    assert one(path, "SELECT count(*) FROM events") == 1


def test_newer_database_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match=f"version {LATEST_VERSION + 1} is newer than this tune-firehose"):
        Store.open(path)


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import db.schema as schema

    bad = tmp_path / "migrations"
    bad.mkdir()
    for _version, path in schema.migrations():
        (bad / path.name).write_text(path.read_text())
    (bad / f"{LATEST_VERSION + 1:04d}_broken.sql").write_text("CREATE TABLE fine (x);\nTHIS IS NOT SQL;\n")
    monkeypatch.setattr(schema, "MIGRATIONS_DIR", bad)
    db = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, target=LATEST_VERSION + 1)
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'fine'").fetchone()[0] == 0


def test_statement_splitter_keeps_semicolons_inside_strings() -> None:
    assert statements("SELECT ';';\n-- c\nSELECT 2;\n") == ["SELECT ';';", "-- c\nSELECT 2;"]


def test_unopenable_database_is_a_clear_fault(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseFault, match="cannot open database"):
        Store.open(path)
