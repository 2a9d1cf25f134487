"""`read_queue.py backup DEST`: a consistent copy of the database while workers keep writing.

SQLite's online backup API copies pages. A backup that steps while another connection writes
would normally restart; here the source connection holds one read transaction for the whole
copy, so in WAL mode it copies a single snapshot in steps (with a progress bar) while the
workers go on committing to the WAL. The copy is written next to DEST, checked, and only then
renamed over DEST, so DEST is never a half-written file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chalicelib.sqlite import connect, snapshot
from db.errors import DatabaseFault

from .progress import progress

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
