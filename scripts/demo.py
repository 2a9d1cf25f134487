"""`make demo`: sample-data.json through chalice local, the local queue and the worker, into SQLite.

A few bad messages go straight onto the queue too, so that `rejects` has rows to show.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings

from .demo_data import bad_messages
from .local_stack import ROOT, local_stack


def wait_drained(queue: LocalQueue, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        depth = queue.depth()
        if depth.visible == 0 and depth.in_flight == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"the worker did not drain the queue within {timeout:.0f} s; see data/logs/worker.log")


COLUMNS: tuple[str, ...] = ("currency", "action", "events", "gross num", "net num")
COLUMNS += ("gross payout", "net payout", "gross revenue", "net revenue")
TABLES = ("events", "adjustments", "rejects")


def _aligned(line: tuple[str, ...], widths: list[int]) -> list[str]:
    """Names left, numbers right."""
    return [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))]


def summary(db_path: str) -> str:
    """The `totals` view as Datasette shows it: money printed as the view holds it, exact."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT currency, action, events, gross_num, net_num, gross_payout, net_payout, gross_revenue, net_revenue "
            "FROM totals ORDER BY currency, action"
        ).fetchall()
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        (pending,) = db.execute("SELECT count(*) FROM adjustments_pending").fetchone()
        (days,) = db.execute("SELECT count(DISTINCT date) FROM daily_totals").fetchone()
    finally:
        db.close()
    table = [COLUMNS, *(tuple("" if v is None else str(v) for v in row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(_aligned(line, widths)) for line in table]
    lines.append(
        f"\ntables: events {counts['events']} over {days} UTC days, adjustments {counts['adjustments']} "
        f"({pending} waiting for their original), rejects {counts['rejects']}"
    )
    return "\n".join(lines)


def main() -> int:
    settings = load_settings()
    if settings.queue_backend != "local":
        print("make demo runs on the embedded local queue; unset QUEUE_URL (or use local:PATH)", file=sys.stderr)
        return 2
    sample = (ROOT / "sample-data.json").read_bytes()
    headers = {"Authorization": f"Bearer {settings.firehose_token}"} if settings.firehose_token else {}
    queue = LocalQueue(settings.local_queue_path)
    with local_stack({}, Path(ROOT / "data" / "logs")) as stack:
        print(f"chalice local on {stack.url}; worker on {settings.local_queue_path} -> {settings.db_path}")
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
            print(f"worker exited with {code}; see data/logs/worker.log", file=sys.stderr)
            return 1
    print()
    print(summary(settings.db_path))
    print(f"\nLook at it:  make explore   (or: sqlite3 {settings.db_path} 'SELECT * FROM daily_totals')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
