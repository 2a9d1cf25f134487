"""`make bench`, durability: what the worker pays for commits that survive a power cut.

The worker deletes a batch's messages right after the batch's COMMIT, so that COMMIT must be on
disk first: the store commits with `synchronous=FULL` (db/store.py, SYNCHRONOUS). In WAL mode
`NORMAL`, what it used before, syncs only at checkpoints, and a power cut can roll back commits
whose messages are already gone from the queue.

Measured here, in one run on one machine: the real worker draining the same local queue into a
fresh database, once as shipped (FULL) and once with the store's connection switched to NORMAL
after opening, interleaved, each in its own process, the median of the repeats; the ratio
NORMAL / FULL is the cost. A COMMIT's flush costs what the disk makes it cost (one machine of
this kind did 26,000 flushed commits/s, another 450/s), so the disk's own figures are reported as
separate facts, not as ratios against the worker: one-row commits per second with FULL and NORMAL.

    .venv/bin/python -m bench.durability [--events 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chalicelib.sqlite import Synchronous, atomic, connect

from . import data

ROOT = Path(__file__).resolve().parent.parent
LEVELS: tuple[Synchronous, ...] = ("FULL", "NORMAL")
REPEATS = 3
DISK_COMMITS = 300


def drain(queue: Path, db: Path, synchronous: Synchronous) -> dict[str, Any]:
    """The real worker (default limits and decoder, no idle long poll at the end) drains `queue`
    into a fresh `db` whose store connection commits with `synchronous`. Timed from the first
    receive until the database is closed (its last checkpoint included), like bench/drain.py."""
    import dataclasses

    from chalicelib.queues.local import LocalQueue
    from chalicelib.sqlite import set_synchronous
    from db.store import Store
    from worker.decoders import make_decoder
    from worker.loop import Limits, Worker

    decoder = make_decoder("auto")
    local = LocalQueue(queue)
    store = Store.open(db)
    set_synchronous(store.db, synchronous)
    commits = [0]
    write = store.write

    def counted(*args: Any, **kwargs: Any) -> Any:
        commits[0] += 1  # one transaction per call
        return write(*args, **kwargs)

    store.write = counted  # type: ignore[method-assign]
    worker = Worker(local, store, dataclasses.replace(Limits(), wait_seconds=0.0), out=None, decoder=decoder)
    started = time.perf_counter()
    worker.run(until_empty=True)
    store.close()
    seconds = time.perf_counter() - started
    decoder.close()
    local.close()
    written = worker.totals.written
    events = written.events + written.duplicates + written.adjustments + written.duplicate_adjustments + written.rejects
    return {"synchronous": synchronous, "seconds": seconds, "events": events, "commits": commits[0]}


def _drain_process(queue: Path, db: Path, synchronous: Synchronous) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.durability", "--drain", str(queue), str(db), synchronous]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def disk_commits(directory: Path, synchronous: Synchronous, commits: int = DISK_COMMITS) -> float:
    """One-row commits per second in a WAL database on this disk: what a flush costs here."""
    path = directory / f"disk-{synchronous.lower()}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = connect(path, wal=True, synchronous=synchronous)
    db.execute("CREATE TABLE t (x INTEGER)")
    started = time.perf_counter()
    for i in range(commits):
        with atomic(db):
            db.execute("INSERT INTO t VALUES (?)", (i,))
    seconds = time.perf_counter() - started
    db.close()
    return commits / seconds


def rate(run: dict[str, Any]) -> float:
    return float(run["events"]) / float(run["seconds"])


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=rate)[len(runs) // 2]


def measure(work: Path, events: int, repeats: int = REPEATS, log: Any = print) -> dict[str, Any]:
    """Drain `events` events with FULL and with NORMAL, `repeats` times each, interleaved."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / "queue-durability.db"
    data.fill_queues({events: source})
    runs: dict[str, list[dict[str, Any]]] = {level: [] for level in LEVELS}
    for i in range(repeats):
        for level in LEVELS if i % 2 == 0 else tuple(reversed(LEVELS)):  # neither always goes first
            queue = data.copy_queue(source, work / "queue-durability-run.db")
            db = work / "durability.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            runs[level].append(_drain_process(queue, db, level))
            log(f"  {level}: {rate(runs[level][-1]):,.0f} events/s, {runs[level][-1]['commits']} commits")
    for path in (source, work / "queue-durability-run.db", work / "durability.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    disk = {level: disk_commits(work, level) for level in LEVELS}
    for level in LEVELS:
        Path(work / f"disk-{level.lower()}.db").unlink(missing_ok=True)
    full, normal = _median(runs["FULL"]), _median(runs["NORMAL"])
    return {
        "events": events,
        "repeats": repeats,
        "full": full,
        "normal": normal,
        "runs": {level: [rate(r) for r in rs] for level, rs in runs.items()},
        "disk_commits_per_second": disk,
        "filesystem": _filesystem(work),
    }


def _filesystem(path: Path) -> str:
    """The file system holding `path` (from the mount table; "unknown" elsewhere)."""
    try:
        from db.netfs import mount_of

        mount = mount_of(path)
    except OSError:
        mount = None
    return f"{mount.fs_type} on {mount.device}" if mount else "unknown"


def section(result: dict[str, Any] | None) -> str:
    """The Markdown section for bench/RESULTS.md (empty when not measured)."""
    if not result:
        return ""
    full, normal = rate(result["full"]), rate(result["normal"])
    commits = result["full"]["commits"]
    disk = result["disk_commits_per_second"]
    # What FULL should cost: one more flush per commit, at this disk's price of a flush.
    expected = commits * (1 / disk["FULL"] - 1 / disk["NORMAL"])
    runs = "; ".join(f"{level}: " + ", ".join(f"{r:,.0f}" for r in rs) for level, rs in result["runs"].items())
    return f"""
## Durability: commits that survive a power cut

The worker deletes a batch's messages only after its COMMIT is on disk: the store commits with
`synchronous=FULL`, which syncs the WAL at every COMMIT (NORMAL leaves that to the next
checkpoint, and a power cut can roll back a commit whose messages are already deleted). The real
worker drained the same {result["events"]:,} events with each level, {result["repeats"]} times each,
interleaved, each drain in its own process (medians below; every run: {runs} events/s):

| synchronous | events/s | transactions | seconds |
| --- | --- | --- | --- |
| FULL (as shipped) | {full:,.0f} | {commits:,} | {result["full"]["seconds"]:.2f} |
| NORMAL | {normal:,.0f} | {result["normal"]["commits"]:,} | {result["normal"]["seconds"]:.2f} |

**FULL / NORMAL: {full / normal:.2f}.** What FULL should cost on this disk: one more flush per
transaction, {commits:,} × {1000 / disk["FULL"]:.2f} ms = {expected:.2f} s of the
{result["normal"]["seconds"]:.2f} s drain ({expected / result["normal"]["seconds"]:.1%}); a ratio further from 1
than that is the run-to-run spread of this shared machine (the runs above).

This disk, as separate facts (they measure the disk, not the code; {result["filesystem"]}): one-row
commits in WAL mode ran at {disk["FULL"]:,.0f}/s with FULL and {disk["NORMAL"]:,.0f}/s with NORMAL.
Another disk can flush 50 times faster or slower; the worker pays one flush per transaction of up
to 5,000 events, whatever the disk.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--drain", nargs=3, metavar=("QUEUE", "DB", "SYNCHRONOUS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drain:
        queue, db, level = args.drain
        if level not in LEVELS:
            parser.error(f"SYNCHRONOUS must be one of {LEVELS}")
        print(json.dumps(drain(Path(queue), Path(db), level)))
        return 0
    from .run import machine

    for key, value in machine().items():
        print(f"{key}: {value}")
    with tempfile.TemporaryDirectory(dir=data.OUT if data.OUT.is_dir() else None) as tmp:
        result = measure(Path(tmp), args.events, args.repeats, log=lambda m: print(m, file=sys.stderr))
    print(section(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
