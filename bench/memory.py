"""Peak memory of the worker and its decoding helper, whatever the message shapes (issue 12).

    .venv/bin/python -m bench.memory [--scale 0.2] [--decode auto]

Each shape is a local queue file of TUNE-form messages (base64(gzip(envelope))), drained by the
real worker in its own process (`bench.drain`), which reports the peak resident set of the worker
plus its helper. The shapes are the hostile ones: few messages that each inflate to about 30 MiB,
messages of 10,000 events, and events of about 1 MiB. Padding goes into a field that is no column
(`pad`), so it is held once per event, in `raw_json`, as TUNE's own unknown fields are.
`--scale` shrinks the number of messages, never their size: the size is what is measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.codec import MAX_EVENT_BYTES, dump_event, encode_envelope
from chalicelib.queues.local import LocalQueue
from worker.loop import Limits

from .generate import Generator

MIB = 1024 * 1024
TARGET_MB = 200  # issue 12: the worker and its helper together, whatever the shapes


@dataclass(frozen=True)
class Shape:
    name: str
    what: str
    messages: int
    events_per_message: int
    pad_bytes: int  # added to each generated event; 0: the benchmark's own events as they are

    def count(self, scale: float) -> int:
        return max(3, round(self.messages * scale))


SHAPES = [
    Shape("30 MiB messages", "messages of ~30 MiB decoded: 3,000 events of ~10 KiB each", 50, 3_000, 10 * 1024),
    Shape("10,000-event messages", "messages of 10,000 ordinary events (~7 MiB decoded)", 20, 10_000, 0),
    Shape("1 MiB events", "messages of 10 events of just under 1 MiB each", 100, 10, MAX_EVENT_BYTES - 1024),
]


def bodies(shape: Shape, count: int) -> Iterator[str]:
    gen = Generator(seed=7)
    for _ in range(count):
        events = gen.events(shape.events_per_message)
        del gen.conversions[:-2_000]  # keep the generator's memory flat
        if shape.pad_bytes:
            for event in events:
                event["pad"] = "x" * max(0, shape.pad_bytes - len(dump_event(event)) - 10)
        yield encode_envelope([dump_event(e) for e in events])


def fill(shape: Shape, path: Path, scale: float) -> int:
    """The shape's messages in a fresh local queue file; returns how many."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    queue = LocalQueue(path, max_message_bytes=64 * MIB)  # the bench's own file: any size goes in
    count = 0
    try:
        for body in bodies(shape, shape.count(scale)):
            result = queue.send_all([body])
            assert result.ok, result.failed
            count += 1
    finally:
        queue.close()
    return count


def measure(work: Path, scale: float = 1.0, decode: str = "auto") -> list[dict[str, Any]]:
    """Drain each shape once; the drain's report plus the shape's name and size."""
    from .run import drain, fresh, log  # run.py imports this module too

    results = []
    for shape in SHAPES:
        queue, db = work / "queue-memory.db", fresh(work / "memory.db")
        messages = fill(shape, queue, scale)
        result = drain(queue, db, decode=decode)
        result.update(shape=shape.name, what=shape.what, queued_messages=messages)
        log(
            f"  {shape.name}: peak RSS {result['peak_rss_mb']:,.0f} MB "
            f"(helper {result['helper_peak_rss_mb']:,.0f} MB), {result['events']:,} events"
        )
        results.append(result)
        queue.unlink()
        fresh(db)  # up to 1.5 GB: not kept
    return results


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| shape | messages | events | peak RSS, worker + helper | of which the helper | ≤ 200 MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        met = "met" if r["peak_rss_mb"] <= TARGET_MB else "**not met**"
        lines.append(
            f"| {r['what']} | {r['queued_messages']:,} | {r['events']:,} | {r['peak_rss_mb']:,.0f} MB | "
            f"{r['helper_peak_rss_mb']:,.0f} MB | {met} |"
        )
    return "\n".join(lines)


def section(results: list[dict[str, Any]] | None) -> str:
    """The RESULTS.md section for `measure`'s results ("" when not measured)."""
    if not results:
        return ""
    return f"""
## Peak memory by message shape

Each shape is a local queue of TUNE-form messages drained by the real worker (`bench/drain.py`,
its default limits: {Limits().max_batch_events:,} events and {Limits().max_batch_bytes // MIB} MiB of decoded text per
transaction), whose peak resident set (`VmHWM`) is added to its decoding helper's: a sum of peaks,
an upper bound of what they held at once. Padding sits in a field no column reads. Target: at most
{TARGET_MB} MB whatever the shapes (issue 12).

{render(results)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of messages (default 1)")
    parser.add_argument("--decode", choices=("auto", "process", "inline"), default="auto")
    args = parser.parse_args()
    work = Path(__file__).resolve().parent / "out" / "memory"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    results = measure(work, args.scale, args.decode)
    print(render(results))
    print(json.dumps(results), file=sys.stderr)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
