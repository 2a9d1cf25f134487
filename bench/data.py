"""The benchmark's data: one seeded event stream, and the queue files and JSON files built from it.

Every benchmark reads a prefix of the same stream (seed 42), so "the same data" holds across
baselines: the 10,000-event set is the start of the 100,000-event set, which is the start of
the 1,000,000-event set. Large files go to bench/out/ (git-ignored), never into the repository.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chalicelib.codec import dump_event, encode_envelope
from chalicelib.queues.local import LocalQueue

from .generate import Generator

SEED = 42
EVENTS_PER_MESSAGE = 100  # the "~100 events per message"
CHUNK = 10_000
OUT = Path(__file__).resolve().parent / "out"


def event_chunks(total: int, seed: int = SEED, chunk: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    """`total` events in chunks; duplicates are drawn within a chunk (about 1%)."""
    gen = Generator(seed)
    made = 0
    while made < total:
        events = gen.events(min(chunk, total - made))
        # Keep the generator's memory flat over a million events: updates target recent conversions.
        del gen.conversions[:-2_000]
        made += len(events)
        yield events


def events(total: int, seed: int = SEED) -> list[dict[str, Any]]:
    return [e for chunk in event_chunks(total, seed) for e in chunk]


def envelopes(chunk: list[dict[str, Any]], per_message: int = EVENTS_PER_MESSAGE) -> list[str]:
    """TUNE-form message bodies (base64(gzip(envelope))) of `per_message` events each."""
    dumped = [dump_event(e) for e in chunk]
    return [encode_envelope(dumped[i : i + per_message]) for i in range(0, len(dumped), per_message)]


def fill_queues(targets: dict[int, Path], per_message: int = EVENTS_PER_MESSAGE) -> dict[int, int]:
    """Write local queue files holding the first N events for each N in `targets`, in one pass.

    Returns the number of messages in each file.
    """
    total = max(targets)
    queues = {n: LocalQueue(path) for n, path in targets.items()}
    sent = dict.fromkeys(targets, 0)
    made = 0
    try:
        for chunk in event_chunks(total):
            bodies = envelopes(chunk, per_message)
            for n, queue in queues.items():
                if made < n:
                    keep = bodies[: max(0, (n - made + per_message - 1) // per_message)]
                    for i in range(0, len(keep), 500):
                        result = queue.send_all(keep[i : i + 500])
                        assert result.ok, result.failed[:1]
                    sent[n] += len(keep)
            made += len(chunk)
    finally:
        for queue in queues.values():
            queue.close()
    return sent


def copy_queue(src: Path, dst: Path) -> Path:
    """A fresh copy of a queue file (its WAL is checkpointed on close, so the file is whole)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    return dst


def queue_bodies(path: Path) -> list[tuple[str, str]]:
    """(message_id, body) of every message in a local queue file, in send order."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT message_id, body FROM messages ORDER BY seq").fetchall()
    finally:
        db.close()


def write_json_array(chunk_source: Iterator[list[dict[str, Any]]], path: Path) -> int:
    """The events as one JSON array file (what `sqlite-utils insert` reads)."""
    count = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        for chunk in chunk_source:
            for event in chunk:
                f.write(("," if count else "") + json.dumps(event, ensure_ascii=False) + "\n")
                count += 1
        f.write("]\n")
    return count
