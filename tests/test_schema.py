"""Schema versions: upgrade in place, never rebuild, never lose a row; refuse a newer database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from db.errors import DatabaseFault, SchemaTooNew
from db.schema import LATEST_VERSION, migrate, statements
from db.store import Store
from tests.kit import one, rows


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


def test_version_3_database_gets_the_exact_views_keeping_rows(tmp_path: Path) -> None:
    """Migration 4 replaces the views in place: the rows stay, the sums become exact and per currency."""
    path = tmp_path / "v3.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, target=3)
    for key, currency, payout in (("a", "USD", 100_000), ("b", "USD", 200_000), ("c", "EUR", 300_000)):
        db.execute(
            "INSERT INTO events (tune_event_id, key_source, action, event_time, event_time_utc, currency, "
            "payout_micros, raw_json, ingested_at) VALUES (?, 'x', 'click', 0, '1970-01-01T00:00:00Z', ?, ?, '{}', 1)",
            (key, currency, payout),
        )
    db.close()
    Store.open(path).close()
    assert one(path, "PRAGMA user_version") == LATEST_VERSION >= 4
    assert rows(path, "SELECT date, currency, gross_payout FROM daily_stats ORDER BY currency") == [
        ("1970-01-01", "EUR", 0.3),
        ("1970-01-01", "USD", 0.3),  # 0.1 + 0.2, not 0.30000000000000004
    ]


def test_unopenable_database_is_a_clear_fault(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseFault, match="cannot open database"):
        Store.open(path)
