"""Drain a local queue file with the real worker, in its own process, and report as JSON.

    python -m bench.drain QUEUE_DB FIREHOSE_DB [--profile OUT.prof]

Prints {"seconds", "events", "duplicates", "adjustments", "rejects", "messages", "peak_rss_mb",
"write_seconds" (inside Store.write), "insert_seconds" and "commit_seconds" (of which in its inserts,
and in BEGIN and COMMIT), "cpu_seconds" (this process's user + system time)}.
Peak RSS is this process's own high-water mark (VmHWM), interpreter included, plus the decoding
helper's when there is one.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from chalicelib.queues.local import LocalQueue
from db.store import Store
from worker.decoders import DECODE_CHOICES, make_decoder
from worker.loop import Limits, Worker


def drain(queue_path: str, db_path: str, profile: str | None = None, decode: str = "auto") -> dict[str, Any]:
    decoder = make_decoder(decode)  # what read_queue.py chooses on this machine; it starts its helper first
    queue = LocalQueue(queue_path)
    store = Store.open(db_path)
    # Time spent inside Store.write (BEGIN .. COMMIT), and inside it SQLite's own share: the inserts,
    # and BEGIN and COMMIT (a COMMIT may checkpoint the WAL). The rest is waiting for the decoding
    # helper's rows. Measured without a profiler, so they hold at every size.
    write_seconds, insert_seconds, commit_seconds = [0.0], [0.0], [0.0]
    store.write = _timed(store.write, write_seconds)  # type: ignore[method-assign]
    store._insert = _timed(store._insert, insert_seconds)  # type: ignore[method-assign]
    store.db = _TimedTransactions(store.db, commit_seconds)  # type: ignore[assignment]
    # The defaults, except: do not long-poll an empty queue at the end of the drain.
    worker = Worker(queue, store, dataclasses.replace(Limits(), wait_seconds=0.0), out=None, decoder=decoder)
    # Timed from here, like the baselines: the helper has started, the queue and the database
    # (schema and every migration) are open.
    started = time.perf_counter()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    worker.run(until_empty=True)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    store.close()  # its final WAL checkpoint is part of the cost, as in the baselines
    seconds = time.perf_counter() - started
    helper_rss = children_peak_rss_mb()
    decoder.close()
    totals = worker.totals
    written = totals.written
    queue.close()
    return {
        "seconds": seconds,
        "events": written.events
        + written.duplicates
        + written.adjustments
        + written.duplicate_adjustments
        + written.rejects,
        "stored_events": written.events,
        "duplicates": written.duplicates + written.duplicate_adjustments,
        "adjustments": written.adjustments,
        "rejects": written.rejects,
        "messages": totals.messages,
        # The worker and every process it started (the decoding helper): the sum of their peaks, an
        # upper bound of their peak together.
        "peak_rss_mb": peak_rss_mb() + helper_rss,
        "helper_peak_rss_mb": helper_rss,
        "decode": type(decoder).__name__,
        "write_seconds": write_seconds[0],
        "insert_seconds": insert_seconds[0],
        "commit_seconds": commit_seconds[0],
        "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    }


class _TimedTransactions:
    """The store's connection, timing its BEGIN and COMMIT statements (a C object: wrapped, not patched)."""

    def __init__(self, db: Any, total: list[float]) -> None:
        self._db, self._total = db, total

    def execute(self, sql: str, *args: Any) -> Any:
        if sql not in ("BEGIN IMMEDIATE", "COMMIT"):
            return self._db.execute(sql, *args)
        began = time.perf_counter()
        try:
            return self._db.execute(sql, *args)
        finally:
            self._total[0] += time.perf_counter() - began

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _timed(fn: Any, total: list[float]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - began

    return timed


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's high-water resident set (VmHWM). Not `ru_maxrss`: on Linux that survives
    exec, so a child started by a big parent reports the parent's peak."""
    try:
        for line in open(f"/proc/{pid}/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self" else 0.0


def child_pids(pid: int | str = "self") -> set[int]:
    """The living children of a process (Linux /proc)."""
    pids: set[int] = set()
    for tasks in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids.update(int(child) for child in (tasks / "children").read_text().split())
        except OSError:
            continue
    return pids


def children_peak_rss_mb() -> float:
    """The summed peaks of this process's living children, read before they exit."""
    return sum(peak_rss_mb(pid) for pid in child_pids())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("queue")
    parser.add_argument("db")
    parser.add_argument("--profile")
    parser.add_argument("--decode", choices=DECODE_CHOICES, default="auto")
    args = parser.parse_args()
    json.dump(drain(args.queue, args.db, args.profile, args.decode), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
