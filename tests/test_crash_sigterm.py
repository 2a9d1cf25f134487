"""Issue 5, item 8: SIGTERM (and SIGINT) during heavy ingest, on both queue backends and with both
decoders; every delete is checked at the moment it happens (tests/invariants.py).

The worker runs without --until-empty on a deep queue. A signal lands at a chosen moment
(mid-write, just after a commit, at a random moment), always after the worker has said it is ready
("worker started") and has received its first messages; the worker must exit 0 within a bounded
time, having committed *and deleted* what it had in hand (with the helper decoder, the batch being
written and the one decoding behind it): nothing stays in flight, and the set of messages deleted
is exactly the set whose envelopes were committed. Idle in a 20-second SQS long poll, it must stop
within a few seconds too: the signal is sent once the proxy in front of moto holds its
ReceiveMessage call open.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from pathlib import Path

import pytest

from bench.generate import Generator
from tests.faultkit import Expected, WorkerProcess, assert_exactly_once, pack, read_only, writer_busy
from tests.invariants import Harness, SqsHarness, harness, leftovers

SHUTDOWN_SECONDS = 30  # a batch in hand is at most ~20,000 events: far below this even on a slow box
# (events, events per message): moto's SQS slows with every message it holds, so its queue is shallower.
LOAD = {"local": (100_000, 100), "sqs": (40_000, 80)}


def _committed_ids(db_path: Path) -> set[str]:
    if not db_path.exists():
        return set()
    with contextlib.closing(read_only(db_path)) as db:
        return {r[0] for r in db.execute("SELECT message_id FROM envelopes")}


def _wait_for_moment(
    h: Harness, worker: WorkerProcess, moment: str, db_path: Path, rng: random.Random, mark: int
) -> None:
    # Signals before "worker started" (migrations, opening the queue) get the default action;
    # nothing has been received then. This test is about signals under load.
    h.wait_for(lambda: "worker started" in worker.output() or not worker.alive(), 60, "start-up")
    h.wait_for(lambda: bool(h.handouts(mark)) or not worker.alive(), 60, "the first receive")
    before = len(_committed_ids(db_path))
    if moment == "mid-write":
        h.wait_for(lambda: writer_busy(db_path) or not worker.alive(), 60, "a write", interval=0.002)
    elif moment == "after-commit":
        h.wait_for(lambda: len(_committed_ids(db_path)) > before or not worker.alive(), 60, "a commit", 0.005)
    else:  # a random moment of the run, not a wait for something
        time.sleep(rng.uniform(0.1, 1.5))


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["inline", "process"])
@pytest.mark.parametrize("backend", ["local", "sqs"])
def test_sigterm_under_load_commits_and_deletes_the_batch_in_hand(
    backend: str, decoder: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    count, per_message = LOAD[backend]
    events = Generator(81).events(count)
    expected = Expected.of(events)
    db_path = tmp_path / "firehose.db"
    moto = request.getfixturevalue("moto_server") if backend == "sqs" else None
    rng = random.Random(81)
    stops = [
        ("mid-write", signal.SIGTERM),
        ("after-commit", signal.SIGTERM),
        ("random", signal.SIGTERM),
        ("mid-write", signal.SIGINT),
    ]
    shutdown_times, held_at_signal = [], []
    with harness(backend, tmp_path, db_path, moto_server=moto) as h:
        bodies = [body for body, _ in pack(events, per_message)]
        for start in range(0, len(bodies), 10):
            assert h.queue.send_all(bodies[start : start + 10]).ok
        for round_, (moment, sig) in enumerate(stops):
            mark = h.mark()
            worker = WorkerProcess(
                db_path, h.url, tmp_path, f"run{round_}", until_empty=False, env=h.env(), decode=decoder
            )
            try:
                _wait_for_moment(h, worker, moment, db_path, rng, mark)
                assert worker.alive(), worker.output()[-3000:]
                held_at_signal.append(h.in_hand(mark).messages)
                worker.signal(sig)
                started = time.monotonic()
                rc = h.wait(worker, SHUTDOWN_SECONDS)
                shutdown_times.append(time.monotonic() - started)
            finally:
                worker.stop()
            assert rc == 0, worker.output()[-3000:]
            # A delete that fails after a commit means the message was already gone: deleted twice.
            assert "failed after commit" not in worker.output(), worker.output()[-3000:]
            visible, in_flight, dead = leftovers(h)
            assert in_flight == 0, f"{moment}: {in_flight} messages left in flight (received, not deleted)"
            gone = {d.message_id for d in h.deletes()}
            committed = _committed_ids(db_path)
            assert gone <= committed, f"{moment}: {len(gone - committed)} messages deleted without their commit"
            assert committed <= gone, f"{moment}: {len(committed - gone)} committed messages left on the queue"
            assert visible > 0 and dead == 0, "the queue drained before the signal: the run proves nothing"

        final = WorkerProcess(db_path, h.url, tmp_path, "final", env=h.env(), decode=decoder)
        assert h.wait(final, 240) == 0, final.output()[-3000:]
        assert_exactly_once(db_path, expected)
    print(
        f"\n[sigterm:{backend}:{decoder}] signals={len(stops)} events={expected.offered} "
        f"messages_in_hand_at_each_signal={held_at_signal} "
        f"longest_shutdown_s={max(shutdown_times):.1f} lost=0 (exit 0 each time, bounded)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["inline", "process"])
def test_sigterm_during_an_sqs_long_poll_stops_promptly(tmp_path: Path, moto_server: str, decoder: str) -> None:
    with harness("sqs", tmp_path, moto_server=moto_server) as h:
        assert isinstance(h, SqsHarness)
        worker = WorkerProcess(
            h.db_path, h.url, tmp_path, until_empty=False, wait_seconds=20, env=h.env(), decode=decoder
        )
        try:
            h.wait_for(lambda: "worker started" in worker.output() or not worker.alive(), 60, "start-up")
            # Inside the 20 s long poll: the proxy holds the worker's ReceiveMessage open.
            h.wait_for(lambda: h.proxy.in_flight("ReceiveMessage") > 0 or not worker.alive(), 60, "the long poll")
            assert worker.alive(), worker.output()[-3000:]
            worker.signal(signal.SIGTERM)
            rc = h.wait(worker, 10)
        finally:
            worker.stop()
    assert rc == 0, worker.output()[-3000:]
