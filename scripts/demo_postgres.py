"""`make demo-postgres`: `make demo`, landing in PostgreSQL instead of SQLite.

sample-data.json goes through chalice local, a fresh local queue file and the worker, which gets
DATABASE_URL pointing at a throwaway PostgreSQL server started for the demo (tests/pg.py: initdb
in a temporary folder, a free port on 127.0.0.1). The same bad messages go straight onto the
queue (scripts/demo.py `land_sample`). It prints the same totals table as `make demo`, read from
PostgreSQL's `totals` view, then stops the server and removes it. Needs PostgreSQL 15+ server
binaries (scripts/ensure_postgres.sh).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings
from db.postgres.url import redact

from .demo import land_sample, render
from .local_stack import ROOT


def summary(url: str) -> str:
    """The `totals` view, as scripts/demo.py prints it for SQLite: money exact (numeric here)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return render(lambda sql: conn.execute(sql).fetchall())


def main() -> int:
    from tests.pg import PgCluster, PostgresMissing

    with tempfile.TemporaryDirectory(prefix="demo-postgres-") as work:
        queue_path = Path(work) / "queue.db"
        try:
            cluster = PgCluster.create({"max_connections": "20"})
        except PostgresMissing as exc:
            print(f"make demo-postgres: {exc}", file=sys.stderr)
            return 2
        try:
            url = cluster.create_database("firehose")
            env = {"QUEUE_URL": f"local:{queue_path}", "DATABASE_URL": url}
            queue = LocalQueue(queue_path)
            try:
                code = land_sample(
                    load_settings(overrides=env), queue, env, ROOT / "data" / "logs-postgres", redact(url)
                )
            finally:
                queue.close()
            if code:
                return code
            print()
            print(summary(url))
            print("\nThe throwaway server is removed now; set DATABASE_URL to your own server to keep the data.")
        finally:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
