"""SIGKILL the worker 12 times while it lands a stream, on both queue backends and with both
decoders; every delete is checked at the moment it happens (tests/invariants.py).

Each round that is to be killed adds 150 messages of 100 events (TUNE's size) to the queue: three
of the worker's groups (it receives about one 5,000-event transaction's worth at a time), so a
worker that starts on it pipelines. It runs `read_queue.py --until-empty --decode D` and is killed
with SIGKILL. Before the kill a round waits until the pipeline runs: with the helper decoder
(`process`), until the worker holds two groups (messages received on either side of one of its
deletes and not yet deleted: one decoding in the helper while the one before is written or
deleted); with `inline`, until its first delete. Then the kill lands at a moment chosen by a
seeded RNG:

- random:        after a random delay (up to 50 ms);
- mid-write:     while the worker holds the database's write lock (a transaction half written);
- after-commit:  the instant a transaction's envelopes become visible (between COMMIT and delete).

How we know the overlapped pipeline was running at the kill: after it, the harness's log of
handouts and deletes (complete, since the process is dead) says whether the worker held two
groups. With the helper, most kills must find two groups in hand; with inline decoding, none may
(it cannot hold two, so this also shows that the measure tells them apart).

After three kills in a row one round runs to the end, so no message reaches the fifth receive that
would send it to the dead-letter queue. A last worker drains the queue; then every unique event is
stored once, every update once, and the queue and its dead-letter queue are empty.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.generate import Generator
from tests.faultkit import Expected, WorkerProcess, assert_exactly_once, pack, read_only, writer_busy
from tests.invariants import Harness, harness, leftovers

PER_MESSAGE = 100
ROUND_MESSAGES = 150  # added before each round that is to be killed: 15,000 events, three groups
KILLS = 12
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


def _await_pipeline(h: Harness, worker: WorkerProcess, mark: int, decoder: str) -> None:
    """Return once the worker's pipeline runs (or it has exited by itself)."""
    running: Callable[[], bool] = (
        (lambda: h.in_hand(mark).two_groups) if decoder == "process" else (lambda: h.checked(mark) > 0)
    )
    h.wait_for(lambda: running() or not worker.alive(), 120, "the pipeline to run", interval=0.005)


def _moment(mode: str, h: Harness, worker: WorkerProcess, db_path: Path, rng: random.Random) -> None:
    """Return at the moment to kill (or when the worker has exited by itself)."""
    if mode == "random":
        time.sleep(rng.uniform(0, 0.05))
    elif mode == "mid-write":
        h.wait_for(lambda: writer_busy(db_path) or not worker.alive(), 30, "a write", interval=0.002)
        time.sleep(rng.uniform(0, 0.01))
    else:
        before = _envelope_count(db_path)
        h.wait_for(lambda: _envelope_count(db_path) != before or not worker.alive(), 30, "a commit", 0.002)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["inline", "process"])
@pytest.mark.parametrize("backend", ["local", "sqs"])
def test_sigkill_worker_repeatedly_loses_nothing(
    backend: str, decoder: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    generator, expected = Generator(SEED), Expected()
    sent = 0
    db = tmp_path / "firehose.db"
    moto = request.getfixturevalue("moto_server") if backend == "sqs" else None
    rng = random.Random(SEED)
    kills: Counter[str] = Counter()
    two_groups_at_kill = most_in_hand = streak = rounds = clean_rounds = 0
    logs = tmp_path / "logs"

    # On SQS each kill, and each heartbeat late on a loaded machine with a 2 s visibility, hands a
    # message out again: the default 5 receives can go on kills alone. Its dead-letter queue must end empty.
    sqs = {"max_receive_count": 4 * KILLS} if backend == "sqs" else {}
    with harness(backend, tmp_path, db, moto_server=moto, **sqs) as h:

        def feed(messages: int) -> None:
            # Made round by round, so the whole stream (180,000 events) is never in memory at once.
            nonlocal sent
            events = generator.events(messages * PER_MESSAGE)
            expected.add(events)
            bodies = [body for body, _ in pack(events, PER_MESSAGE)]
            for start in range(0, len(bodies), 10):
                assert h.queue.send_all(bodies[start : start + 10]).ok
            sent += len(bodies)

        while kills.total() < KILLS:
            assert rounds < 3 * KILLS, f"only {kills.total()} kills landed in {rounds} rounds"
            if streak < 3:  # a round that will be killed starts with a deep queue
                feed(ROUND_MESSAGES)
            rounds += 1
            mark = h.mark()
            worker = WorkerProcess(
                db, h.url, logs, f"round{rounds}", visibility_timeout=VISIBILITY, env=h.env(), decode=decoder
            )
            try:
                if streak >= 3:
                    assert h.wait(worker, 180) == 0, worker.output()[-3000:]
                    streak, clean_rounds = 0, clean_rounds + 1
                    continue
                _await_pipeline(h, worker, mark, decoder)
                mode = rng.choices(["random", "mid-write", "after-commit"], weights=[4, 3, 3])[0]
                _moment(mode, h, worker, db, rng)
                if worker.signal(signal.SIGKILL):
                    worker.wait(30)
                    h.settle()
                    kills[mode] += 1
                    streak += 1
                    held = h.in_hand(mark)  # the log is complete: the worker is dead
                    two_groups_at_kill += held.two_groups
                    most_in_hand = max(most_in_hand, held.messages)
                else:
                    assert worker.proc.returncode == 0, worker.output()[-3000:]
                    streak = 0
            finally:
                worker.stop()
            h.check()

        final = WorkerProcess(db, h.url, logs, "final", visibility_timeout=VISIBILITY, env=h.env(), decode=decoder)
        assert h.wait(final, 300) == 0, final.output()[-3000:]

        got = assert_exactly_once(db, expected)
        assert leftovers(h) == (0, 0, 0), "the queue (or its dead-letter queue) is not empty"
        overlapped = h.overlapped_deletes()
        checked = h.checked()
    assert checked >= sent
    if decoder == "process":
        # What shows the overlap is the kills that found two groups in hand. A delete made after the
        # next group arrived is often seen too, but not always: when every kill lands first, none is.
        assert two_groups_at_kill >= KILLS * 3 // 4, f"{two_groups_at_kill} of {KILLS} kills hit two groups"
    else:  # one group at a time: the measure must never see two
        assert two_groups_at_kill == 0 and overlapped == 0, (two_groups_at_kill, overlapped)
    redelivered = sum(1 for count in got.envelopes.values() if (count or 1) > 1)
    print(
        f"\n[crash-worker:{backend}:{decoder}] kills={kills.total()} {dict(kills)} "
        f"kills_with_two_groups_in_hand={two_groups_at_kill} most_messages_in_hand_at_a_kill={most_in_hand} "
        f"groups_deleted_after_the_next_was_received={overlapped} deletes_checked={checked} "
        f"clean_rounds={clean_rounds} events_offered={expected.offered} unique_events={len(expected.events)} "
        f"updates={len(expected.adjustments)} messages={sent} redelivered_messages={redelivered} lost=0"
    )
