"""`make bench`: every benchmark, each figure a ratio against a baseline from the same run.

    .venv/bin/python -m bench.run [--scale 0.2] [--out bench/RESULTS.md]

Writes bench/RESULTS.md. Data is generated (seeded) into bench/out/run/, which is git-ignored.
`--scale` shrinks every event count (for a quick look); RESULTS.md says when it was used.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from db.worker import Limits

from . import baselines, data
from .endpoint import endpoint_work
from .latency import measure_latency
from .sqs_calls import count_sqs_calls

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python -m bench.run   (or: make bench)"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    try:
        import orjson

        orjson_version = orjson.__version__
    except ImportError:
        orjson_version = "not installed"
    return {
        "commit": commit,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "orjson": orjson_version,
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "os": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def drain(queue: Path, db: Path, profile: Path | None = None) -> dict[str, Any]:
    """The real worker in its own process (so its peak RSS is its own)."""
    cmd = [sys.executable, "-m", "bench.drain", str(queue), str(db)]
    if profile:
        cmd += ["--profile", str(profile)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rate(result: dict[str, Any]) -> float:
    return result["events"] / result["seconds"]


def fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def profile_text(path: Path, top: int = 18) -> tuple[str, float]:
    """Top functions by own time, and the share of time spent inside SQLite calls."""
    stats = pstats.Stats(str(path))
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    text = text[text.index("ncalls") :] if "ncalls" in text else text
    total = stats.total_tt  # type: ignore[attr-defined]
    sqlite_time = sum(
        tt
        for (_file, _line, name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
        if name
        in (
            "<method 'executemany' of 'sqlite3.Connection' objects>",
            "<method 'execute' of 'sqlite3.Connection' objects>",
        )
    )
    return text.replace(str(ROOT) + "/", ""), sqlite_time / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every event count (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--skip-latency", action="store_true", help="skip the chalice local run")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def n(count: int) -> int:
        return max(1_000, int(count * args.scale) // 1_000 * 1_000)

    small, medium, large = n(10_000), n(100_000), n(1_000_000)
    work = ROOT / "bench" / "out" / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    limits = Limits()
    messages_per_batch = max(1, limits.max_batch_events // data.EVENTS_PER_MESSAGE)
    results: dict[str, Any] = {"machine": machine(), "scale": args.scale, "sizes": [small, medium, large]}

    log(f"generating {large:,} events into local queue files ({data.EVENTS_PER_MESSAGE} per message)")
    queues = {size: work / f"queue-{size}.db" for size in (small, medium, large)}
    t = time.perf_counter()
    data.fill_queues(queues)
    data.fill_queues({small: work / "queue-naive.db"}, per_message=1)
    results["generate_seconds"] = time.perf_counter() - t
    data.copy_queue(queues[medium], work / "queue-ceiling.db")
    data.copy_queue(queues[small], work / "queue-profile.db")
    json_path = work / "events.json"
    data.write_json_array(data.event_chunks(medium), json_path)

    log(f"worker drains: {small:,}, {medium:,}, {large:,} events")
    drains = {}
    for size in (small, medium, large):
        drains[size] = drain(queues[size], fresh(work / f"worker-{size}.db"))
        log(f"  {size:,}: {rate(drains[size]):,.0f} events/s, peak RSS {drains[size]['peak_rss_mb']:.0f} MB")
        queues[size].unlink()
    results["drains"] = {str(k): v for k, v in drains.items()}

    log("ceiling: prebuilt rows, executemany, one transaction per batch")
    batches = baselines.prebuilt(work / "queue-ceiling.db", messages_per_batch)
    ceiling = baselines.ceiling(batches, fresh(work / "ceiling.db"))
    log(f"  {rate(ceiling):,.0f} events/s")
    log("experiment: the same ceiling with `events` as a rowid table (UNIQUE key)")
    ceiling_rowid = baselines.ceiling(batches, fresh(work / "ceiling-rowid.db"), rowid_events=True)
    log(f"  {rate(ceiling_rowid):,.0f} events/s")
    results["ceiling_rowid"] = ceiling_rowid
    del batches
    log(f"naive consumer on {small:,} events, one per message")
    naive = baselines.naive(work / "queue-naive.db", fresh(work / "naive.db"))
    log(f"  {rate(naive):,.0f} events/s")
    log(f"sqlite-utils insert on {medium:,} events")
    sutils = baselines.sqlite_utils(json_path, fresh(work / "sqlite-utils.db"), medium)
    log(f"  {rate(sutils):,.0f} events/s")
    results.update(ceiling=ceiling, naive=naive, sqlite_utils=sutils)

    log(f"profile: worker drain of {small:,} events under cProfile")
    profile_path = work / "worker.prof"
    drain(work / "queue-profile.db", fresh(work / "profile.db"), profile_path)
    profile, sqlite_share = profile_text(profile_path)

    endpoint_events = data.events(n(50_000))
    log(f"endpoint work: accept() on {len(endpoint_events):,} events, 100 per POST")
    endpoint = endpoint_work(endpoint_events, per_post=100)
    log(f"  {rate(endpoint):,.0f} events/s")
    results["endpoint"] = endpoint

    log("SQS requests, counted against moto (never timed)")
    sqs_big = count_sqs_calls(endpoint_events[: n(20_000)], per_post=1_000, workdir=work)
    sqs_small = count_sqs_calls(endpoint_events[: n(10_000)], per_post=100, workdir=work)
    log(f"  {sqs_big['per_million']:,.0f} per million (1,000 per POST); {sqs_small['per_million']:,.0f} (100 per POST)")
    results.update(sqs_big=sqs_big, sqs_small=sqs_small)

    latency = None
    if not args.skip_latency:
        log("end-to-end latency through chalice local at 1,000 events/s")
        latency = measure_latency(endpoint_events[: n(20_000)], work)
        log(f"  p50 {latency['p50'] * 1000:.0f} ms, p99 {latency['p99'] * 1000:.0f} ms")
    results["latency"] = latency
    results["total_seconds"] = time.perf_counter() - started
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    args.out.write_text(render(results, profile, sqlite_share, limits))
    log(f"wrote {args.out} in {results['total_seconds']:.0f} s")
    return 0


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(r: dict[str, Any], profile: str, sqlite_share: float, limits: Limits) -> str:
    small, medium, large = r["sizes"]
    d = {int(k): v for k, v in r["drains"].items()}
    w_small, w_medium, w_large = rate(d[small]), rate(d[medium]), rate(d[large])
    ceiling, naive, sutils = rate(r["ceiling"]), rate(r["naive"]), rate(r["sqlite_utils"])
    endpoint = rate(r["endpoint"])
    spread = max(w_small, w_medium, w_large) / min(w_small, w_medium, w_large)
    rss = d[large]["peak_rss_mb"]
    big, little = r["sqs_big"], r["sqs_small"]
    lat = r["latency"]
    m = r["machine"]
    rows = [
        (
            f"worker drain / ceiling ({medium:,} events)",
            f"{w_medium:,.0f} ev/s",
            f"{ceiling:,.0f} ev/s",
            f"{w_medium / ceiling:.2f}",
            "≥ 0.6",
            _met(w_medium / ceiling >= 0.6),
        ),
        (
            f"worker drain / naive consumer ({small:,} events)",
            f"{w_small:,.0f} ev/s",
            f"{naive:,.0f} ev/s",
            f"{w_small / naive:,.0f}×",
            "≥ 50×",
            _met(w_small / naive >= 50),
        ),
        (
            f"worker drain / sqlite-utils insert ({medium:,} events)",
            f"{w_medium:,.0f} ev/s",
            f"{sutils:,.0f} ev/s",
            f"{w_medium / sutils:.1f}×",
            "≥ 2×",
            _met(w_medium / sutils >= 2),
        ),
        (
            f"endpoint work per event ({r['endpoint']['events']:,} events, 100 per POST, one core)",
            f"{endpoint:,.0f} ev/s",
            "—",
            "—",
            "≥ 30,000 ev/s",
            _met(endpoint >= 30_000),
        ),
        (
            "billable SQS requests per million events, 1,000 events per POST",
            f"{big['per_million']:,.0f}",
            "3,000,000 (one message per event)",
            f"{3_000_000 / big['per_million']:,.0f}× fewer",
            "≤ 10,000",
            _met(big["per_million"] <= 10_000),
        ),
        (
            "billable SQS requests per million events, 100 events per POST",
            f"{little['per_million']:,.0f}",
            "3,000,000 (one message per event)",
            f"{3_000_000 / little['per_million']:,.0f}× fewer",
            "≤ 10,000",
            _met(little["per_million"] <= 10_000),
        ),
    ]
    if lat:
        rows.append(
            (
                f"end-to-end latency POST → committed row, {lat['achieved_rate']:,.0f} ev/s via chalice local",
                f"p50 {lat['p50'] * 1000:,.0f} ms, p99 {lat['p99'] * 1000:,.0f} ms",
                "—",
                "—",
                "p99 ≤ 2 s",
                _met(lat["p99"] <= 2.0 and lat["landed_posts"] == lat["posts"]),
            )
        )
    else:
        rows.append(("end-to-end latency", "skipped (--skip-latency)", "—", "—", "p99 ≤ 2 s", "not measured"))
    rows += [
        (
            f"worker peak RSS draining a {large:,}-event backlog",
            f"{rss:,.0f} MB",
            "—",
            "—",
            "≤ 150 MB",
            _met(rss <= 150),
        ),
        (
            f"throughput at {small:,} / {medium:,} / {large:,} events",
            f"{w_small:,.0f} / {w_medium:,.0f} / {w_large:,.0f} ev/s",
            "each other",
            f"max/min {spread:.2f}",
            "within ±20% (max/min ≤ 1.2)",
            _met(spread <= 1.2),
        ),
    ]
    table = "| figure | measured | baseline | ratio | target | |\n| --- | --- | --- | --- | --- | --- |\n"
    table += "\n".join("| " + " | ".join(row) + " |" for row in rows)
    scaled = (
        f"\n**Scaled run:** `--scale {r['scale']}` multiplied every event count; the targets are for the full run.\n"
        if r["scale"] != 1.0
        else ""
    )
    breakdown = ", ".join(f"{k} {v:,}" for k, v in sorted(big["billable"].items()))
    breakdown_small = ", ".join(f"{k} {v:,}" for k, v in sorted(little["billable"].items()))
    dl = d[large]
    bounds = bounds_text(r, w_small, w_medium, w_large, ceiling, naive, sutils, sqlite_share)
    return f"""# Benchmark results

Generated by `{COMMAND}` in {r["total_seconds"]:.0f} s. Do not edit by hand.
{scaled}
| | |
| --- | --- |
| commit | {m["commit"]} |
| Python | {m["python"]} |
| SQLite | {m["sqlite"]} |
| orjson | {m["orjson"]} |
| CPU | {m["cpu"]} |
| OS | {m["os"]} |
| date | {m["date"]} |

{table}

Every ratio divides two figures measured in this run, on this machine, from the same seeded
events (seed {data.SEED}; the smaller sets are prefixes of the larger). Absolute events/s vary
with the machine and with whatever else runs on its two shared cores, which is why the targets are
ratios. Worker defaults: {limits.max_batch_events:,} events per transaction, {data.EVENTS_PER_MESSAGE}
events per queue message.

## How each figure is measured

- **Worker drain**: `bench/drain.py` runs the real `Worker` (its default `Limits`, no idle long
  poll at the end) in its own process on a local queue file already holding the events, into a
  fresh database with every migration; timed from opening the queue to the drained exit. The
  {large:,}-event drain stored {dl["stored_events"]:,} events, {dl["adjustments"]:,} adjustments and
  absorbed {dl["duplicates"]:,} duplicates.
- **Ceiling** (`bench/baselines.py`): the same messages turned into the same row tuples
  beforehand (untimed), then only `BEGIN IMMEDIATE`, `executemany` of the store's own INSERT
  statements and `COMMIT`, {messages_per_batch(limits)} messages per transaction, through
  `Store.open` (same schema, same PRAGMAs).
- **Naive consumer** (`bench/baselines.py`): one event per message, `receive(1)`, one INSERT and
  COMMIT per event, one delete per message, on the same local queue and the same store.
- **sqlite-utils**: `sqlite-utils {" ".join(baselines.SQLITE_UTILS_ARGS)}` on the same {medium:,}
  events as one JSON array file, timed as a process. `--alter` is needed because later events
  carry fields the first batch does not.
- **Endpoint work**: `accept()` in process on JSON bodies of 100 events (decode, validate, pack,
  gzip, base64); the queue only counts calls and its time is subtracted. Best of 3 passes.
- **SQS requests**: the real `accept()` → `SqsQueue.send_all` and the real worker (receive,
  delete, heartbeat, depth) against moto's SQS server; botocore hooks count every call, each
  billed as max(1, ceil(payload / 64 KiB)). moto is used **only for counting calls**: it slows
  down sharply as its queue grows (about 46 receives/s at a depth of 1,000), so no throughput
  figure comes from it. {big["events"]:,} events at 1,000 per POST: {breakdown}. {little["events"]:,}
  events at 100 per POST: {breakdown_small}. The count per million is scaled linearly from these
  runs. One POST becomes at least one message, so small POSTs cost at least one send each: the
  target is met only when producers send about 500 or more events per POST.
- **Latency**: `chalice local --no-autoreload` and `read_queue.py` as processes; POSTs of
  {lat["per_post"] if lat else 100} events at a steady 1,000 events/s; a watcher polls the
  database every 5 ms for one new event of each POST.
- **Peak RSS**: `ru_maxrss` of the drain process for {large:,} events (interpreter included).

## What bounds the unmet targets

{bounds}

## Where the worker's time goes

cProfile of the worker draining {small:,} events (profiling slows Python code more than the
SQLite calls, so the SQLite share below is a lower bound): **{sqlite_share:.0%} of the time is
inside SQLite** (`execute`/`executemany`, i.e. B-tree inserts and the queue's own transactions).

```
{profile}
```
"""


def bounds_text(
    r: dict[str, Any],
    w_small: float,
    w_medium: float,
    w_large: float,
    ceiling: float,
    naive: float,
    sutils: float,
    sqlite_share: float,
) -> str:
    rowid = rate(r["ceiling_rowid"]) if r.get("ceiling_rowid") else None
    small, medium, _large = r["sizes"]
    lines = [
        f"- **The SQLite write itself bounds every throughput figure.** The ceiling (SQLite alone: no "
        f"decoding, rows prebuilt) takes {1e6 / ceiling:,.0f} µs per event at {medium:,} events, which is "
        f"{w_medium / ceiling:.0%} of the worker's {1e6 / w_medium:,.0f} µs; decoding, typed rows and the "
        f"queue are the rest ({sqlite_share:.0%} of the profiled time below is inside SQLite calls even at "
        f"{small:,} events, when the table is still small). The cause is the schema: `events` is a "
        "`WITHOUT ROWID` table keyed by a random 32-hex id whose rows are about 1.3 KB (typed columns "
        "plus the raw JSON), so every insert lands on a random leaf of a b-tree holding whole rows and "
        "splits it, and six secondary indexes (one, `transaction_id`, also random) are updated too.",
    ]
    if rowid:
        lines.append(
            f"- **Measured lever (for the schema's owner):** the same rows into the same schema with `events` "
            f"as a rowid table and `tune_event_id TEXT NOT NULL UNIQUE` (same `ON CONFLICT DO NOTHING` "
            f"semantics): {rowid:,.0f} events/s, {rowid / ceiling:.1f}× the current ceiling. Rows then "
            "append at the end of the table and only the narrow key indexes take random inserts. That is a "
            "migration, outside this benchmark's files; it is the first change to make."
        )
    unmet = []
    if w_small / naive < 50:
        unmet.append(
            f"- **worker / naive ≥ 50×:** 50× the naive consumer would be {50 * naive:,.0f} events/s, above the "
            f"ceiling itself ({ceiling:,.0f}), so no consumer can meet it on this schema. The naive consumer is "
            "also not as slow as a first version usually is: it uses the same store (WAL, `synchronous=NORMAL`: "
            "a COMMIT does not fsync) and the same local queue (receive/delete do not fsync), so one event "
            f"(receive, insert, commit, delete) costs about {1e6 / naive:,.0f} µs here. With sqlite3's "
            "defaults (rollback journal, `synchronous=FULL`) every commit would wait for the disk."
        )
    if w_medium / sutils < 2:
        unmet.append(
            f"- **worker / sqlite-utils ≥ 2×:** sqlite-utils writes a much smaller table: only the keys present, "
            "no raw JSON, no typed duplicates, a rowid table with its one key index and no secondary indexes. "
            f"The ceiling itself is only {ceiling / sutils:.1f}× sqlite-utils, so 2× is out of reach until the "
            "write gets cheaper (the lever above)."
        )
    if max(w_small, w_medium, w_large) / min(w_small, w_medium, w_large) > 1.2:
        unmet.append(
            f"- **±20% at 10k / 100k / 1M:** per-event cost grows with the table ({w_small:,.0f} → {w_medium:,.0f} "
            f"→ {w_large:,.0f} events/s) because random-key inserts into the `WITHOUT ROWID` b-tree (hundreds of "
            "MB at a million rows) miss SQLite's 64 MiB page cache more and more. A bigger cache trades against "
            "the 150 MB RSS target; a rowid table (appends) is the fix."
        )
    if r["sqs_small"]["per_million"] > 10_000:
        unmet.append(
            "- **SQS requests with 100 events per POST:** each POST becomes at least one message and one "
            "`SendMessageBatch`, so 10,000 POSTs per million events cost at least 10,000 sends before any "
            'receive. The endpoint cannot batch across requests without breaking "202 means durably '
            'queued"; producers that send about 500 or more events per POST meet the target (see the '
            "1,000-per-POST row)."
        )
    lines += unmet
    return "\n".join(lines)


def messages_per_batch(limits: Limits) -> int:
    return max(1, limits.max_batch_events // data.EVENTS_PER_MESSAGE)


if __name__ == "__main__":
    sys.exit(main())
