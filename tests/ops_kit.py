"""Helpers for the operations tests: deterministic input, workers, and domain snapshots."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from bench.generate import Generator
from chalicelib.codec import encode_envelope, pack_events
from tests.kit import one

ROOT = Path(__file__).resolve().parent.parent

# Ingestion metadata: where and when a row landed, which differs between hosts by design.
INGEST_COLUMNS = {"message_id", "ingested_at"}
# What SQLite may put beside a database file of its own accord.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def examples(default: int, fuzz: int = 1000) -> int:
    """Hypothesis examples per property: bounded in `make test`, many more with FIREHOSE_FUZZ=1 (`make fuzz`)."""
    return fuzz if os.environ.get("FIREHOSE_FUZZ") == "1" else default


# Characters that mean something in a URI, to a shell or to an option parser, besides any other.
_HOSTILE = "#?%&=;: -'\"*[]{}~$!@+,"


def file_names() -> st.SearchStrategy[str]:
    """File names a user may give: any characters a Linux file name can hold (no "/", no NUL,
    nothing the file system cannot encode), biased towards "#", "?", "%", spaces and a leading dash;
    short enough that SQLite's "-journal" and a ".partial" still fit in 255 bytes."""
    char = st.one_of(
        st.sampled_from(_HOSTILE),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    )
    name = st.one_of(st.text(char, min_size=1, max_size=24), st.builds("-{}".format, st.text(char, max_size=12)))
    return name.filter(lambda n: n not in (".", "..") and len(os.fsencode(n)) <= 200)


def new_files(directory: Path, before: set[str], expected: set[str]) -> set[str]:
    """Files that appeared in `directory` and are neither `expected` nor SQLite's own beside them."""
    allowed = expected | {name + side for name in expected for side in SQLITE_SIDE_FILES}
    return {p.name for p in directory.iterdir()} - before - allowed


def bodies(seed: int, events: int, per_message_bytes: int = 12_000) -> list[str]:
    """TUNE-form message bodies with duplicates and adjustments mixed in, plus bad input:
    an undecodable message, an event without an action and an update without a sequence id."""
    out = [p.body for p in pack_events(Generator(seed).events(events), per_message_bytes, {"batch": seed})]
    out.append(f"this is not a firehose message (seed {seed})")
    bad = [
        b'{"tune_event_id":"bad-%d","datetime":1790000000}' % seed,
        b'{"action":"conversion","adjust_action":2,"tune_event_id":"x-%d"}' % seed,
    ]
    out.append(encode_envelope(bad, {"batch": seed, "bad": True}))
    return out


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUE_URL", "DB_PATH")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def read_queue(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """Start `python read_queue.py ARGS` as its own process, as an operator would."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "read_queue.py"), *args],
        cwd=ROOT,
        env=popen.pop("env", None) or worker_env(),
        text=True,
        **popen,
    )


def _table(db: sqlite3.Connection, table: str, exclude: set[str], order: str) -> list[tuple[Any, ...]]:
    columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[1] not in exclude]
    return db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()


def domain(path: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything an analyst sees, without ingestion metadata."""
    db = sqlite3.connect(path)
    try:
        return {
            "events": _table(db, "events", INGEST_COLUMNS, "tune_event_id"),
            "adjustments": _table(db, "adjustments", INGEST_COLUMNS, "adjustment_sequence_id"),
            "rejects": db.execute("SELECT reject_key, event_index, reason, raw FROM rejects ORDER BY 1").fetchall(),
            "envelopes": db.execute("SELECT control_json, event_count FROM envelopes ORDER BY 1, 2").fetchall(),
            "daily_stats": db.execute("SELECT * FROM daily_stats ORDER BY 1, 2, 3, 4").fetchall(),
            "events_reconciled": db.execute("SELECT * FROM events_reconciled ORDER BY 1").fetchall(),
        }
    finally:
        db.close()


def count(path: Path | str, table: str) -> int:
    return int(one(path, f"SELECT count(*) FROM {table}"))
