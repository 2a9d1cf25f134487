"""`read_queue.py backup DEST`: a consistent copy of the database while workers keep writing.

SQLite's online backup API copies pages. A backup that steps while another connection writes
would normally restart; here the source connection holds one read transaction for the whole
copy, so in WAL mode it copies a single snapshot in steps (with a progress bar) while the
workers go on committing to the WAL. The copy is written next to DEST, checked, and only then
renamed over DEST, so DEST is never a half-written file.

PostgreSQL (DATABASE_URL, or --db postgresql://...) has its own tools: there `backup` says to use
pg_dump and exits 2, writing nothing.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chalicelib.settings import Settings
from chalicelib.sqlite import connect, snapshot
from db.errors import DatabaseFault
from db.postgres.url import is_postgres_url, redact

from .progress import progress

NAME = "backup"
HELP = "copy the database consistently while workers run (SQLite online backup API)"
EPILOG = """examples:
  python read_queue.py backup backups/firehose-$(date +%F).db
  python read_queue.py backup --db /var/lib/firehose/firehose.db /mnt/backup/host1.db --force

The copy is a normal database file: open it with sqlite3, merge it, or put it back in place of
a damaged one (stop the workers first). On PostgreSQL use pg_dump: backup exits 2 there."""

DEFAULT_STEP_PAGES = 4096
EXIT_USAGE = 2


@dataclass
class BackupResult:
    dest: Path
    pages: int
    bytes: int


def backup(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    force: bool = False,
    verify: bool = True,
    step_pages: int = DEFAULT_STEP_PAGES,
    show_progress: bool | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Copy `source` to `dest`; `on_step(remaining, total)` runs after each step of pages."""
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise DatabaseFault(f"no database at {source}")
    if dest.exists() and not force:
        raise DatabaseFault(f"{dest} exists; pass --force to replace it")
    if dest.exists() and dest.resolve() == source.resolve():
        raise DatabaseFault("the backup cannot overwrite its own source")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm"), Path(f"{partial}-journal")):
        leftover.unlink(missing_ok=True)

    try:
        src = connect(source, readonly=True)
    except sqlite3.Error as exc:
        raise DatabaseFault(f"cannot open {source}: {exc}") from exc
    try:
        with snapshot(src):
            out = connect(partial)
            try:
                with progress(f"backup {source.name}", "pages", show=show_progress) as bar:

                    def stepped(_status: int, remaining: int, total: int) -> None:
                        bar.reached(total - remaining, total)
                        if on_step is not None:
                            on_step(remaining, total)

                    src.backup(out, pages=step_pages, progress=stepped)
                (pages,) = out.execute("PRAGMA page_count").fetchone()
                if verify:
                    (check,) = out.execute("PRAGMA quick_check").fetchone()
                    if check != "ok":
                        raise DatabaseFault(f"the copy failed its quick_check: {check}")
            finally:
                out.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise DatabaseFault(f"backup of {source} failed: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()

    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return BackupResult(dest, int(pages), dest.stat().st_size)


def run(source: str, dest: str, *, force: bool = False, verify: bool = True) -> int:
    """Back up the database file `source` to `dest` and say how much was copied."""
    result = backup(source, dest, force=force, verify=verify)
    print(f"backed up {source} to {result.dest}: {result.pages:,} pages, {result.bytes:,} bytes")
    return 0


def run_selected(db: str | None, load: Callable[[], Settings], dest: str, *, force: bool, verify: bool) -> int:
    """`backup` as the command line calls it: `--db` (a path or a URL), else the settings' store
    (`load()`, read only when --db is not given, as before)."""
    url = db if is_postgres_url(db) else None
    if db is None:
        settings = load()
        url, db = settings.database_url, settings.db_path
    if url is not None:
        print(use_pg_dump(url), file=sys.stderr)
        return EXIT_USAGE
    assert db is not None
    return run(db, dest, force=force, verify=verify)


def use_pg_dump(url: str) -> str:
    """What to do instead on PostgreSQL, the URL shown without its password."""
    shown = redact(url)
    return (
        f"backup: the store is PostgreSQL ({shown}); backup copies SQLite files only, and nothing was "
        "written. Back PostgreSQL up with pg_dump, for example:\n"
        f"  pg_dump --format=custom --file=firehose-$(date +%F).dump {shlex.quote(shown)}\n"
        "(*** stands for the password: give it through ~/.pgpass or PGPASSWORD, not on the command line; "
        "pg_restore reads the dump back)"
    )
