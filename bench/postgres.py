"""PostgreSQL figures for issue 14, measured in one run on the same data (bench/data.py's stream):

- one worker draining a local queue file into PostgreSQL: events/s, and its ratio to a COPY
  ceiling: the same rows, prebuilt, duplicates removed beforehand, COPY straight into the same
  schema, one transaction per batch of the worker's largest size (5,000 events), into REPEATS
  new databases, the median kept (every run, here and below, on a new database after a CHECKPOINT);
- 1, 2 and 4 worker processes on one queue and one database: events/s over the wall-clock span
  from the first one's start to the last one's end, each count run REPEATS times in turn (1, 2, 4,
  1, 2, 4, ...) and its median kept. Each decodes as docs/scaling-out.md advises: with a helper
  process (`auto`) while the workers are fewer than the CPUs, `--decode inline` once they are as
  many or more. Two and four workers with helpers are measured too, for comparison;
- the SQLite worker on the same queue (bench/drain.py), for comparison;
- the peak RSS of a PostgreSQL worker (its process plus its decoding helper's).

    python -m bench.postgres [--events N] [--json OUT]

It starts its own throwaway server (tests/pg.py) with PostgreSQL's durable defaults (fsync and
synchronous_commit on), on this machine, so client and server share its cores. A worker here is
`bench.postgres --drain`: the real `Worker` and `PostgresStore` on a local queue file, in its own
process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench import baselines
from bench.data import copy_queue, fill_queues
from worker.decoders import DECODE_CHOICES, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
MESSAGES_PER_BATCH = 50  # 100 events a message: the worker's largest batch, 5,000 events
REPEATS = 3  # a drain of 50,000 events takes about 2 s: one run alone swings by a fifth
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


def advised_decode(count: int) -> str:
    """How docs/scaling-out.md says to run `count` workers on one host: a helper process each
    while there is a CPU to spare for it, else inline (a helper's rows cross a pipe, which costs
    CPU that only pays on an idle core)."""
    return "auto" if count < usable_cpus() else "inline"


def workers(queue_path: Path, url: str, count: int, decode: str) -> dict[str, Any]:
    """`count` worker processes on one queue and one database, started together."""
    procs = [_spawn("bench.postgres", "--drain", str(queue_path), url, "--decode", decode) for _ in range(count)]
    each = [_result(p) for p in procs]
    span = max(r["finished"] for r in each) - min(r["started"] for r in each)
    events = sum(r["events"] for r in each)
    return {
        "workers": count,
        "decode": decode,
        "seconds": span,
        "events": events,
        "events_per_second": events / span,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in each),
        "retried": sum(sum(r["retried"].values()) for r in each),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s (the lower middle of an even count), with every run's figure."""
    ranked = sorted(runs, key=lambda r: r["events_per_second"])
    return {**ranked[(len(ranked) - 1) // 2], "runs": [r["events_per_second"] for r in runs]}


# -- the COPY ceiling --------------------------------------------------------------------------


def copy_ceiling(queue_path: Path, cluster: Any, repeats: int) -> dict[str, Any]:
    """The worker's rows, prebuilt and deduplicated (untimed), COPY into the tables: one
    transaction per batch of the worker's size. Timed: BEGIN, the four COPYs, COMMIT. `repeats`
    times, each into a new database; the median run is kept."""
    from db.postgres.store import TABLES
    from worker.rows import empty_as_none

    seen: list[set[Any]] = [set() for _ in TABLES]
    prepared: list[list[list[tuple[Any, ...]]]] = []
    offered = 0
    for b in baselines.prebuilt(queue_path, MESSAGES_PER_BATCH):
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
        prepared.append(tables)
    times = [in_fresh_database(cluster, lambda url: _copy_into(url, prepared)) for _ in range(repeats)]
    return median_run([{"events": offered, "seconds": t, "events_per_second": offered / t} for t in times])


def _copy_into(url: str, prepared: list[list[list[tuple[Any, ...]]]]) -> float:
    """Seconds spent copying the prepared batches, each in its own transaction."""
    from psycopg import sql

    from db.batch import EVENT_COLUMNS
    from db.postgres.store import TABLES, PostgresStore

    event_time = EVENT_COLUMNS.index("event_time")
    store = PostgresStore.open(url)
    conn = store.conn
    months = store.partitions.missing(row[event_time] for tables in prepared for row in tables[0])
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
    return seconds


# -- the run -----------------------------------------------------------------------------------


# (name, workers, decoder); the advised ones first, the helpers' for comparison after them.
CONFIGURATIONS = [(f"workers_{n}", n, advised_decode(n)) for n in (1, 2, 4)] + [
    (f"workers_{n}_helpers", n, "process") for n in (2, 4) if advised_decode(n) != "auto"
]


def measure(events: int, work: Path, repeats: int = REPEATS) -> dict[str, Any]:
    from tests.pg import PgCluster

    work.mkdir(parents=True, exist_ok=True)
    source = work / "queue.db"
    fill_queues({events: source})
    results: dict[str, Any] = {"events": events, "cpus": usable_cpus(), "repeats": repeats}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in CONFIGURATIONS}
    with PgCluster.started(SERVER_SETTINGS) as cluster:
        results["server"] = "PostgreSQL on 127.0.0.1, this machine; fsync on, synchronous_commit on"
        results["copy_ceiling"] = copy_ceiling(source, cluster, repeats)
        for _ in range(repeats):
            for name, count, decode in CONFIGURATIONS:
                queue = copy_queue(source, work / f"{name}.db")
                runs[name].append(in_fresh_database(cluster, lambda url: workers(queue, url, count, decode)))  # noqa: B023 - called at once
    results.update({name: median_run(each) for name, each in runs.items()})
    sqlite_queue = copy_queue(source, work / "queue-sqlite.db")
    sqlite = _result(_spawn("bench.drain", str(sqlite_queue), str(work / "sqlite.db")))
    results["sqlite_worker"] = {**sqlite, "events_per_second": sqlite["events"] / sqlite["seconds"]}
    one = results["workers_1"]["events_per_second"]
    results["ratio_to_copy_ceiling"] = one / results["copy_ceiling"]["events_per_second"]
    for name, _, _ in CONFIGURATIONS[1:]:
        results[scaling_key(name)] = results[name]["events_per_second"] / one
    return results


def in_fresh_database(cluster: Any, run: Callable[[str], T]) -> T:
    """`run(url)` on a new database, dropped afterwards, after a CHECKPOINT: every run starts from
    the same server, not one holding the earlier runs' databases, nor with a checkpoint that their
    writes made due landing in the middle of it (a run of 200,000 events writes ~1 GB of WAL)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    url = cluster.create_database()
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        admin.execute("CHECKPOINT")
        try:
            return run(url)
        finally:
            name = str(conninfo_to_dict(url)["dbname"])
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def scaling_key(name: str) -> str:
    """workers_2 -> scaling_2_over_1, workers_2_helpers -> scaling_2_helpers_over_1."""
    return f"scaling_{name.removeprefix('workers_')}_over_1"


def render(r: dict[str, Any]) -> str:
    lines = [
        f"PostgreSQL store, {r['events']:,} events ({r['server']}); {r['cpus']} CPUs; "
        f"workers: the median of {r['repeats']} runs each",
        f"  COPY ceiling (rows prebuilt, deduplicated): {r['copy_ceiling']['events_per_second']:>10,.0f} events/s",
    ]
    for name, count, decode in CONFIGURATIONS:
        w = r[name]
        label = f"{count} worker process(es), --decode {decode}:"
        runs = ", ".join(f"{x:,.0f}" for x in w["runs"])
        lines.append(
            f"  {label:<44}{w['events_per_second']:>10,.0f} events/s "
            f"[{runs}] (peak RSS per worker {w['peak_rss_mb']:.0f} MB, retried writes {w['retried']})"
        )
    s = r["sqlite_worker"]
    ratios = "; ".join(
        f"{count} workers{' with helpers' if decode == 'process' else ''} / 1: {r[scaling_key(name)]:.2f}"
        for name, count, decode in CONFIGURATIONS[1:]
    )
    lines += [
        f"  SQLite worker, same queue:                  {s['events_per_second']:>10,.0f} events/s "
        f"(peak RSS {s['peak_rss_mb']:.0f} MB)",
        f"  one worker / COPY ceiling: {r['ratio_to_copy_ceiling']:.2f}; {ratios}",
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
on 2 cores, 2 workers ≥ 1.3× one (**{two:.2f}×**, {"met" if two >= 1.3 else "not met"}), each count
decoding as docs/scaling-out.md advises (a helper process each only while the workers are fewer
than the CPUs). Client and server share this machine's cores, so more workers also take CPU from
the server.

```
{render(r)}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs of each worker count (the median is kept)")
    parser.add_argument("--drain", nargs=2, metavar=("QUEUE", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--decode", choices=DECODE_CHOICES, default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        queue, url = args.drain
        json.dump(drain(queue, url, args.decode), sys.stdout)
        sys.stdout.write("\n")
        return
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as work:
        results = measure(args.events, Path(work), args.repeats)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
