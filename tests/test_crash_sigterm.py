"""Issue 5, item 8: SIGTERM (and SIGINT) during heavy ingest.

The worker runs without --until-empty on a deep local queue. A signal lands at a chosen moment
(mid-write, just after a commit, at a random moment); the worker must exit 0 within a bounded
time, having committed *and deleted* the batch in hand: nothing stays in flight, and the set of
messages gone from the queue is exactly the set whose envelopes were committed. Idle in a
20-second SQS long poll, it must stop within a few seconds too.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from pathlib import Path

import boto3
import pytest

from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from tests.faultkit import (
    Expected,
    WorkerProcess,
    assert_exactly_once,
    child_env,
    local_queue_state,
    pack,
    read_only,
    wait_for,
    writer_busy,
)

SHUTDOWN_SECONDS = 30  # a batch in hand is at most ~20,000 events: far below this even on a slow box


def _remaining_ids(queue_path: Path) -> set[str]:
    with contextlib.closing(read_only(queue_path)) as db:
        return {r[0] for r in db.execute("SELECT message_id FROM messages")}


def _committed_ids(db_path: Path) -> set[str]:
    with contextlib.closing(read_only(db_path)) as db:
        return {r[0] for r in db.execute("SELECT message_id FROM envelopes")}


def _wait_for_moment(worker: WorkerProcess, moment: str, db_path: Path, rng: random.Random) -> None:
    # Signals before "worker started" (migrations, opening the queue) get the default action;
    # nothing has been received then. This test is about signals under load.
    wait_for(lambda: "worker started" in worker.output() or not worker.alive(), 60, "start-up")
    before = len(_committed_ids(db_path))
    if moment == "mid-write":
        wait_for(lambda: writer_busy(db_path) or not worker.alive(), 60, "a write", interval=0.002)
    elif moment == "after-commit":
        wait_for(lambda: len(_committed_ids(db_path)) > before or not worker.alive(), 60, "a commit", 0.005)
    else:
        time.sleep(rng.uniform(0.1, 1.5))


@pytest.mark.slow
def test_sigterm_under_load_commits_and_deletes_the_batch_in_hand(tmp_path: Path) -> None:
    events = Generator(81).events(100_000)
    expected = Expected.of(events)
    queue_path, db_path = tmp_path / "queue.db", tmp_path / "firehose.db"
    queue = LocalQueue(queue_path)
    sent: set[str] = set()
    for body, _ in pack(events, 100):
        result = queue.send_all([body])
        assert result.ok
        sent.update(result.message_ids)
    rng = random.Random(81)
    stops = [
        ("mid-write", signal.SIGTERM),
        ("after-commit", signal.SIGTERM),
        ("random", signal.SIGTERM),
        ("mid-write", signal.SIGINT),
    ]
    shutdown_times = []
    for round_, (moment, sig) in enumerate(stops):
        worker = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, f"run{round_}", until_empty=False)
        try:
            _wait_for_moment(worker, moment, db_path, rng)
            assert worker.alive(), worker.output()[-3000:]
            worker.signal(sig)
            started = time.monotonic()
            rc = worker.wait(SHUTDOWN_SECONDS)
            shutdown_times.append(time.monotonic() - started)
        finally:
            worker.stop()
        assert rc == 0, worker.output()[-3000:]
        state = local_queue_state(queue_path)
        assert state.in_flight == 0, f"{moment}: {state.in_flight} messages left in flight (received, not deleted)"
        gone = sent - _remaining_ids(queue_path)
        committed = _committed_ids(db_path)
        assert gone <= committed, f"{moment}: {len(gone - committed)} messages deleted without their commit"
        assert committed <= gone, f"{moment}: {len(committed - gone)} committed messages left on the queue"
        assert state.visible > 0, "the queue drained before the signal: the run proves nothing"

    final = WorkerProcess(db_path, f"local:{queue_path}", tmp_path, "final")
    assert final.finish(240) == 0, final.output()[-3000:]
    assert_exactly_once(db_path, expected)
    queue.close()
    print(f"\n[sigterm] signals={len(stops)} events={expected.offered} lost=0 (exit 0 each time, bounded)")


@pytest.mark.slow
def test_sigterm_during_an_sqs_long_poll_stops_promptly(tmp_path: Path, moto_server: str) -> None:
    client = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = client.create_queue(QueueName=f"idle-{time.time_ns()}")["QueueUrl"]
    worker = WorkerProcess(
        tmp_path / "firehose.db",
        url,
        tmp_path,
        until_empty=False,
        wait_seconds=20,
        env=child_env(AWS_ENDPOINT_URL_SQS=moto_server),
    )
    try:
        wait_for(lambda: "worker started" in worker.output(), 60, "start-up")
        time.sleep(1.5)  # inside the 20 s long poll now
        worker.signal(signal.SIGTERM)
        rc = worker.wait(10)
    finally:
        worker.stop()
    assert rc == 0, worker.output()[-3000:]
