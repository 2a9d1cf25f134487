"""The worker loop: one transaction per batch, delete after COMMIT, duplicates and redelivery harmless."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chalicelib.queues.local import LocalQueue
from db.store import Store
from db.worker import Limits, Worker
from tests.kit import deliver, drain, one, rows, tune_message

ROOT = Path(__file__).resolve().parent.parent


def ev(i: int, **extra) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {"action": "click", "tune_event_id": f"id-{i}", "offer_id": i % 3, **extra}


def test_events_land_once_and_messages_are_deleted(local_queue: LocalQueue, tmp_path: Path) -> None:
    deliver(local_queue, [ev(i) for i in range(50)], [ev(i) for i in range(50, 100)])
    worker = drain(local_queue, tmp_path / "f.db")
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 100
    assert worker.totals.written.events == 100 and worker.totals.messages == 2
    depth = local_queue.depth()
    assert depth.visible == depth.in_flight == 0


def test_duplicates_inside_and_across_messages_are_ignored(local_queue: LocalQueue, tmp_path: Path) -> None:
    deliver(local_queue, [ev(1), ev(2), ev(1)], [ev(2), ev(3)])
    worker = drain(local_queue, tmp_path / "f.db")
    assert rows(tmp_path / "f.db", "SELECT tune_event_id FROM events ORDER BY 1") == [("id-1",), ("id-2",), ("id-3",)]
    assert worker.totals.written.duplicates == 2


def test_redelivery_of_a_committed_message_changes_nothing(local_queue: LocalQueue, tmp_path: Path) -> None:
    """A worker that committed and crashed before deleting: the message comes back, and nothing changes."""
    db = tmp_path / "f.db"
    deliver(local_queue, [ev(1), ev(2)])
    store = Store.open(db)
    worker = Worker(local_queue, store, Limits(wait_seconds=0, visibility_timeout=1), out=None)
    [message] = local_queue.receive(10, 0, 1)
    from db.rows import Batch

    batch = Batch()
    batch.add_message(message.message_id, message.body, 1)
    store.write(batch)  # committed, but the "crash" means no delete
    before = rows(db, "SELECT * FROM events ORDER BY 1")
    import time

    time.sleep(1.1)
    assert worker.run(until_empty=True) == 0
    assert rows(db, "SELECT * FROM events ORDER BY 1") == before
    assert worker.totals.written.duplicates == 2 and local_queue.depth().visible == 0
    store.close()


def test_undecodable_message_goes_to_rejects_and_is_deleted(local_queue: LocalQueue, tmp_path: Path) -> None:
    assert local_queue.send_all(["H4sI-this-is-not-gzip", tune_message([ev(1)])]).ok
    worker = drain(local_queue, tmp_path / "f.db")
    [(reason, raw, index)] = rows(tmp_path / "f.db", "SELECT reason, raw, event_index FROM rejects")
    assert reason.startswith("message undecodable:") and raw == "H4sI-this-is-not-gzip" and index is None
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 1
    assert worker.totals.written.rejects == 1
    assert local_queue.depth().visible == local_queue.depth().in_flight == 0


def test_graceful_stop_commits_and_deletes_the_batch_in_hand(local_queue: LocalQueue, tmp_path: Path) -> None:
    deliver(local_queue, *[[ev(i * 10 + j) for j in range(10)] for i in range(30)])

    class StopDuringWrite(Store):
        def write(self, batch, give_up=lambda: False):  # type: ignore[no-untyped-def]
            worker.request_stop()  # as a SIGTERM arriving mid-transaction would
            return super().write(batch, give_up)

    store = StopDuringWrite.open(tmp_path / "f.db")
    worker = Worker(local_queue, store, Limits(wait_seconds=0, max_batch_events=50), out=None)
    assert worker.run() == 0
    written = one(tmp_path / "f.db", "SELECT count(*) FROM events")
    assert 0 < written < 300  # it stopped after the one batch...
    depth = local_queue.depth()
    assert depth.in_flight == 0  # ...which it deleted, leaving nothing half-done
    assert depth.visible * 10 + written == 300


def test_worker_cli_until_empty_and_sigterm(tmp_path: Path) -> None:
    queue_path, db = tmp_path / "q.db", tmp_path / "f.db"
    queue = LocalQueue(queue_path)
    deliver(queue, [ev(i) for i in range(20)])
    cmd = [sys.executable, "read_queue.py", "--db", str(db), "--queue-url", f"local:{queue_path}"]
    done = subprocess.run([*cmd, "--until-empty"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "events 20" in done.stderr  # the progress/summary line
    assert one(db, "SELECT count(*) FROM events") == 20
    # A long-polling worker stops promptly on SIGTERM and exits 0.
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    import time

    time.sleep(1.5)
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def test_bad_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "read_queue.py", "--until-empty", "--queue-url", "ftp://nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "QUEUE_URL" in done.stderr
