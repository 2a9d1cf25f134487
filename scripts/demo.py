"""`make demo`: sample-data.json through chalice local, the local queue and the worker, into SQLite."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings

from .local_stack import ROOT, local_stack


def wait_drained(queue: LocalQueue, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        depth = queue.depth()
        if depth.visible == 0 and depth.in_flight == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"the worker did not drain the queue within {timeout:.0f} s; see data/logs/worker.log")


def summary(db_path: str) -> str:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    lines = [
        f"{'action':<12}{'events':>7}{'gross num':>10}{'net num':>9}"
        f"{'gross payout':>14}{'net payout':>12}{'gross revenue':>15}{'net revenue':>13}"
    ]
    rows = db.execute(
        "SELECT action, count(*), sum(gross_num), sum(num), sum(gross_payout_micros), sum(payout_micros), "
        "sum(gross_revenue_micros), sum(revenue_micros) FROM events_reconciled GROUP BY action ORDER BY action"
    ).fetchall()
    for action, n, gnum, num, gp, p, gr, r in rows:
        lines.append(
            f"{action:<12}{n:>7}{gnum:>10}{num:>9}{(gp or 0) / 1e6:>14.2f}{p / 1e6:>12.2f}"
            f"{(gr or 0) / 1e6:>15.2f}{r / 1e6:>13.2f}"
        )
    counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("events", "adjustments", "rejects")}
    (pending,) = db.execute("SELECT count(*) FROM adjustments_pending").fetchone()
    lines.append(
        f"\ntables: events {counts['events']}, adjustments {counts['adjustments']} "
        f"({pending} waiting for their original), rejects {counts['rejects']}"
    )
    db.close()
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
        wait_drained(queue)
        code = stack.stop_worker()
        if code != 0:
            print(f"worker exited with {code}; see data/logs/worker.log", file=sys.stderr)
            return 1
    print()
    print(summary(settings.db_path))
    print(f"\nLook at it:  sqlite3 {settings.db_path} 'SELECT * FROM daily_stats'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
