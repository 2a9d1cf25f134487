"""The worker loop's write and hand-back paths, where `make mutation` found no test to say what they do
(docs/mutation.md).

- A stop requested while messages are written one at a time (after their transaction failed) makes
  the store's wait for a lock give up, as it does for a whole transaction.
- What the worker tells the operator on the paths that keep a message on the queue names the message,
  its receive count and the error, or the count of messages and the error: the text is asserted whole,
  since it is what someone reads to find the message that is stuck.
- A group cut short by a stop hands its unwritten messages back at once; when the queue refuses that,
  they stay in flight (not deleted) and the operator is told they return after their timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.generate import Generator
from chalicelib.errors import QueueUnavailable
from chalicelib.queues import Depth
from chalicelib.queues.local import LocalQueue
from db.batch import Incoming, Rows
from db.store import Store, WriteStats
from tests.faultkit import pack
from tests.kit import tune_message
from worker.decoders import decode_batch
from worker.loop import Limits, Worker

WORKER_LOG = "tune_firehose.worker"


def _fill(queue: LocalQueue, messages: int, per_message: int, seed: int) -> list[str]:
    packed = pack(Generator(seed).events(messages * per_message), per_message)
    sent: list[str] = []
    for start in range(0, len(packed), 10):
        result = queue.send_all([body for body, _ in packed[start : start + 10]])
        assert result.ok
        sent += result.message_ids
    return sent


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WORKER_LOG and r.levelno == level]


@pytest.mark.worker_errors_expected  # the refused message is logged as an error; the stop ends the run
def test_a_stop_during_one_at_a_time_writes_gives_up_waiting_and_names_what_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    sent = _fill(queue, messages=3, per_message=4, seed=1701)
    refused = sent[1]
    told_to_give_up: list[bool] = []
    worker: Worker

    class RefusesOne(Store):
        alone = False  # the transaction failed: each message is now written alone

        def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
            if self.alone:
                worker.request_stop()  # as a SIGTERM arriving while the store waits for a lock
                told_to_give_up.append(give_up())
            try:
                return super().write(batch, give_up)
            except ValueError:
                self.alone = True
                raise

        def _insert(self, batch: Rows) -> WriteStats:
            if any(envelope[0] == refused for envelope in batch.envelopes):
                raise ValueError("no room for this one")
            return super()._insert(batch)

    store = RefusesOne.open(tmp_path / "firehose.db")
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    try:
        worker = Worker(queue, store, Limits(wait_seconds=0, visibility_timeout=60), out=None)
        assert worker.run(until_empty=True) == 0
    finally:
        store.close()
    try:
        depth = queue.depth()
    finally:
        queue.close()
    assert told_to_give_up == [True, True, True], "a stop must end the store's wait on each lone write"
    assert (depth.visible, depth.in_flight) == (0, 1), "only the refused message stays, not deleted"
    assert _records(caplog, logging.ERROR) == [
        "a transaction of 3 messages failed to write; writing them one at a time",
        f"message {refused} cannot be written (receive count 1); it stays on the queue and moves to the "
        "dead-letter queue after maxReceiveCount receives: ValueError('no room for this one')",
    ]


class _CannotHandBack(LocalQueue):
    def change_visibility(self, receipts: list[str], timeout: int) -> list[str]:
        if timeout == 0:
            raise QueueUnavailable("queue file is locked")
        return super().change_visibility(receipts, timeout)


def test_a_refused_hand_back_leaves_the_unwritten_in_flight_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = _CannotHandBack(tmp_path / "queue.db")
    _fill(queue, messages=6, per_message=200, seed=1702)
    worker: Worker

    class StopsAfterFirst(Store):
        def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
            worker.request_stop()  # the first transaction is written; no other one starts
            return super().write(batch, give_up)

    store = StopsAfterFirst.open(tmp_path / "firehose.db")
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    try:
        # Before any message is decoded the worker guesses 100 events each, so it receives all six for
        # one transaction of 600; they hold 200 each, so the group is cut into transactions of three.
        worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_events=600), out=None)
        assert worker.run() == 0
        written = store.counts()["envelopes"]  # one row per message written
    finally:
        store.close()
    try:
        depth = queue.depth()
    finally:
        queue.close()
    assert written == 3
    assert (depth.visible, depth.in_flight) == (0, 3), "the unwritten stay in flight, never deleted"
    assert _records(caplog, logging.WARNING) == [
        "could not hand back 3 unwritten messages; they return after their timeout: queue file is locked"
    ]


class _DeletesBadly(LocalQueue):
    """The first delete is refused whole; the second deletes all but one receipt, and says which."""

    calls = 0

    def delete(self, receipts: list[str]) -> list[str]:
        self.calls += 1
        if self.calls == 1:
            raise QueueUnavailable("queue file is locked")
        if self.calls == 2:
            return [*super().delete(receipts[1:]), receipts[0]]
        return super().delete(receipts)


def test_deletes_refused_after_commit_are_told_and_leave_the_messages_in_flight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = _DeletesBadly(tmp_path / "queue.db")
    _fill(queue, messages=9, per_message=100, seed=1703)
    store = Store.open(tmp_path / "firehose.db")
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    try:
        # Three messages per transaction (by the first guess of 100 events each), one group each time.
        worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_events=300), out=None)
        worker.process(queue.receive(3, 0, 60))
        worker.process(queue.receive(3, 0, 60))
        worker.process(queue.receive(3, 0, 60))
        stored = store.counts()["envelopes"]
    finally:
        store.close()
    try:
        depth = queue.depth()
    finally:
        queue.close()
    assert stored == 9, "every message is written before any delete is tried"
    assert (depth.visible, depth.in_flight) == (0, 3 + 1), "what the queue refused to delete stays in flight"
    assert _records(caplog, logging.WARNING) == [
        "delete failed after commit (the redelivery will change nothing): queue file is locked",
        "1 deletes failed after commit; their redelivery will change nothing",
    ]


class _HeartbeatTold(LocalQueue):
    """Each heartbeat extension fails: first for one receipt, then whole; the second one is signalled."""

    extensions = 0
    second: threading.Event

    def change_visibility(self, receipts: list[str], timeout: int) -> list[str]:
        if timeout == 0:
            return super().change_visibility(receipts, timeout)
        self.extensions += 1
        if self.extensions == 1:
            return receipts[:1]
        self.second.set()
        raise QueueUnavailable("queue file is locked")


def test_a_failing_heartbeat_is_told_and_the_write_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    queue = _HeartbeatTold(tmp_path / "queue.db")
    queue.second = heard = threading.Event()
    _fill(queue, messages=2, per_message=5, seed=1704)

    class WaitsForTwoBeats(Store):
        def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
            assert heard.wait(60), "the heartbeat never extended twice"
            return super().write(batch, give_up)

    store = WaitsForTwoBeats.open(tmp_path / "firehose.db")
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    try:
        # The heartbeat beats every max(1 s, timeout / 3): each second here.
        worker = Worker(queue, store, Limits(wait_seconds=0, visibility_timeout=3), out=None)
        assert worker.run(until_empty=True) == 0
        stored = store.counts()["envelopes"]
    finally:
        store.close()
        queue.close()
    assert stored == 2
    assert _records(caplog, logging.WARNING)[:2] == [
        "could not extend visibility of 1 messages",
        "heartbeat: queue file is locked",
    ]


def _even_messages(count: int, per_message: int) -> list[str]:
    """Messages of the same decoded size: the same events but for ids of one length."""

    def event(m: int, i: int) -> dict[str, object]:
        return {"action": "click", "tune_event_id": f"id-{m:03d}-{i:04d}", "offer_id": 1}

    return [tune_message([event(m, i) for i in range(per_message)]) for m in range(count)]


class _Cuts(Store):
    """Records, for each transaction, how many messages and events it held."""

    cuts: list[tuple[int, int]]

    def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
        stats = super().write(batch, give_up)
        self.cuts.append((len(batch.envelopes), len(batch.events)))
        return stats


@pytest.mark.parametrize("limit", ["events", "bytes"])
def test_a_transaction_holds_all_that_fits_its_limits_exactly_and_no_more(tmp_path: Path, limit: str) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    bodies = _even_messages(9, 50)
    assert queue.send_all(bodies).ok
    one_message = decode_batch([("m", bodies[0], 1)], 1 << 20, 0).decoded_bytes
    if limit == "events":
        # The first group is sized by the first guess (100 events a message): three messages. The next
        # by what those held (50 each): six, exactly the 300 events a transaction may hold.
        limits, expected = Limits(wait_seconds=0, max_batch_events=300), [(3, 150), (6, 300)]
    else:
        # One group of nine; a transaction holds exactly four messages' decoded bytes.
        limits = Limits(wait_seconds=0, max_batch_bytes=4 * one_message)
        expected = [(4, 200), (4, 200), (1, 50)]
    store = _Cuts.open(tmp_path / "firehose.db")
    store.cuts = []
    try:
        assert Worker(queue, store, limits, out=None).run(until_empty=True) == 0
    finally:
        store.close()
        queue.close()
    assert store.cuts == expected


class _DepthUnknownOnce(LocalQueue):
    """The queue's depth cannot be read once: the worker must not take that for "empty"."""

    refusals = 0

    def depth(self) -> Depth:
        if self.refusals == 0:
            self.refusals += 1
            raise QueueUnavailable("queue file is locked")
        return super().depth()


def test_a_depth_that_cannot_be_read_does_not_end_the_drain_and_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = _DepthUnknownOnce(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(3, 5)).ok
    # Another worker holds one message (for 2 s): when this worker finds nothing to receive,
    # the queue is not empty yet, and only the depth could say so.
    assert len(queue.receive(1, 0, 2)) == 1
    store = Store.open(tmp_path / "firehose.db")
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    try:
        assert Worker(queue, store, Limits(wait_seconds=0), out=None).run(until_empty=True) == 0
        stored = store.counts()["envelopes"]
        depth = queue.depth()
    finally:
        store.close()
        queue.close()
    assert stored == 3 and (depth.visible, depth.in_flight) == (0, 0)
    assert _records(caplog, logging.WARNING) == [
        "could not read the queue depth, so not stopping yet: queue file is locked"
    ]
