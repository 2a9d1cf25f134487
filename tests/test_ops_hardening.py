"""Issue 12, finding 8, the operations part: each a regression test through the real command.

- `local:PATH` naming a file that is not SQLite: a setting error naming QUEUE_URL and the path
  (exit 2), not a traceback.
- `status` only reads: the local queue file is opened read-only, so it is neither switched to WAL
  nor given tables.
- One future-dated event: `status` lag and the lag gauge leave it out, so they keep growing while
  nothing new arrives and the stalled alert can fire.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from chalicelib.queues.local import LocalQueue
from commands.cli import main
from db.store import FUTURE_SKEW_SECONDS, Store, WriteStats
from tests.kit import drain, send, tune_message
from tests.ops_kit import read_queue
from worker.metrics import Metrics
from worker.rows import Batch

NOT_SQLITE = b"QUEUE " * 400  # longer than SQLite's 100-byte header, and not one

# -- local:PATH on a file that is not a queue ---------------------------------------------------------


def test_worker_names_queue_url_when_the_local_queue_is_not_sqlite(tmp_path: Path) -> None:
    junk = tmp_path / "queue.db"
    junk.write_bytes(NOT_SQLITE)
    proc = read_queue(
        "--until-empty", "--db", str(tmp_path / "firehose.db"), "--queue-url", f"local:{junk}", stderr=subprocess.PIPE
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "QUEUE_URL" in err and str(junk) in err and "not a database" in err, err
    assert "Traceback" not in err
    assert junk.read_bytes() == NOT_SQLITE


def test_commands_name_queue_url_when_the_local_queue_is_not_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "queue.db"
    junk.write_bytes(NOT_SQLITE)
    assert main(["redrive", "--queue-url", f"local:{junk}"]) == 2
    err = capsys.readouterr().err
    assert "QUEUE_URL" in err and str(junk) in err
    # status shows it in its report and still reads the database
    assert main(["status", "--db", str(tmp_path / "none.db"), "--queue-url", f"local:{junk}", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "QUEUE_URL" in report["queue"]["error"] and str(junk) in report["queue"]["error"]
    assert junk.read_bytes() == NOT_SQLITE


# -- status only reads ----------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_status_leaves_a_rollback_journal_queue_file_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A queue file in rollback-journal mode (a copy taken with sqlite3's .backup, say): status
    reads its depth and leaves every byte of it alone."""
    queue_path = tmp_path / "queue.db"
    with _journal_kept(queue_path) as queue:
        send(queue, ["waiting"])
    before = _digest(queue_path)
    assert main(["status", "--db", str(tmp_path / "none.db"), "--queue-url", f"local:{queue_path}", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["queue"]["visible"] == 1 and "error" not in report["queue"]
    assert _digest(queue_path) == before
    check = sqlite3.connect(queue_path)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    check.close()


def test_status_does_not_give_an_empty_file_the_queue_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_path = tmp_path / "queue.db"
    sqlite3.connect(queue_path).execute("CREATE TABLE other (x)").connection.close()
    assert main(["status", "--db", str(tmp_path / "none.db"), "--queue-url", f"local:{queue_path}", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "no such table" in report["queue"]["error"]
    check = sqlite3.connect(queue_path)
    assert [r[0] for r in check.execute("SELECT name FROM sqlite_master")] == ["other"]
    assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    check.close()


class _journal_kept:
    """A LocalQueue on `path` that puts the file back in rollback-journal mode when done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> LocalQueue:
        self.queue = LocalQueue(self.path)
        return self.queue

    def __exit__(self, *exc: object) -> None:
        self.queue.close()
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=DELETE")
        db.close()


# -- lag with a future-dated event ------------------------------------------------------------------


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _events(now: float) -> list[dict[str, object]]:
    """One event two hours old, one within the clock skew, one dated ten years ahead."""
    return [
        {"action": "click", "tune_event_id": "old", "datetime": _iso(now - 7200)},
        {"action": "click", "tune_event_id": "skewed", "datetime": _iso(now - 7200 + 60)},
        {"action": "click", "tune_event_id": "future", "datetime": _iso(now + 10 * 365 * 86400)},
    ]


def test_status_lag_leaves_out_future_dated_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    queue = LocalQueue(tmp_path / "queue.db")
    send(queue, [tune_message(_events(now))])
    drain(queue, tmp_path / "firehose.db")
    queue.close()
    common = ["--db", str(tmp_path / "firehose.db"), "--queue-url", f"local:{tmp_path / 'queue.db'}"]
    assert main(["status", *common, "--json"]) == 0
    database = json.loads(capsys.readouterr().out)["database"]
    assert database["rows"]["events"] == 3
    # The newest plausible event is about two hours old (measured after it was stored: at least that).
    assert 7200 - 60 <= database["lag_seconds"] < 7200 - 60 + 3600
    assert database["future_events"] == 1
    assert main(["status", *common]) == 0
    out = capsys.readouterr().out
    assert "(lag 1.9 h)" in out or "(lag 2.0 h)" in out
    assert "1 events dated more than" in out


def test_lag_gauge_leaves_out_future_dated_events(tmp_path: Path) -> None:
    now = time.time()
    batch = Batch()
    batch.add_message("m1", tune_message(_events(now)), 1)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.batch_written([], batch, WriteStats(), 0.01)
    lag = registry.get_sample_value("tune_firehose_ingest_lag_seconds")
    assert lag is not None and lag > 3600  # FirehoseStalled (lag > 3600) can fire
    assert registry.get_sample_value("tune_firehose_newest_event_timestamp_seconds") == int(now - 7200 + 60)

    # The same from the database at start (`seed`), and never negative for an event within the skew.
    store = Store.open(tmp_path / "firehose.db")
    store.write(batch)
    seeded = CollectorRegistry()
    Metrics(seeded).seed(store)
    assert seeded.get_sample_value("tune_firehose_newest_event_timestamp_seconds") == int(now - 7200 + 60)
    soon = Batch()
    soon.add_message("m2", tune_message([{"action": "click", "datetime": _iso(now + FUTURE_SKEW_SECONDS / 2)}]), 1)
    metrics.batch_written([], soon, WriteStats(), 0.01)
    assert registry.get_sample_value("tune_firehose_ingest_lag_seconds") == 0
    store.close()
