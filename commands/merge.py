"""`read_queue.py merge TARGET SOURCE...`: combine each host's database into one analyst database.

Idempotent: every row is inserted with ON CONFLICT DO NOTHING on its key (tune_event_id,
adjustment_sequence_id, message_id, reject_key), so the same event landed by two hosts, or
one source merged twice, is stored once.

Incremental: for each source and table the target remembers, in `merge_sources`, the newest
write time it copied (ingested_at, received_at, rejected_at). The next run reads only rows
from that mark minus `--overlap` seconds onwards, through the indexes of migration 3. The
overlap is there because a batch's write time is taken just before its transaction, so a
batch that waited for a lock can commit a little after rows stamped later than its own.

Safe while workers write: each source is ATTACHed read-only and read in short statements,
each a consistent WAL snapshot; nothing ever writes to a source or holds its write lock.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.sqlite import connect, retry_while_busy, uri
from db.errors import DatabaseFault, SchemaTooNew
from db.netfs import check_local
from db.schema import LATEST_VERSION, migrate

from .progress import progress

log = logging.getLogger("tune_firehose.merge")

NAME = "merge"
HELP = "combine several hosts' database files into one analyst database (idempotent, incremental)"
EPILOG = """examples:
  # on the analyst host, after copying each host's `backup` file over:
  python read_queue.py merge data/analyst.db host1.db host2.db host3.db
  # run it again at any time: only what is new is copied
  python read_queue.py merge data/analyst.db host1.db host2.db host3.db

A source is remembered by its absolute path: keep each host's file at the same path (for
example overwrite host1.db with each new backup) so the next run starts from where the last
one stopped."""

# (table, the column that grows with each write): constants, never taken from input.
TABLES = (
    ("envelopes", "received_at"),
    ("events", "ingested_at"),
    ("adjustments", "ingested_at"),
    ("rejects", "rejected_at"),
)
DEFAULT_OVERLAP_SECONDS = 900
DEFAULT_CHUNK_ROWS = 5000
INDEXED_FROM_VERSION = 3  # migration 0003 adds the write-time indexes

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS merge_sources (
    source TEXT NOT NULL,             -- absolute path of the source file
    table_name TEXT NOT NULL,
    high_water INTEGER NOT NULL,      -- newest write time (epoch s) copied from that table
    rows_copied INTEGER NOT NULL,     -- new rows this source has contributed, over all runs
    merged_at INTEGER NOT NULL,
    PRIMARY KEY (source, table_name)
)
"""


@dataclass
class TableResult:
    read: int = 0
    new: int = 0


@dataclass
class SourceResult:
    source: str
    tables: dict[str, TableResult] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return sum(t.read for t in self.tables.values())

    @property
    def new(self) -> int:
        return sum(t.new for t in self.tables.values())


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def open_target(path: Path) -> sqlite3.Connection:
    # NORMAL: a merge lost to a power cut is simply run again (the keys absorb what was copied).
    # The connection is a URI one, so that ATTACH below accepts `?mode=ro`.
    db = connect(path, wal=True, synchronous="NORMAL")
    migrate(db)
    db.execute(_BOOKKEEPING)
    return db


def _columns(db: sqlite3.Connection, schema: str, table: str) -> list[str]:
    # schema is "main" or "src" and table comes from TABLES: both constants.
    return [row[1] for row in db.execute(f"PRAGMA {schema}.table_info({table})")]


def _high_water(db: sqlite3.Connection, source: str, table: str) -> int | None:
    row = db.execute(
        "SELECT high_water FROM merge_sources WHERE source = ? AND table_name = ?", (source, table)
    ).fetchone()
    return None if row is None else int(row[0])


def _plan(db: sqlite3.Connection, source: str, overlap: int) -> list[tuple[str, str, list[str], int | None, Any]]:
    """For each table the source has: (table, mark column, columns to copy, start, newest mark)."""
    plan = []
    for table, mark in TABLES:
        src_cols = set(_columns(db, "src", table))
        if not src_cols or mark not in src_cols:
            continue
        columns = [c for c in _columns(db, "main", table) if c in src_cols]
        hw = _high_water(db, source, table)
        start = None if hw is None else hw - overlap
        (newest,) = db.execute(f"SELECT max({mark}) FROM src.{table}").fetchone()
        plan.append((table, mark, columns, start, newest))
    return plan


def _count(db: sqlite3.Connection, table: str, mark: str, lo: Any, hi: Any = None) -> int:
    where, params = _window(mark, lo, hi)
    return int(db.execute(f"SELECT count(*) FROM src.{table}{where}", params).fetchone()[0])


def _window(mark: str, lo: Any, hi: Any) -> tuple[str, tuple[Any, ...]]:
    clauses, params = [], []
    if lo is not None:
        clauses.append(f"{mark} >= ?")
        params.append(lo)
    if hi is not None:
        clauses.append(f"{mark} < ?")
        params.append(hi)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _copy(db: sqlite3.Connection, table: str, mark: str, columns: list[str], lo: Any, hi: Any) -> int:
    cols = ", ".join(_q(c) for c in columns)
    where, params = _window(mark, lo, hi)
    # SQLite needs a WHERE before an upsert's ON CONFLICT, or it parses ON as a join clause.
    where = where or " WHERE true"
    sql = f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}{where} ON CONFLICT DO NOTHING"

    def waiting(attempt: int, _exc: sqlite3.Error) -> None:
        log.warning("target database is locked by another connection (attempt %d); retrying", attempt)

    return retry_while_busy(lambda: int(db.execute(sql, params).rowcount), on_wait=waiting)


def _windows(
    db: sqlite3.Connection, table: str, mark: str, start: Any, chunk: int, indexed: bool
) -> Iterator[tuple[Any, Any]]:
    """Successive [lo, hi) ranges of about `chunk` rows each; the last is open-ended (hi None)."""
    if not indexed:
        yield start, None  # without the index every range is a full scan: do one
        return
    lo = start
    while True:
        where, params = _window(mark, lo, None)
        row = db.execute(
            f"SELECT {mark} FROM src.{table}{where} ORDER BY {mark} LIMIT 1 OFFSET ?", (*params, chunk)
        ).fetchone()
        if row is None:
            yield lo, None
            return
        hi = row[0]
        if lo is not None and hi <= lo:
            hi = lo + 1  # more than `chunk` rows share one second: take that second whole
        yield lo, hi
        lo = hi


def merge_source(
    db: sqlite3.Connection, source: Path, overlap: int, chunk: int, show_progress: bool | None
) -> SourceResult:
    key = str(source.resolve())
    result = SourceResult(key)
    db.execute("ATTACH DATABASE ? AS src", (uri(source.resolve(), "ro"),))
    try:
        (version,) = db.execute("PRAGMA src.user_version").fetchone()
        if version > LATEST_VERSION:
            raise SchemaTooNew(
                f"{source} has schema version {version}, newer than this tune-firehose understands "
                f"({LATEST_VERSION}); upgrade tune-firehose before merging it"
            )
        plan = _plan(db, key, overlap)
        total = sum(_count(db, table, mark, start) for table, mark, _c, start, _n in plan)
        with progress(source.name, "rows", total, show=show_progress) as bar:
            for table, mark, columns, start, newest in plan:
                tally = result.tables.setdefault(table, TableResult())
                if newest is None:
                    continue
                for lo, hi in _windows(db, table, mark, start, chunk, version >= INDEXED_FROM_VERSION):
                    read = _count(db, table, mark, lo, hi)
                    tally.new += _copy(db, table, mark, columns, lo, hi)
                    tally.read += read
                    bar.advance(read)
                # `newest` was read before copying, so the mark never passes a row not yet copied.
                db.execute(
                    "INSERT INTO merge_sources (source, table_name, high_water, rows_copied, merged_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, table_name) DO UPDATE SET "
                    "high_water = excluded.high_water, "
                    "rows_copied = rows_copied + excluded.rows_copied, merged_at = excluded.merged_at",
                    (key, table, int(newest), tally.new, int(time.time())),
                )
    finally:
        db.execute("DETACH DATABASE src")
    return result


def merge(
    target: str | os.PathLike[str],
    sources: list[str | os.PathLike[str]],
    overlap: int = DEFAULT_OVERLAP_SECONDS,
    chunk: int = DEFAULT_CHUNK_ROWS,
    allow_network_fs: bool = False,
    mounts_path: str | None = None,
    show_progress: bool | None = None,
) -> list[SourceResult]:
    target_path = Path(target)
    source_paths = [Path(s) for s in sources]
    for s in source_paths:
        if not s.is_file():
            raise DatabaseFault(f"source database {s} does not exist")
        if target_path.exists() and s.resolve() == target_path.resolve():
            raise DatabaseFault(f"{s} is the target itself; name a different target")
    for path in [target_path, *source_paths]:
        check_local(path, allow_network_fs, mounts_path)
    try:
        db = open_target(target_path)
    except sqlite3.DatabaseError as exc:
        raise DatabaseFault(f"cannot open the target {target_path}: {exc}") from exc
    results = []
    try:
        for source in source_paths:
            try:
                results.append(merge_source(db, source, overlap, chunk, show_progress))
            except sqlite3.DatabaseError as exc:
                raise DatabaseFault(f"cannot merge {source}: {exc}") from exc
    finally:
        db.close()
    return results


def run(
    target: str,
    sources: Sequence[str],
    *,
    overlap: int = DEFAULT_OVERLAP_SECONDS,
    chunk: int = DEFAULT_CHUNK_ROWS,
    allow_network_fs: bool = False,
) -> int:
    """Merge, then print what each source added."""
    results = merge(target, list(sources), overlap, chunk, allow_network_fs)
    for r in results:
        detail = ", ".join(f"{t} {v.new:,}" for t, v in r.tables.items())
        print(f"{r.source}: read {r.read:,} rows, {r.new:,} new ({detail})")
    print(f"merged {len(results)} source(s) into {target}: {sum(r.new for r in results):,} new rows")
    return 0
