"""`read_queue.py backup DEST`: a consistent copy of the database while workers keep writing.

SQLite's online backup API copies pages. A backup that steps while another connection writes
would normally restart; here the source connection holds one read transaction for the whole
copy, so in WAL mode it copies a single snapshot in steps (with a progress bar) while the
workers go on committing to the WAL. The copy is written next to DEST, checked, and only then
renamed over DEST, so DEST is never a half-written file.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chalicelib.settings import Settings
from db.store import DatabaseFault, connect

NAME = "backup"
HELP = "copy the database consistently while workers run (SQLite online backup API)"
EPILOG = """examples:
  python read_queue.py backup backups/firehose-$(date +%F).db
  python read_queue.py backup --db /var/lib/firehose/firehose.db /mnt/backup/host1.db --force

The copy is a normal database file: open it with sqlite3, merge it, or put it back in place of
a damaged one (stop the workers first)."""

DEFAULT_STEP_PAGES = 4096


@dataclass
class BackupResult:
    dest: Path
    pages: int
    bytes: int


def add_arguments(p: argparse.ArgumentParser, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p.add_argument("dest", help="file to write the copy to")
    p.add_argument("--db", metavar="PATH", help="database to copy (default: DB_PATH)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.add_argument("--no-verify", action="store_true", help="skip the quick_check of the copy")


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
    from tqdm import tqdm

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
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # starts the read snapshot
        out = sqlite3.connect(partial, isolation_level=None)
        try:
            with tqdm(
                unit="pages", desc=f"backup {source.name}", disable=True if show_progress is False else None
            ) as bar:

                def progress(_status: int, remaining: int, total: int) -> None:
                    bar.total = total
                    bar.update(total - remaining - bar.n)
                    if on_step is not None:
                        on_step(remaining, total)

                src.backup(out, pages=step_pages, progress=progress)
            (pages,) = out.execute("PRAGMA page_count").fetchone()
            if verify:
                (check,) = out.execute("PRAGMA quick_check").fetchone()
                if check != "ok":
                    raise DatabaseFault(f"the copy failed its quick_check: {check}")
        finally:
            out.close()
        src.execute("COMMIT")
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    source = args.db or settings.db_path
    result = backup(source, args.dest, force=args.force, verify=not args.no_verify)
    print(f"backed up {source} to {result.dest}: {result.pages:,} pages, {result.bytes:,} bytes")
    return 0
