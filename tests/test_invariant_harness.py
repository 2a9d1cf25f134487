"""The invariant harness itself (tests/invariants.py): it sees every delete, in the test process and
in a worker process, on both queue backends, and a delete before the commit fails the check at once,
naming the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chalicelib.queues.base import Queue
from chalicelib.queues.sqs import SqsQueue, make_client
from chalicelib.settings import load_settings
from db.store import Store
from tests.faultkit import WorkerProcess, tune_body
from tests.invariants import Harness, LocalHarness, SqsHarness, harness, message_keys
from worker.rows import Batch

BACKENDS = ["local", "sqs"]


def _events(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"action": "click", "tune_event_id": f"{prefix}-{i}", "offer_id": i} for i in range(n)]


def _worker_side_queue(h: Harness) -> Queue:
    """The queue as a worker sees it: for SQS, through the checking proxy."""
    if isinstance(h, SqsHarness):
        settings = load_settings(
            {"QUEUE_URL": h.url, "AWS_ENDPOINT_URL_SQS": h.proxy.url, "AWS_REGION": "us-east-1"}, dotenv_path=None
        )
        return SqsQueue(h.url, make_client(settings))
    return h.queue


@pytest.fixture(params=BACKENDS)
def watched(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    moto = request.getfixturevalue("moto_server") if request.param == "sqs" else None
    with harness(request.param, tmp_path, moto_server=moto) as h:
        yield h


def test_a_delete_before_the_commit_fails_the_check_naming_the_message(watched: Harness) -> None:
    h = watched
    assert h.queue.send_all([tune_body(_events("early", 3)), tune_body(_events("late", 2))]).ok
    queue = _worker_side_queue(h)
    received = queue.receive(10, 1, 60)
    while len(received) < 2:
        received += queue.receive(10, 1, 60)
    early = next(m for m in received if "early" in str(message_keys(m.body).events))
    late = next(m for m in received if m is not early)
    h.check()  # nothing deleted yet

    store = Store.open(h.db_path)
    batch = Batch()
    batch.add_message(late.message_id, late.body, 1)
    store.write(batch)
    store.close()
    assert queue.delete([late.receipt]) == []  # committed first: fine
    h.check()

    queue.delete([early.receipt])  # never written
    with pytest.raises(AssertionError, match=early.message_id) as failure:
        h.check()
    assert "envelope is not committed" in str(failure.value)
    assert [d.message_id for d in h.deletes()] == [late.message_id, early.message_id]


def test_an_envelope_without_its_events_is_not_committed(watched: Harness) -> None:
    """The check reads the events themselves, not only the envelope."""
    h = watched
    assert h.queue.send_all([tune_body(_events("half", 4))]).ok
    queue = _worker_side_queue(h)
    [message] = queue.receive(10, 1, 60)
    store = Store.open(h.db_path)
    batch = Batch()
    batch.add_message(message.message_id, message.body, 1)
    batch.events = batch.events[:2]  # a writer that dropped half the message's events
    store.write(batch)
    store.close()
    queue.delete([message.receipt])
    with pytest.raises(AssertionError, match=r"2 of 4 events .* not committed"):
        h.check()


def test_a_worker_process_is_watched_too(watched: Harness, tmp_path: Path) -> None:
    """The real `read_queue.py` process: each of its deletes is checked (for the local queue inside
    the worker, through the generated sitecustomize; without it the trigger's function is missing
    and no delete could succeed)."""
    h = watched
    bodies = [tune_body(_events(f"m{i}", 5)) for i in range(120)]  # more than one batch
    for start in range(0, len(bodies), 10):
        assert h.queue.send_all(bodies[start : start + 10]).ok
    worker = WorkerProcess(h.db_path, h.url, tmp_path, env=h.env(), decode="process")
    assert h.wait(worker, 120) == 0, worker.output()[-3000:]
    assert h.checked() == len(bodies)
    assert len({d.message_id for d in h.deletes()}) == len(bodies)
    assert len(h.handouts()) >= len(bodies)


def test_a_delete_before_commit_in_another_process_is_caught(tmp_path: Path) -> None:
    """A process that deletes what it never wrote (here a few lines of Python, not the worker):
    the trigger's record of it survives the process and names the message."""
    h = LocalHarness(tmp_path / "queue.db", tmp_path / "firehose.db", tmp_path)
    Store.open(h.db_path).close()
    assert h.queue.send_all([tune_body(_events("x", 2))]).ok
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from chalicelib.queues.local import LocalQueue;"
        "q = LocalQueue(sys.argv[2]); [m] = q.receive(10, 0, 60); q.delete([m.receipt]); print(m.message_id)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).resolve().parent.parent), str(h.queue_path)],
        env=h.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    message_id = done.stdout.strip()
    assert f"INVARIANT VIOLATED: message {message_id}" in done.stderr
    with pytest.raises(AssertionError, match=message_id):
        h.check()
    h.close()
