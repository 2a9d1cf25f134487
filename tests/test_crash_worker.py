"""Issue 5, item 1: SIGKILL the worker at random moments, 20 times, while it lands 50,000 events.

Each round feeds the queue a slice of the stream, starts `read_queue.py --until-empty` and kills
it with SIGKILL at a moment chosen by a seeded RNG from three kinds:

- random:        after a random delay (start-up, receive, decode, write, delete or idle);
- mid-write:     while the worker holds the database's write lock (a batch half written);
- after-commit:  the instant a batch's envelopes become visible (between COMMIT and delete).

After 20 kills a last worker drains the queue. The database must then hold every unique event
once, the ledger every update once, and the queue (and its dead-letter queue) must be empty.
After three kills in a row one round runs to the end, so no message reaches the fifth receive
that would send it to the dead-letter queue (that path is tested in the poison suite).
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections import Counter
from pathlib import Path

import boto3
import pytest

from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from chalicelib.queues.sqs import SqsQueue
from tests.faultkit import (
    Expected,
    WorkerProcess,
    assert_exactly_once,
    child_env,
    local_queue_state,
    pack,
    read_only,
    writer_busy,
)
from tests.kit import make_sqs_queue, sqs_depth

EVENTS = 50_000
KILLS = 20
CHUNKS = 40
VISIBILITY = 2
SEED = 20_505


def _envelope_count(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        with contextlib.closing(read_only(db_path)) as db:
            return int(db.execute("SELECT count(*) FROM envelopes").fetchone()[0])
    except Exception:  # not migrated yet
        return 0


def _trigger(mode: str, worker: WorkerProcess, db_path: Path, rng: random.Random) -> None:
    """Return at the moment to kill (or when the worker has exited by itself)."""
    deadline = time.monotonic() + 30
    if mode == "random":
        time.sleep(rng.uniform(0.05, 1.5))
    elif mode == "mid-write":
        while worker.alive() and time.monotonic() < deadline and not writer_busy(db_path):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
    else:  # after-commit
        before = _envelope_count(db_path)
        while worker.alive() and time.monotonic() < deadline and _envelope_count(db_path) == before:
            time.sleep(0.003)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "sqs"])
def test_sigkill_worker_20_times_loses_nothing(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    events = Generator(SEED).events(EVENTS)
    expected = Expected.of(events)
    per_message = 100 if backend == "local" else 500
    bodies = [body for body, _ in pack(events, per_message)]
    step = -(-len(bodies) // CHUNKS)
    chunks = [bodies[i : i + step] for i in range(0, len(bodies), step)]
    db = tmp_path / "firehose.db"

    if backend == "local":
        queue_path = tmp_path / "queue.db"
        queue = LocalQueue(queue_path)
        url, env = f"local:{queue_path}", child_env()

        def leftovers() -> tuple[int, int, int]:
            state = local_queue_state(queue_path)
            return state.visible, state.in_flight, state.dead
    else:
        endpoint = request.getfixturevalue("moto_server")
        client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        url, dlq_url = make_sqs_queue(client, f"crash-{int(time.time() * 1000)}")
        queue = SqsQueue(url, client)  # type: ignore[assignment]
        env = child_env(AWS_ENDPOINT_URL_SQS=endpoint)

        def leftovers() -> tuple[int, int, int]:
            visible, in_flight = sqs_depth(client, url)
            return visible, in_flight, sum(sqs_depth(client, dlq_url))

    rng = random.Random(SEED)
    kills: Counter[str] = Counter()
    streak = rounds = clean_rounds = 0
    logs = tmp_path / "logs"
    while kills.total() < KILLS:
        assert rounds < 3 * KILLS, f"only {kills.total()} kills landed in {rounds} rounds"
        if chunks:
            assert queue.send_all(chunks.pop(0)).ok
        rounds += 1
        worker = WorkerProcess(db, url, logs, f"round{rounds}", visibility_timeout=VISIBILITY, env=env)
        try:
            if streak >= 3:
                rc = worker.wait(180)
                assert rc == 0, worker.output()[-3000:]
                streak, clean_rounds = 0, clean_rounds + 1
                continue
            mode = rng.choices(["random", "mid-write", "after-commit"], weights=[5, 3, 2])[0]
            _trigger(mode, worker, db, rng)
            if worker.signal(signal.SIGKILL):
                worker.wait(30)
                kills[mode] += 1
                streak += 1
            else:
                assert worker.proc.returncode == 0, worker.output()[-3000:]
                streak = 0
        finally:
            worker.stop()

    for rest in chunks:
        assert queue.send_all(rest).ok
    final = WorkerProcess(db, url, logs, "final", visibility_timeout=VISIBILITY, env=env)
    assert final.finish(300) == 0, final.output()[-3000:]

    got = assert_exactly_once(db, expected)
    assert leftovers() == (0, 0, 0), "the queue (or its dead-letter queue) is not empty"
    redelivered = sum(1 for count in got.envelopes.values() if (count or 1) > 1)
    queue.close()
    print(
        f"\n[crash-worker:{backend}] kills={kills.total()} {dict(kills)} clean_rounds={clean_rounds} "
        f"events_offered={expected.offered} unique_events={len(expected.events)} "
        f"updates={len(expected.adjustments)} messages={len(bodies)} redelivered_messages={redelivered} lost=0"
    )
