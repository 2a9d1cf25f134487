"""Many hosts: three worker processes, three files, one queue; `merge` gives what one worker would."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chalicelib.queues.local import LocalQueue
from commands.cli import main
from commands.merge import merge
from db.store import Store
from tests.kit import drain, send
from tests.ops_kit import bodies, count, domain, read_queue
from worker.loop import Limits, Worker

DEADLINE_SECONDS = 60  # a bound on waiting, never an assertion about speed


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _scalar(path: Path, sql: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def _start_hosts(queue_path: Path, dbs: list[Path]) -> list[subprocess.Popen[str]]:
    args = ["--queue-url", f"local:{queue_path}", "--wait-seconds", "1", "--quiet"]
    procs = [read_queue(*args, "--db", str(db), stderr=subprocess.PIPE) for db in dbs]
    for proc in procs:  # each is polling the queue once it has said so
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "worker started" in line, line
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        _out, err = proc.communicate(timeout=DEADLINE_SECONDS)
        assert proc.returncode == 0, err


def test_three_hosts_merged_equal_one_worker(tmp_path: Path) -> None:
    # Small messages, and more events than one group of the worker holds (5,000: it receives by
    # events, not by message count), so that no worker can take them all at once.
    first = bodies(seed=11, events=12_000, per_message_bytes=2500)
    second = bodies(seed=12, events=600)
    # Re-sends across waves: TUNE may deliver the same envelope again, to any host.
    second += first[3:6]

    queue_path = tmp_path / "queue.db"
    hosts = [tmp_path / f"host{i}.db" for i in (1, 2, 3)]
    for db in hosts:
        Store.open(db).close()  # migrated before the race, so timing only decides who gets what
    procs = _start_hosts(queue_path, hosts)
    queue = LocalQueue(queue_path)
    try:
        send(queue, first)

        def drained() -> bool:
            depth = queue.depth()
            return depth.visible == 0 and depth.in_flight == 0

        _wait_for(drained, "the three workers to drain the queue")
    finally:
        _stop(procs)
        queue.close()
    per_host = [count(db, "envelopes") for db in hosts]
    assert sum(per_host) == len(first)
    assert sum(1 for n in per_host if n) >= 2, f"the work was not shared at all: {per_host}"

    # The same input through a single worker.
    single = tmp_path / "single.db"
    reference_queue = LocalQueue(tmp_path / "reference-queue.db")
    send(reference_queue, first)
    drain(reference_queue, single)

    analyst = tmp_path / "analyst.db"
    assert main(["merge", str(analyst), *map(str, hosts)]) == 0
    assert domain(analyst) == domain(single)

    # Again: nothing is new, so nothing is copied.
    results = merge(analyst, hosts)
    assert [r.new for r in results] == [0, 0, 0]
    assert domain(analyst) == domain(single)

    # More traffic lands on host 2 only; the next merge copies just that.
    queue = LocalQueue(queue_path)
    send(queue, second)
    drain(queue, hosts[1])
    queue.close()
    send(reference_queue, second)
    drain(reference_queue, single)
    reference_queue.close()

    before = {t: count(analyst, t) for t in ("events", "adjustments", "rejects")}
    results = merge(analyst, hosts)
    assert results[0].new == 0 and results[2].new == 0
    assert results[1].new > 0
    after = {t: count(analyst, t) for t in ("events", "adjustments", "rejects")}
    assert results[1].tables["events"].new == after["events"] - before["events"]
    assert domain(analyst) == domain(single)


def test_merge_reads_only_from_the_high_water_mark(tmp_path: Path) -> None:
    source, target = tmp_path / "host.db", tmp_path / "analyst.db"
    queue = LocalQueue(tmp_path / "q.db")
    send(queue, bodies(seed=3, events=300))
    drain(queue, source)
    queue.close()
    src = sqlite3.connect(source)
    # Spread the write times, as hours of real traffic would.
    src.execute("UPDATE events SET ingested_at = ingested_at - 1000 WHERE tune_event_id < '8'")
    src.commit()
    src.close()

    first = merge(target, [source], overlap=0)[0]
    assert first.read == first.new > 0
    first_old_events = _scalar(source, "SELECT count(*) FROM events WHERE tune_event_id < '8'")
    assert 0 < first_old_events < first.tables["events"].read
    recent_events = first.tables["events"].read - first_old_events
    db = sqlite3.connect(target)
    marks = dict(db.execute("SELECT table_name, high_water FROM merge_sources"))
    db.close()
    assert set(marks) == {"events", "adjustments", "envelopes", "rejects"}

    # A row written "long ago" (before the mark) is past what an incremental run reads...
    src = sqlite3.connect(source)
    src.execute(
        "INSERT INTO events (tune_event_id, key_source, action, raw_json, ingested_at) "
        "VALUES ('late-row', 'tune_event_id', 'click', '{}', ?)",
        (marks["events"] - 3600,),
    )
    src.commit()
    src.close()
    again = merge(target, [source], overlap=0)[0]
    assert again.new == 0
    # Only the rows at the mark itself are read again.
    assert again.tables["events"].read == recent_events
    # ...and the overlap exists for exactly that: a batch that committed late.
    late = merge(target, [source], overlap=7200)[0]
    assert late.tables["events"].new == 1


def test_merge_while_a_worker_writes(tmp_path: Path) -> None:
    source, target = tmp_path / "host.db", tmp_path / "analyst.db"
    queue = LocalQueue(tmp_path / "q.db")
    send(queue, bodies(seed=5, events=3000, per_message_bytes=4000))
    store = Store.open(source)
    worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_seconds=0.05), out=None)
    writer = threading.Thread(target=worker.run, kwargs={"until_empty": True})
    writer.start()
    try:
        runs = 0
        while writer.is_alive() or runs == 0:
            merge(target, [source], chunk=200, show_progress=False)
            runs += 1
    finally:
        writer.join()
        store.close()
        queue.close()
    merge(target, [source])
    assert domain(target) == domain(source)


def test_merge_refuses_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "analyst.db"
    assert main(["merge", str(target), str(tmp_path / "missing.db")]) == 3
    assert "does not exist" in capsys.readouterr().err
    Store.open(target).close()
    assert main(["merge", str(target), str(target)]) == 3
    assert "target itself" in capsys.readouterr().err
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 999")
    db.close()
    assert main(["merge", str(target), str(newer)]) == 3
    assert "newer than this tune-firehose" in capsys.readouterr().err
