"""`read_queue.py status`: the whole pipeline at a glance.

Queue depth (visible, in flight, dead letters, oldest message on the local queue), rows per
table, the newest event and how far behind it is, and the latest reject reasons. It only
reads: the database and the local queue file are opened read-only (a missing one is not
created, an existing one is left exactly as it was).

The lag is now minus the newest event's time, never negative. Event times are the sender's
clock, so events dated more than FUTURE_SKEW_SECONDS ahead are left out of it (and counted).

On PostgreSQL (DATABASE_URL, or --db postgresql://...) the same report is read in one read-only
snapshot (db/postgres/report.py), the URL shown without its password.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chalicelib.errors import QueueUnavailable
from chalicelib.queues import open_queue
from chalicelib.settings import Settings, SettingsError
from chalicelib.sqlite import connect, snapshot
from db.errors import DatabaseFault
from db.postgres.url import redact
from db.store import FUTURE_SKEW_SECONDS, TABLES, newest_event_time

NAME = "status"
HELP = "show queue depth, dead letters, rows per table, newest event and lag, last rejects"
EPILOG = """examples:
  python read_queue.py status
  python read_queue.py status --db data/firehose.db --queue-url local:data/queue.db --rejects 20
  python read_queue.py status --json | jq .database.lag_seconds
  python read_queue.py status --db 'postgresql://firehose@db.internal:5432/firehose'

exit status: 0 when the queue and the database could both be read, 1 otherwise."""


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def queue_status(settings: Settings) -> dict[str, Any]:
    label = settings.queue_url or f"local:{settings.local_queue_path}"
    out: dict[str, Any] = {"queue": label, "backend": settings.queue_backend}
    if settings.queue_backend == "local" and not Path(settings.local_queue_path).exists():
        out["error"] = "no local queue file yet (nothing has been sent)"
        return out
    try:
        queue = open_queue(settings, readonly=True)
    except (QueueUnavailable, SettingsError) as exc:
        out["error"] = str(exc)
        return out
    try:
        depth = queue.depth()
    except QueueUnavailable as exc:
        out["error"] = str(exc)
        return out
    finally:
        queue.close()
    out.update(visible=depth.visible, in_flight=depth.in_flight, dead=depth.dead)
    if depth.oldest_age_seconds is not None:
        out["oldest_age_seconds"] = round(depth.oldest_age_seconds, 1)
    return out


def _scalar(db: sqlite3.Connection, sql: str, *params: Any) -> Any:
    try:
        return db.execute(sql, params).fetchone()[0]
    except sqlite3.OperationalError:  # an older schema without that table
        return None


def store_status(settings: Settings, reject_limit: int, now: float | None = None) -> dict[str, Any]:
    """The database half of the report, from the store the settings select."""
    if settings.database_url is None:
        return database_status(settings.db_path, reject_limit, now)
    return postgres_status(settings.database_url, reject_limit, now)


def postgres_status(url: str, reject_limit: int, now: float | None = None) -> dict[str, Any]:
    from db.postgres.report import read_report  # psycopg is loaded only when PostgreSQL is selected

    now = time.time() if now is None else now
    out: dict[str, Any] = {"path": redact(url)}
    try:
        report = read_report(url, reject_limit, now)
    except DatabaseFault as exc:
        out["error"] = str(exc)
        return out
    if report.schema_version == 0:
        out["error"] = "no tune-firehose schema in this database yet (the worker creates it)"
        return out
    out["schema_version"] = report.schema_version
    out.update(
        _numbers(
            report.rows,
            report.newest_event_time,
            report.future_events,
            report.last_ingested,
            report.last_rejects,
            now,
        )
    )
    return out


def database_status(path: str, reject_limit: int, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    out: dict[str, Any] = {"path": path}
    if not Path(path).exists():
        out["error"] = "no database file yet (the worker creates it)"
        return out
    try:
        db = connect(path, readonly=True)
    except sqlite3.Error as exc:
        out["error"] = f"cannot open: {exc}"
        return out
    try:
        with snapshot(db):  # one snapshot for every number below
            out.update(_database_numbers(db, reject_limit, now))
    except sqlite3.Error as exc:
        out["error"] = f"cannot read: {exc}"
    finally:
        db.close()
    return out


def _database_numbers(db: sqlite3.Connection, reject_limit: int, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"schema_version": _scalar(db, "PRAGMA user_version")}
    # TABLES is a constant tuple of our own table names.
    rows = {t: _scalar(db, f"SELECT count(*) FROM {t}") for t in TABLES}
    rows["adjustments_pending"] = _scalar(db, "SELECT count(*) FROM adjustments_pending")
    try:
        newest = newest_event_time(db, now)
    except sqlite3.OperationalError:  # an older schema without that table
        newest = None
    ingested = _scalar(db, "SELECT max(ingested_at) FROM events")
    future = _scalar(db, "SELECT count(*) FROM events WHERE event_time > ?", now + FUTURE_SKEW_SECONDS)
    try:
        rejects = db.execute(
            "SELECT rejected_at, message_id, event_index, reason FROM rejects "
            "ORDER BY rejected_at DESC, rowid DESC LIMIT ?",
            (reject_limit,),
        ).fetchall()
    except sqlite3.OperationalError:
        rejects = []
    out.update(_numbers(rows, newest, future, ingested, rejects, now))
    return out


def _numbers(
    rows: dict[str, int | None],
    newest: int | None,
    future: int | None,
    ingested: int | None,
    rejects: Sequence[tuple[Any, ...]],
    now: float,
) -> dict[str, Any]:
    """The report's database numbers, worded the same for both stores."""
    return {
        "rows": rows,
        "newest_event_time": _iso(newest),
        "lag_seconds": None if newest is None else max(0, round(now - newest)),
        "future_events": future,
        "last_ingested": _iso(ingested),
        "last_rejects": [
            {"rejected_at": _iso(at), "message_id": mid, "event_index": index, "reason": reason}
            for at, mid, index, reason in rejects
        ],
    }


def _n(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _duration(seconds: float) -> str:
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{sign}{seconds / size:.1f} {unit}"
    return f"{sign}{seconds:.0f} s"


def render(report: dict[str, Any]) -> str:
    q, d = report["queue"], report["database"]
    lines = [f"queue     {q['queue']} ({q['backend']})"]
    if "error" in q:
        lines.append(f"  unavailable: {q['error']}")
    else:
        parts = [f"visible {_n(q['visible'])}", f"in flight {_n(q['in_flight'])}", f"dead letters {_n(q['dead'])}"]
        if "oldest_age_seconds" in q:
            parts.append(f"oldest message {_duration(q['oldest_age_seconds'])}")
        lines.append("  " + " | ".join(parts))
    lines.append(f"database  {d['path']}" + (f" (schema v{d['schema_version']})" if d.get("schema_version") else ""))
    if "error" in d:
        lines.append(f"  unavailable: {d['error']}")
    if "rows" in d:
        lines.append("  " + " | ".join(f"{t.replace('_', ' ')} {_n(n)}" for t, n in d["rows"].items()))
        if d.get("newest_event_time"):
            lines.append(f"  newest event {d['newest_event_time']} (lag {_duration(d['lag_seconds'])})")
        else:
            lines.append("  no events yet")
        if d.get("future_events"):
            lines.append(
                f"  {_n(d['future_events'])} events dated more than {FUTURE_SKEW_SECONDS // 60} min ahead "
                "(left out of the lag)"
            )
        if d.get("last_ingested"):
            lines.append(f"  last ingested {d['last_ingested']}")
    rejects = d.get("last_rejects") or []
    if rejects:
        lines.append("last rejects (newest first)")
        for r in rejects:
            reason = r["reason"] if len(r["reason"]) <= 160 else r["reason"][:157] + "..."
            lines.append(f"  {r['rejected_at']}  message {r['message_id']}  {reason}")
    return "\n".join(lines)


def run(settings: Settings, *, rejects: int = 5, as_json: bool = False) -> int:
    """Print the report (text, or one JSON document); 1 when the queue or the database could not be read."""
    report = {
        "queue": queue_status(settings),
        "database": store_status(settings, max(0, rejects)),
    }
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 1 if "error" in report["queue"] or "error" in report["database"] else 0
