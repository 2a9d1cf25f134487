"""`read_queue.py prune --before YYYY-MM-DD [--dry-run]`: drop whole months of `events` older than a date.

PostgreSQL only: `events` there is partitioned by month (db/postgres/partitions.py), and dropping a
month's partition is instant and returns its disk space. A month goes only when every event in it
is older than the date (its month ends on or before it). Adjustments, envelopes and rejects are
kept, and so is `events_default` (events with no usable time). The month now being written, and
the months created ahead of it, are never dropped: a date after the first day of this month is
refused.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime

from chalicelib.settings import Settings
from db.stores import describe, uses_postgres

NAME = "prune"
HELP = "drop the months of events older than a date (PostgreSQL)"
EPILOG = (
    "Drops each monthly partition of events whose every event is older than --before; "
    "--before 2026-01-01 drops December 2025 and every month before it. Adjustments, envelopes, "
    "rejects and events with no time are kept. PostgreSQL only (DATABASE_URL or --db postgresql://...)."
)
EXIT_OK, EXIT_USAGE = 0, 2


def run(settings: Settings, before: date, dry_run: bool = False, today: date | None = None) -> int:
    if not uses_postgres(settings):
        print(
            f"read_queue.py prune: {describe(settings)} is a SQLite file; prune drops monthly partitions, "
            "which only the PostgreSQL store has (set DATABASE_URL or pass --db postgresql://...)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    this_month = (today or datetime.now(UTC).date()).replace(day=1)
    if before > this_month:
        print(
            f"read_queue.py prune: --before {before} would drop this month's events, which workers are writing; "
            f"the latest date allowed is {this_month}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from db.postgres import partitions
    from db.postgres.store import PostgresStore

    assert settings.database_url is not None
    store = PostgresStore.open(settings.database_url)  # migrated, so events and its partitions exist
    try:
        conn = store.conn
        if dry_run:
            doomed = partitions.older_than(conn, before)
        else:
            with conn.transaction():
                # Listed under the partition lock, so a month a worker is creating meanwhile is seen.
                doomed = partitions.older_than(conn, before)
                if doomed:
                    partitions.drop(conn, doomed)
    finally:
        store.close()
    verb = "would drop" if dry_run else "dropped"
    for month in doomed:
        print(f"{verb} {month.name} (events from {month.start} to before {month.end})")
    print(f"{verb} {len(doomed)} month(s) of events older than {before} in {describe(settings)}")
    return EXIT_OK
