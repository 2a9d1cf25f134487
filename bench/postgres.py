"""PostgreSQL figures for issue 14, measured in one run on the same data (bench/data.py's stream):

- one worker draining a local queue file into PostgreSQL: events/s, and its ratio to a COPY
  ceiling: the same rows, prebuilt, duplicates removed beforehand, COPY straight into the same
  schema, one transaction per batch of the worker's largest size (5,000 events);
- 1, 2 and 4 worker processes on one queue and one database: events/s over the wall-clock span
  from the first one's start to the last one's end;
- the SQLite worker on the same queue (bench/drain.py), for comparison;
- the peak RSS of a PostgreSQL worker (its process plus its decoding helper's).

    python -m bench.postgres [--events N] [--json OUT]

It starts its own throwaway server (tests/pg.py) with PostgreSQL's durable defaults (fsync and
synchronous_commit on), on this machine, so client and server share its cores. A worker here is
`bench.postgres --drain`: the real `Worker` and `PostgresStore` on a local queue file, in its own
process, started with the worker's default decoder (a helper process on a multi-core machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import baselines
from bench.data import copy_queue, fill_queues

ROOT = Path(__file__).resolve().parent.parent
MESSAGES_PER_BATCH = 50  # 100 events a message: the worker's largest batch, 5,000 events
# Durable, as production is; tests/pg.py's test settings turn fsync off.
SERVER_SETTINGS = {"max_connections": "50", "shared_buffers": "128MB"}


# -- one worker, in its own process ------------------------------------------------------------


def drain(queue_path: str, url: str, decode: str = "auto") -> dict[str, Any]:
    from bench.drain import children_peak_rss_mb, peak_rss_mb
    from chalicelib.queues.local import LocalQueue
    from db.postgres.store import PostgresStore
    from worker.decoders import make_decoder
    from worker.loop import Limits, Worker
    from worker.rows import build_empty_as_none

    build_empty_as_none()  # as `read_queue.py run` does for this store
    decoder = make_decoder(decode)
    queue = LocalQueue(queue_path)
    store = PostgresStore.open(url)
    worker = Worker(queue, store, dataclasses.replace(Limits(), wait_seconds=0.0), out=None, decoder=decoder)  # type: ignore[arg-type]
    started_wall, started = time.time(), time.perf_counter()
    worker.run(until_empty=True)
    seconds = time.perf_counter() - started
    finished_wall = time.time()
    helper_rss = children_peak_rss_mb()
    decoder.close()
    store.close()
    queue.close()
    w = worker.totals.written
    return {
        "seconds": seconds,
        "started": started_wall,
        "finished": finished_wall,
        "events": w.events + w.duplicates + w.adjustments + w.duplicate_adjustments + w.rejects,
        "stored_events": w.events,
        "peak_rss_mb": peak_rss_mb() + helper_rss,
        "helper_peak_rss_mb": helper_rss,
        "retried": dict(store.retried),
    }


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args} exited {proc.returncode}: {err[-2000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def workers(queue_path: Path, url: str, count: int) -> dict[str, Any]:
    """`count` worker processes on one queue and one database, started together."""
    procs = [_spawn("bench.postgres", "--drain", str(queue_path), url) for _ in range(count)]
    each = [_result(p) for p in procs]
    span = max(r["finished"] for r in each) - min(r["started"] for r in each)
    events = sum(r["events"] for r in each)
    return {
        "workers": count,
        "seconds": span,
        "events": events,
        "events_per_second": events / span,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in each),
        "retried": sum(sum(r["retried"].values()) for r in each),
    }


# -- the COPY ceiling --------------------------------------------------------------------------


def copy_ceiling(queue_path: Path, url: str) -> dict[str, Any]:
    """The worker's rows, prebuilt and deduplicated (untimed), COPY into the tables: one
    transaction per batch of the worker's size. Timed: BEGIN, the four COPYs, COMMIT."""
    from psycopg import sql

    from db.batch import EVENT_COLUMNS
    from db.postgres.store import TABLES, PostgresStore
    from worker.rows import empty_as_none

    EVENT_TIME = EVENT_COLUMNS.index("event_time")

    batches = baselines.prebuilt(queue_path, MESSAGES_PER_BATCH)
    store = PostgresStore.open(url)
    conn = store.conn
    seen: list[set[Any]] = [set() for _ in TABLES]
    prepared: list[list[list[tuple[Any, ...]]]] = []
    months: set[int] = set()
    offered = 0
    for b in batches:
        tables = []
        for i, (table, rows) in enumerate(zip(TABLES, (b.events, b.adjustments, b.envelopes, b.rejects), strict=True)):
            key_at = [table.columns.index(k) for k in table.key]
            kept = []
            for row in map(empty_as_none, rows):  # as a PostgreSQL worker builds them
                key = tuple(row[k] for k in key_at)
                if key not in seen[i]:
                    seen[i].add(key)
                    kept.append(row)
            tables.append(kept)
        offered += len(b.events) + len(b.adjustments) + len(b.rejects)
        months |= store.partitions.missing(row[EVENT_TIME] for row in tables[0])
        prepared.append(tables)
    with conn.transaction():
        store.partitions.add(store.partitions.create(conn, months))
    copies = [
        sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(t.name), sql.SQL(", ").join(map(sql.Identifier, t.columns))
        )
        for t in TABLES
    ]
    seconds = 0.0
    for tables in prepared:
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for statement, rows in zip(copies, tables, strict=True):
                if rows:
                    with cur.copy(statement) as copy:
                        for row in rows:
                            copy.write_row(row)
        seconds += time.perf_counter() - started
    store.close()
    return {"seconds": seconds, "events": offered, "events_per_second": offered / seconds}


# -- the run -----------------------------------------------------------------------------------


def measure(events: int, work: Path) -> dict[str, Any]:
    from tests.pg import PgCluster

    work.mkdir(parents=True, exist_ok=True)
    source = work / "queue.db"
    fill_queues({events: source})
    results: dict[str, Any] = {"events": events}
    with PgCluster.started(SERVER_SETTINGS) as cluster:
        results["server"] = "PostgreSQL on 127.0.0.1, this machine; fsync on, synchronous_commit on"
        results["copy_ceiling"] = copy_ceiling(source, cluster.create_database())
        for count in (1, 2, 4):
            queue = copy_queue(source, work / f"queue-{count}.db")
            results[f"workers_{count}"] = workers(queue, cluster.create_database(), count)
    sqlite_queue = copy_queue(source, work / "queue-sqlite.db")
    sqlite = _result(_spawn("bench.drain", str(sqlite_queue), str(work / "sqlite.db")))
    results["sqlite_worker"] = {**sqlite, "events_per_second": sqlite["events"] / sqlite["seconds"]}
    one = results["workers_1"]["events_per_second"]
    results["ratio_to_copy_ceiling"] = one / results["copy_ceiling"]["events_per_second"]
    results["scaling_2_over_1"] = results["workers_2"]["events_per_second"] / one
    results["scaling_4_over_1"] = results["workers_4"]["events_per_second"] / one
    return results


def render(r: dict[str, Any]) -> str:
    lines = [
        f"PostgreSQL store, {r['events']:,} events ({r['server']})",
        f"  COPY ceiling (rows prebuilt, deduplicated): {r['copy_ceiling']['events_per_second']:>10,.0f} events/s",
    ]
    for n in (1, 2, 4):
        w = r[f"workers_{n}"]
        lines.append(
            f"  {n} worker process(es), one database:        {w['events_per_second']:>10,.0f} events/s "
            f"(peak RSS per worker {w['peak_rss_mb']:.0f} MB, retried writes {w['retried']})"
        )
    s = r["sqlite_worker"]
    lines += [
        f"  SQLite worker, same queue:                  {s['events_per_second']:>10,.0f} events/s "
        f"(peak RSS {s['peak_rss_mb']:.0f} MB)",
        f"  one worker / COPY ceiling: {r['ratio_to_copy_ceiling']:.2f}; "
        f"2 workers / 1: {r['scaling_2_over_1']:.2f}; 4 workers / 1: {r['scaling_4_over_1']:.2f}",
    ]
    return "\n".join(lines)


def section(r: dict[str, Any] | None) -> str:
    """The PostgreSQL part of bench/RESULTS.md, with the issue's targets beside the figures."""
    if not r:
        return ""
    ratio, two = r["ratio_to_copy_ceiling"], r["scaling_2_over_1"]
    return f"""
## PostgreSQL store

{r["server"]}; the same generated stream of {r["events"]:,} events for every figure below.
Targets: one worker ≥ 0.5 of the COPY ceiling (**{ratio:.2f}**, {"met" if ratio >= 0.5 else "not met"});
on 2 cores, 2 workers ≥ 1.3× one (**{two:.2f}×**, {"met" if two >= 1.3 else "not met"}). Client and
server share this machine's cores, so more workers also take CPU from the server.

```
{render(r)}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--drain", nargs=2, metavar=("QUEUE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        json.dump(drain(*args.drain), sys.stdout)
        sys.stdout.write("\n")
        return
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as work:
        results = measure(args.events, Path(work))
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
