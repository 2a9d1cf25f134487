"""`make demo-postgres`: `make demo`, landing in PostgreSQL instead of SQLite.

sample-data.json goes through chalice local, a fresh local queue file and the worker, which gets
DATABASE_URL pointing at a throwaway PostgreSQL server started for the demo (tests/pg.py: initdb
in a temporary folder, a free port on 127.0.0.1). The same bad messages go straight onto the
queue. It prints the same totals table as `make demo`, read from PostgreSQL's `totals` view, then
stops the server and removes it. Needs PostgreSQL 15+ server binaries (scripts/ensure_postgres.sh).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings
from db.postgres.url import redact

from .demo import COLUMNS, TABLES, _aligned, wait_drained
from .demo_data import bad_messages
from .local_stack import ROOT, local_stack


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def summary(url: str) -> str:
    """The `totals` view, as scripts/demo.py prints it for SQLite: money exact (numeric here)."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT currency, action, events, gross_num, net_num, gross_payout, net_payout, gross_revenue, net_revenue "
            "FROM totals ORDER BY currency, action"
        ).fetchall()
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]  # constant names
        (pending,) = conn.execute("SELECT count(*) FROM adjustments_pending").fetchone()  # type: ignore[misc]
        (days,) = conn.execute("SELECT count(DISTINCT date) FROM daily_totals").fetchone()  # type: ignore[misc]
    table = [COLUMNS, *(tuple(_cell(v) for v in row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(_aligned(line, widths)) for line in table]
    lines.append(
        f"\ntables: events {counts['events']} over {days} UTC days, adjustments {counts['adjustments']} "
        f"({pending} waiting for their original), rejects {counts['rejects']}"
    )
    return "\n".join(lines)


def main() -> int:
    from tests.pg import PgCluster, PostgresMissing

    with tempfile.TemporaryDirectory(prefix="demo-postgres-") as work:
        queue_path = Path(work) / "queue.db"
        env = {"QUEUE_URL": f"local:{queue_path}"}
        try:
            cluster = PgCluster.create({"max_connections": "20"})
        except PostgresMissing as exc:
            print(f"make demo-postgres: {exc}", file=sys.stderr)
            return 2
        try:
            env["DATABASE_URL"] = url = cluster.create_database("firehose")
            settings = load_settings(overrides=env)
            sample = (ROOT / "sample-data.json").read_bytes()
            headers = {"Authorization": f"Bearer {settings.firehose_token}"} if settings.firehose_token else {}
            queue = LocalQueue(queue_path)
            with local_stack(env, ROOT / "data" / "logs-postgres") as stack:
                print(f"chalice local on {stack.url}; worker on {queue_path} -> {redact(url)}")
                status, body = stack.post(sample, headers)
                print(f"POST /events sample-data.json -> {status} {body}")
                if status != 202:
                    return 1
                sent = queue.send_all(bad_messages())
                print(f"queued {len(bad_messages()) - len(sent.failed)} bad messages directly, for the rejects table")
                wait_drained(queue)
                code = stack.stop_worker()
                if code != 0:
                    print(f"worker exited with {code}; see data/logs-postgres/worker.log", file=sys.stderr)
                    return 1
            queue.close()
            print()
            print(summary(url))
            print("\nThe throwaway server is removed now; set DATABASE_URL to your own server to keep the data.")
        finally:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
