"""`make demo`: sample-data.json through chalice local, the local queue and the worker, into SQLite.

A few bad messages go straight onto the queue too, so that `rejects` has rows to show.
`make demo-postgres` (scripts/demo_postgres.py) runs the same landing into PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from chalicelib.queues.local import LocalQueue
from chalicelib.settings import Settings, load_settings

from .demo_data import bad_messages
from .local_stack import ROOT, local_stack

Fetch = Callable[[str], list[tuple[Any, ...]]]

COLUMNS: tuple[str, ...] = ("currency", "action", "events", "gross num", "net num")
COLUMNS += ("gross payout", "net payout", "gross revenue", "net revenue")
TABLES = ("events", "adjustments", "rejects")
TOTALS = (
    "SELECT currency, action, events, gross_num, net_num, gross_payout, net_payout, gross_revenue, net_revenue "
    "FROM totals ORDER BY currency, action"
)


def wait_drained(queue: LocalQueue, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        depth = queue.depth()
        if depth.visible == 0 and depth.in_flight == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"the worker did not drain the queue within {timeout:.0f} s; see the worker's log")


def land_sample(settings: Settings, queue: LocalQueue, env: Mapping[str, str], log_dir: Path, target: str) -> int:
    """POST sample-data.json to chalice local, queue the bad messages directly, and let the worker
    drain the queue into `target` (the store `env` selects). 0 when it all landed."""
    sample = (ROOT / "sample-data.json").read_bytes()
    headers = {"Authorization": f"Bearer {settings.firehose_token}"} if settings.firehose_token else {}
    with local_stack(dict(env), log_dir) as stack:
        print(f"chalice local on {stack.url}; worker on {queue.path} -> {target}")
        status, body = stack.post(sample, headers)
        print(f"POST /events sample-data.json -> {status} {body}")
        if status != 202:
            return 1
        # Straight onto the queue, as a broken producer would: the endpoint refuses such bodies.
        sent = queue.send_all(bad_messages())
        print(f"queued {len(bad_messages()) - len(sent.failed)} bad messages directly, for the rejects table")
        wait_drained(queue)
        code = stack.stop_worker()
        if code != 0:
            print(f"worker exited with {code}; see {log_dir / 'worker.log'}", file=sys.stderr)
            return 1
    return 0


def _aligned(line: tuple[str, ...], widths: list[int]) -> list[str]:
    """Names left, numbers right."""
    return [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))]


def render(fetch: Fetch) -> str:
    """The `totals` view as Datasette shows it (money printed as the view holds it, exact), read
    through `fetch(sql)`, which runs one query on either store."""
    rows = fetch(TOTALS)
    # TABLES holds constant table names.
    counts = {t: fetch(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
    pending = fetch("SELECT count(*) FROM adjustments_pending")[0][0]
    days = fetch("SELECT count(DISTINCT date) FROM daily_totals")[0][0]
    table = [COLUMNS, *(tuple("" if v is None else str(v) for v in row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(_aligned(line, widths)) for line in table]
    lines.append(
        f"\ntables: events {counts['events']} over {days} UTC days, adjustments {counts['adjustments']} "
        f"({pending} waiting for their original), rejects {counts['rejects']}"
    )
    return "\n".join(lines)


def summary(db_path: str) -> str:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return render(lambda sql: db.execute(sql).fetchall())
    finally:
        db.close()


def main() -> int:
    settings = load_settings()
    if settings.queue_backend != "local":
        print("make demo runs on the embedded local queue; unset QUEUE_URL (or use local:PATH)", file=sys.stderr)
        return 2
    queue = LocalQueue(settings.local_queue_path)
    try:
        code = land_sample(settings, queue, {}, ROOT / "data" / "logs", settings.db_path)
    finally:
        queue.close()
    if code:
        return code
    print()
    print(summary(settings.db_path))
    print(f"\nLook at it:  make explore   (or: sqlite3 {settings.db_path} 'SELECT * FROM daily_totals')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
