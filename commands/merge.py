"""`read_queue.py merge TARGET SOURCE...`: combine each host's database into one analyst database,
a SQLite file or, when TARGET is a postgresql:// URL, a PostgreSQL database (moving up to it).

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

Into PostgreSQL (db/postgres/load.py): the same marks, kept in the server's `merge_sources`, the
same overlap, chunks and summary; each chunk is read from the source and written by the
PostgreSQL store itself, one transaction per chunk, so merged rows are what a PostgreSQL worker
writes and a merge beside running workers neither doubles a row nor deadlocks. The last chunk of
a table stops at the newest mark read before copying, and rows are read a chunk (5,000) at a time,
so memory stays bounded however fast a worker fills the source meanwhile.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chalicelib.settings import SettingsError
from chalicelib.sqlite import BUSY_TIMEOUT_MS, connect, retry_while_busy, uri
from db.errors import DatabaseFault, DatabaseUrlError, SchemaTooNew
from db.netfs import check_local
from db.postgres.url import is_postgres_url, redact
from db.schema import LATEST_VERSION, migrate

if TYPE_CHECKING:
    from db.postgres.load import Loader

from .progress import progress

log = logging.getLogger("tune_firehose.merge")

NAME = "merge"
HELP = (
    "combine several hosts' database files into one analyst database, a SQLite file or a postgresql:// URL "
    "(idempotent, incremental)"
)
EPILOG = """examples:
  # on the analyst host, after copying each host's `backup` file over:
  python read_queue.py merge data/analyst.db host1.db host2.db host3.db
  # run it again at any time: only what is new is copied
  python read_queue.py merge data/analyst.db host1.db host2.db host3.db
  # or load them into PostgreSQL (moving up from SQLite), as often as you like
  python read_queue.py merge postgresql://firehose@db.internal/firehose host1.db host2.db

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


Plan = list[tuple[str, str, list[str], int | None, Any]]


def _plan(db: sqlite3.Connection, source: str, overlap: int) -> Plan:
    """For each table the source has: (table, mark column, columns to copy, start, newest mark)."""
    return _plan_with(
        db,
        overlap,
        lambda table, src_cols: [c for c in _columns(db, "main", table) if c in src_cols],
        lambda table: _high_water(db, source, table),
    )


def _plan_with(
    db: sqlite3.Connection,
    overlap: int,
    columns_for: Callable[[str, set[str]], list[str]],
    high_water: Callable[[str], int | None],
) -> Plan:
    plan = []
    for table, mark in TABLES:
        src_cols = set(_columns(db, "src", table))
        if not src_cols or mark not in src_cols:
            continue
        columns = columns_for(table, src_cols)
        hw = high_water(table)
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
    db: sqlite3.Connection, table: str, mark: str, start: Any, chunk: int, indexed: bool, end: Any = None
) -> Iterator[tuple[Any, Any]]:
    """Successive [lo, hi) ranges of about `chunk` rows each; the last one ends at `end`, or is
    open-ended (hi None) when `end` is None."""
    if not indexed:
        yield start, end  # without the index every range is a full scan: do one
        return
    lo = start
    while True:
        where, params = _window(mark, lo, None)
        row = db.execute(
            f"SELECT {mark} FROM src.{table}{where} ORDER BY {mark} LIMIT 1 OFFSET ?", (*params, chunk)
        ).fetchone()
        if row is None or (end is not None and row[0] >= end):
            yield lo, end
            return
        hi = row[0]
        if lo is not None and hi <= lo:
            hi = lo + 1  # more than `chunk` rows share one second: take that second whole
        yield lo, hi
        lo = hi


def _source_version(db: sqlite3.Connection, source: Path) -> int:
    """The attached source's schema version; a newer one than this code's is refused."""
    (version,) = db.execute("PRAGMA src.user_version").fetchone()
    if version > LATEST_VERSION:
        raise SchemaTooNew(
            f"{source} has schema version {version}, newer than this tune-firehose understands "
            f"({LATEST_VERSION}); upgrade tune-firehose before merging it"
        )
    return int(version)


def merge_source(
    db: sqlite3.Connection, source: Path, overlap: int, chunk: int, show_progress: bool | None
) -> SourceResult:
    key = str(source.resolve())
    result = SourceResult(key)
    db.execute("ATTACH DATABASE ? AS src", (uri(source.resolve(), "ro"),))
    try:
        version = _source_version(db, source)
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
    source_paths = [Path(s) for s in sources]
    for s in source_paths:
        if not s.is_file():
            raise DatabaseFault(f"source database {s} does not exist")
    if is_postgres_url(str(target)):
        for path in source_paths:
            check_local(path, allow_network_fs, mounts_path)
        return merge_into_postgres(str(target), source_paths, overlap, chunk, show_progress)
    target_path = Path(target)
    for s in source_paths:
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


# -- into PostgreSQL ----------------------------------------------------------------------------


def merge_into_postgres(
    url: str, sources: list[Path], overlap: int, chunk: int, show_progress: bool | None
) -> list[SourceResult]:
    from db.postgres.load import Loader  # psycopg is loaded only for a PostgreSQL target

    try:
        loader = Loader.open(url)
    except DatabaseUrlError as exc:
        # The store names DATABASE_URL; here the URL came as TARGET. Exit 2, as a worker's would.
        raise SettingsError(str(exc).replace("DATABASE_URL", "TARGET", 1)) from None
    results = []
    try:
        for source in sources:
            try:
                results.append(load_source(loader, source, overlap, chunk, show_progress))
            except sqlite3.DatabaseError as exc:
                raise DatabaseFault(f"cannot merge {source}: {exc}") from exc
    finally:
        loader.close()
    return results


def _reader(source: Path) -> sqlite3.Connection:
    """An empty connection with `source` ATTACHed read-only as `src`, so the SQLite target's
    helpers above read it unchanged."""
    db = sqlite3.connect(":memory:", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        db.execute("ATTACH DATABASE ? AS src", (uri(source.resolve(), "ro"),))
    except BaseException:
        db.close()
        raise
    return db


def _store_columns(source: Path) -> Callable[[str, set[str]], list[str]]:
    from db.postgres.load import Loader

    def columns_for(table: str, src_cols: set[str]) -> list[str]:
        columns = Loader.columns(table)
        missing = [c for c in columns if c not in src_cols]
        if missing:  # every schema version has every column of the tables it has
            raise DatabaseFault(f"{source} is not a tune-firehose database: {table} has no {', '.join(missing)}")
        return columns

    return columns_for


def load_source(loader: Loader, source: Path, overlap: int, chunk: int, show_progress: bool | None) -> SourceResult:
    key = str(source.resolve())
    result = SourceResult(key)
    db = _reader(source)
    try:
        indexed = _source_version(db, source) >= INDEXED_FROM_VERSION
        plan = _plan_with(db, overlap, _store_columns(source), lambda table: loader.high_water(key, table))
        total = sum(_count(db, t, mark, start, _after(newest)) for t, mark, _c, start, newest in plan)
        with progress(source.name, "rows", total, show=show_progress) as bar:
            for table, mark, columns, start, newest in plan:
                tally = result.tables.setdefault(table, TableResult())
                if newest is None:
                    continue
                for lo, hi in _windows(db, table, mark, start, chunk, indexed, end=_after(newest)):
                    for rows in _read(db, table, mark, columns, lo, hi, chunk):
                        tally.new += loader.load(table, rows)
                        tally.read += len(rows)
                        bar.advance(len(rows))
                loader.record(key, table, int(newest), tally.new)
    finally:
        db.close()
    return result


def _after(newest: Any) -> Any:
    """The end of a window that holds `newest`: rows written after the plan wait for the next run."""
    return None if newest is None else newest + 1


def _read(
    db: sqlite3.Connection, table: str, mark: str, columns: list[str], lo: Any, hi: Any, chunk: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The window's rows, `chunk` at a time (a second holding more rows than that is still bounded)."""
    where, params = _window(mark, lo, hi)
    cursor = db.execute(f"SELECT {', '.join(_q(c) for c in columns)} FROM src.{table}{where}", params)
    try:
        while rows := cursor.fetchmany(chunk):
            yield rows
    finally:
        cursor.close()


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
    shown = redact(target) if is_postgres_url(target) else target  # never a password on the terminal
    print(f"merged {len(results)} source(s) into {shown}: {sum(r.new for r in results):,} new rows")
    return 0
