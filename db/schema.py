"""Schema versions: `PRAGMA user_version` counts the migrations in `db/migrations/` applied.

At start every migration above the file's version runs, in order, each in its own
transaction, so an existing database is upgraded in place and never rebuilt.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from chalicelib.sqlite import atomic
from db.errors import SchemaTooNew

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def migrations(folder: Path | None = None) -> list[tuple[int, Path]]:
    """The numbered `*.sql` files of `folder` (default: SQLite's), in order; each store has its own."""
    found = []
    for path in sorted((folder or MIGRATIONS_DIR).glob("*.sql")):
        match = re.match(r"(\d+)_", path.name)
        if match:
            found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    assert versions == list(range(1, len(found) + 1)), f"migrations must be numbered 1..N, got {versions}"
    return found


LATEST_VERSION = len(migrations())


def current_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, target: int = LATEST_VERSION) -> int:
    """Bring the database to `target`; return the version it had before."""
    before = current_version(db)
    if before > LATEST_VERSION:
        raise SchemaTooNew(
            f"database schema version {before} is newer than this tune-firehose understands "
            f"({LATEST_VERSION}); upgrade tune-firehose instead of using this copy"
        )
    for version, path in migrations():
        if before < version <= target:
            _apply(db, version, path)
    return before


def statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError(f"unterminated SQL statement: {buf.strip()[:80]}")
    return out


def _apply(db: sqlite3.Connection, version: int, path: Path) -> None:
    """Apply one migration whole or not at all; a worker that lost the race skips it."""
    with atomic(db):
        if current_version(db) < version:
            for statement in statements(path.read_text()):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {int(version)}")
