"""PostgreSQL schema versions: the migrations in `db/postgres/migrations/`, applied once, in order.

The table `firehose_migrations` records each version applied. Many workers may start together:
each takes a transaction-scoped advisory lock before reading the version, so exactly one applies
what is missing while the others wait, then find nothing left to do. PostgreSQL's DDL is
transactional, so a failing migration leaves the database as it was. A database newer than this
code is refused (`SchemaTooNew`, as for SQLite).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from db import schema as sqlite_schema
from db.errors import SchemaTooNew, ServerTooOld

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The advisory lock's key: a constant of this project ("firehose" in ASCII). Advisory locks are
# scoped to the database, so other databases on the server do not contend for it.
MIGRATION_LOCK = int.from_bytes(b"firehose", "big") & 0x7FFF_FFFF_FFFF_FFFF
# UNIQUE NULLS NOT DISTINCT (the events key) arrived in PostgreSQL 15.
MIN_SERVER_VERSION = 150000

__all__ = ["LATEST_VERSION", "current_version", "migrate", "migrations"]


def migrations() -> list[tuple[int, Path]]:
    return sqlite_schema.migrations(MIGRATIONS_DIR)


LATEST_VERSION = len(migrations())

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS firehose_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def current_version(conn: Any) -> int:
    """The highest version applied; 0 for a database tune-firehose never touched."""
    if conn.execute("SELECT to_regclass('firehose_migrations')").fetchone()[0] is None:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM firehose_migrations").fetchone()[0])


def check_server(conn: Any) -> None:
    version = int(conn.info.server_version)
    if version < MIN_SERVER_VERSION:
        raise ServerTooOld(
            f"PostgreSQL {version // 10000}.{version % 10000} is too old: tune-firehose needs 15 or newer "
            "(its events key is UNIQUE NULLS NOT DISTINCT)"
        )


def migrate(conn: Any, target: int = LATEST_VERSION) -> int:
    """Bring the database to `target` in one transaction; return the version it had before.

    `conn` is a psycopg connection in autocommit mode (no transaction open)."""
    check_server(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        before = current_version(conn)
        if before > LATEST_VERSION:
            raise SchemaTooNew(
                f"database schema version {before} is newer than this tune-firehose understands "
                f"({LATEST_VERSION}); upgrade tune-firehose instead of using this copy"
            )
        if before < target:
            conn.execute(_CREATE_LEDGER)
        for version, path in migrations():
            if before < version <= target:
                # No parameters: psycopg sends the file as one simple query, every statement in it.
                conn.execute(path.read_text())
                conn.execute("INSERT INTO firehose_migrations (version, name) VALUES (%s, %s)", (version, path.stem))
    return before
