"""What `status` reads from a PostgreSQL store: every number from one snapshot, and nothing written.

One `REPEATABLE READ READ ONLY` transaction, so the rows per table, the newest event and the last
rejects agree with each other while workers keep committing. Nothing is migrated or created: a
database tune-firehose never touched reads as version 0, and nothing else is read. A table or view missing
from an older schema reads as None (checked with to_regclass first, since a failed statement
would end the snapshot). Errors carry the server's reason with the URL's secrets scrubbed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from db.errors import DatabaseFault
from db.postgres.schema import current_version
from db.postgres.store import CONNECT_TIMEOUT_SECONDS, newest_event_time
from db.postgres.url import redact, scrub
from db.store import FUTURE_SKEW_SECONDS, TABLES

# A read that meets a lock taken to drop a month (prune) waits at most this long, then says so.
LOCK_TIMEOUT = "10s"
PENDING_VIEW = "adjustments_pending"


@dataclass
class StoreReport:
    """The database half of `status`, as raw values (epoch seconds); commands/status.py words them."""

    schema_version: int
    rows: dict[str, int | None] = field(default_factory=dict)
    newest_event_time: int | None = None
    future_events: int | None = None
    last_ingested: int | None = None
    # (rejected_at, message_id, event_index, reason), newest first
    last_rejects: list[tuple[int, str | None, int | None, str]] = field(default_factory=list)


def read_report(url: str, reject_limit: int, now: float) -> StoreReport:
    """Read the report; a `DatabaseFault` (password scrubbed) when the server cannot be read."""
    try:
        conn = _connect(url)
    except psycopg.Error as exc:
        raise DatabaseFault(f"cannot connect: {_one_line(scrub(str(exc), url))}") from None
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            return _numbers(conn, reject_limit, now)
    except psycopg.Error as exc:
        raise DatabaseFault(f"cannot read {redact(url)}: {_one_line(scrub(str(exc), url))}") from None
    finally:
        conn.close()


def _connect(url: str) -> Any:
    given = conninfo_to_dict(url)
    defaults: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "tune-firehose status"}
    conn = psycopg.connect(url, autocommit=True, **{k: v for k, v in defaults.items() if k not in given})
    # Applied to the transaction() below: BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY.
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def _numbers(conn: Any, reject_limit: int, now: float) -> StoreReport:
    report = StoreReport(schema_version=current_version(conn))
    if report.schema_version == 0:  # not a tune-firehose database (yet): whatever else it holds is not ours
        return report
    present = {name for name in (*TABLES, PENDING_VIEW) if _exists(conn, name)}
    # Names come from the constant TABLES and PENDING_VIEW, never from input.
    report.rows = {name: _count(conn, name) if name in present else None for name in (*TABLES, PENDING_VIEW)}
    if "events" in present:
        report.newest_event_time = newest_event_time(conn, now)
        horizon = int(now + FUTURE_SKEW_SECONDS)
        report.future_events = _scalar(conn, "SELECT count(*) FROM events WHERE event_time > %s", horizon)
        report.last_ingested = _scalar(conn, "SELECT max(ingested_at) FROM events")
    if "rejects" in present:
        # SQLite breaks ties by insertion order (rowid); PostgreSQL has none, so by key: stable.
        report.last_rejects = conn.execute(
            "SELECT rejected_at, message_id, event_index, reason FROM rejects "
            "ORDER BY rejected_at DESC, reject_key DESC LIMIT %s",
            (reject_limit,),
        ).fetchall()
    return report


def _exists(conn: Any, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0] is True


def _count(conn: Any, name: str) -> int:
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0])


def _scalar(conn: Any, query: str, *params: Any) -> int | None:
    value = conn.execute(query, params).fetchone()[0]
    return None if value is None else int(value)


def _one_line(message: str) -> str:
    """libpq's messages span lines (a hint after a tab); the report shows each error on one."""
    return " ".join(message.split())
