"""Issue 12, finding 7: whatever a file is called, the commands read and write that file.

`backup --db "host#1.db" bk.db` used to open `file:host#1.db?mode=ro` unescaped: SQLite read the
name as `host` (the rest a fragment), created an empty file `host` and backed that up. The
property: for any file name (`#`, `?`, `%`, spaces, unicode, a leading dash), relative or absolute,
`backup`, `status`, `merge` and `reprocess-rejects` read the database of that name, give the
answer that file holds, and create no file but their own outputs (and SQLite's -wal/-shm).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chalicelib.queues.local import LocalQueue
from commands.cli import main
from tests.kit import drain, send
from tests.ops_kit import bodies, examples, file_names, new_files


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    """A worker's database (events and rejects) and a local queue holding messages, as plain files."""
    directory = tmp_path_factory.mktemp("template")
    queue = LocalQueue(directory / "queue.db")
    send(queue, bodies(seed=71, events=120))
    drain(queue, directory / "firehose.db")
    send(queue, ["one", "two"])
    queue.close()
    db = sqlite3.connect(directory / "firehose.db")
    counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("events", "rejects")}
    db.close()
    counts["visible"] = 2
    assert counts["events"] > 50 and counts["rejects"] == 3
    return directory / "firehose.db", directory / "queue.db", counts


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def _count(path: Path, table: str) -> int:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@settings(
    max_examples=examples(40, fuzz=400),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=file_names(), absolute=st.booleans())
@example(name="host#1.db", absolute=False)
@example(name="a.db?mode=rwc", absolute=False)
@example(name="100%25.db", absolute=True)
@example(name="-x.db", absolute=False)
@example(name="file:x.db", absolute=False)
@example(name=" leading and trailing ", absolute=False)
@example(name="\x85", absolute=False)  # whitespace only, to str.strip()
@example(name="ünï cödé#?.db", absolute=True)
def test_commands_read_the_file_they_are_named(
    name: str,
    absolute: bool,
    template: tuple[Path, Path, dict[str, int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    source, queue_source, counts = template
    directory = tmp_path_factory.mktemp("hostile")
    shutil.copyfile(source, directory / name)
    shutil.copyfile(queue_source, directory / f"{name}.q")
    before = {p.name for p in directory.iterdir()}
    given_db = str(directory / name) if absolute else name
    given = (lambda n: str(directory / n)) if absolute else (lambda n: n)
    db_digest, queue_digest = _digest(directory / name), _digest(directory / f"{name}.q")

    with contextlib.chdir(directory):  # relative names are relative to here, and so would be a stray file
        code, out = _run("status", f"--db={given_db}", f"--queue-url=local:{given(name + '.q')}", "--json")
        assert code == 0, out
        report = json.loads(out)
        assert report["database"]["rows"]["events"] == counts["events"]
        assert report["queue"]["visible"] == counts["visible"]
        assert _digest(directory / name) == db_digest and _digest(directory / f"{name}.q") == queue_digest

        code, out = _run("backup", f"--db={given_db}", "--", given(name + ".bak"))
        assert code == 0, out
        assert _count(directory / f"{name}.bak", "events") == counts["events"]

        code, out = _run("merge", "--", given(name + ".merged"), given_db)
        assert code == 0, out
        assert _count(directory / f"{name}.merged", "events") == counts["events"]

        code, out = _run("reprocess-rejects", f"--db={given_db}", "--dry-run")
        assert code == 0, out
        assert f"retried {counts['rejects']}," in out

    assert new_files(directory, before, {name, f"{name}.q", f"{name}.bak", f"{name}.merged"}) == set()
