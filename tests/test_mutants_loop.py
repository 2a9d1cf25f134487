"""The worker loop's write and hand-back paths, where `make mutation` found no test to say what they do
(docs/mutation.md).

- A stop requested while messages are written one at a time (after their transaction failed) makes
  the store's wait for a lock give up, as it does for a whole transaction.
- What the worker tells the operator on the paths that keep a message on the queue names the message,
  its receive count and the error, or the count of messages and the error: the text is asserted whole,
  since it is what someone reads to find the message that is stuck.
- A group cut short by a stop hands its unwritten messages back at once; when the queue refuses that,
  they stay in flight (not deleted) and the operator is told they return after their timeout.
- The queue depth in the observers' samples is read at most once per its backend's interval (SQS bills
  each call), a failed read included; the last sample of a run reads it afresh.
- SIGINT and SIGTERM, once `install_signal_handlers` ran, stop the worker after the transaction in hand,
  break into an idle long poll or the backoff after a queue error, and raise nothing afterwards.
- A bug met writing the groups in hand after a queue error is told, and their messages come back.
- A group holds about one transaction's worth by what the last group held per message: its events
  (one at least), its decoded bytes, and how far its bodies inflated (never counted as shrinking).
"""

from __future__ import annotations

import io
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import ClassVar

import pytest

from bench.generate import Generator
from chalicelib.errors import QueueUnavailable
from chalicelib.queues import Depth, Message
from chalicelib.queues.local import LocalQueue
from db.batch import Incoming, Rows
from db.errors import DatabaseFault
from db.store import Store, WriteStats
from tests.faultkit import pack
from tests.kit import tune_message
from worker import decoders as worker_decoders
from worker import loop as worker_loop
from worker.decoders import InlineDecoder, decode_batch
from worker.loop import Heartbeat, Limits, Totals, Worker

WORKER_LOG = "tune_firehose.worker"


def _fill(queue: LocalQueue, messages: int, per_message: int, seed: int) -> list[str]:
    packed = pack(Generator(seed).events(messages * per_message), per_message)
    sent: list[str] = []
    for start in range(0, len(packed), 10):
        result = queue.send_all([body for body, _ in packed[start : start + 10]])
        assert result.ok
        sent += result.message_ids
    return sent


@contextmanager
def _store_beside(queue: LocalQueue, tmp_path: Path) -> Iterator[Store]:
    """A store in tmp_path for the block; it and the queue are closed however the block ends."""
    store = Store.open(tmp_path / "firehose.db")
    try:
        yield store
    finally:
        store.close()
        queue.close()


def _run_stoppable(queue: LocalQueue, tmp_path: Path, limits: Limits) -> tuple[int, Depth]:
    """A run with the worker's signal handlers in place: what it wrote, and the queue it left."""
    with _store_beside(queue, tmp_path) as store:
        worker = Worker(queue, store, limits, out=None)
        worker.install_signal_handlers()
        assert worker.run() == 0
        return store.counts()["envelopes"], queue.depth()


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
    failed = next(r for r in caplog.records if r.getMessage().startswith("a transaction of 3"))
    assert failed.exc_info is not None and repr(failed.exc_info[1]) == "ValueError('no room for this one')", (
        "the operator is shown what failed the transaction"
    )


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
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with _store_beside(queue, tmp_path) as store:
        # Three messages per transaction (by the first guess of 100 events each), one group each time.
        worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_events=300), out=None)
        worker.process(queue.receive(3, 0, 60))
        worker.process(queue.receive(3, 0, 60))
        worker.process(queue.receive(3, 0, 60))
        stored = store.counts()["envelopes"]
        depth = queue.depth()
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
    bodies = _even_messages(9, 50)
    one_message = decode_batch([("m", bodies[0], 1)], 1 << 20, 0).decoded_bytes
    if limit == "events":
        # The first group is sized by the first guess (100 events a message): three messages. The next
        # by what those held (50 each): six, exactly the 300 events a transaction may hold.
        limits, expected = Limits(wait_seconds=0, max_batch_events=300), [(3, 150), (6, 300)]
    else:
        # One group of nine; a transaction holds exactly four messages' decoded bytes.
        limits = Limits(wait_seconds=0, max_batch_bytes=4 * one_message)
        expected = [(4, 200), (4, 200), (1, 50)]
    assert _drain_recording(tmp_path, bodies, limits)[1] == expected


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
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with _store_beside(queue, tmp_path) as store:
        assert Worker(queue, store, Limits(wait_seconds=0), out=None).run(until_empty=True) == 0
        stored = store.counts()["envelopes"]
        depth = queue.depth()
    assert stored == 3 and (depth.visible, depth.in_flight) == (0, 0)
    assert _records(caplog, logging.WARNING) == [
        "could not read the queue depth, so not stopping yet: queue file is locked"
    ]


# -- progress samples: the queue depth the observers see -----------------------------------------


class _Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Samples:
    """An observer that keeps each progress sample's depth, and whether it was the last one."""

    def __init__(self) -> None:
        self.seen: list[tuple[Depth | None, bool]] = []
        self.messages: list[int] = []  # the run's totals so far, at each sample

    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None:
        pass

    def sampled(self, totals: Totals, depth: Depth | None, final: bool = False) -> None:
        self.seen.append((depth, final))
        self.messages.append(totals.messages)


class _DepthOnly:
    """A queue seen only through its depth: each read gives the next answer (an exception is raised)."""

    def __init__(self, *answers: Depth | Exception) -> None:
        self.answers, self.reads = list(answers), 0

    def depth(self) -> Depth:
        self.reads += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _sampling_worker(queue: object, clock: _Clock, samples: _Samples) -> Worker:
    return Worker(queue, None, Limits(wait_seconds=0), out=None, clock=clock, observers=[samples])  # type: ignore[arg-type]


# backend -> how long a depth read is reused: SQS bills each call and refreshes its counts about once a
# minute; the local file, and a queue this table does not know (or that names no backend), once a second.
# (The ids say no backend's name: the mutation run deselects tests whose names hold "sqs".)
_DEPTH_INTERVALS = [
    pytest.param("sqs", 15.0, id="billed-per-call"),
    pytest.param("local", 1.0, id="file"),
    pytest.param("memory", 1.0, id="unknown-backend"),
    pytest.param(None, 1.0, id="no-backend"),
]


@pytest.mark.parametrize(("backend", "interval"), _DEPTH_INTERVALS)
def test_the_queue_depth_is_read_once_per_its_backends_interval_and_afresh_for_the_last_sample(
    backend: str | None, interval: float
) -> None:
    first, second, last = Depth(5, 1), Depth(3, 2), Depth(0, 0)
    queue = _DepthOnly(first, second, last)
    if backend is not None:
        queue.backend = backend  # type: ignore[attr-defined]
    clock, samples = _Clock(), _Samples()
    worker = _sampling_worker(queue, clock, samples)
    start = clock.now
    # A sample at most once a second (the progress line's own pace), each before the interval is out...
    for step in range(int(interval)):
        clock.now = start + step
        worker._progress()
        clock.now += 0.5
        worker._progress()  # too soon: no sample
    reused = int(interval) - 1
    assert queue.reads == 1 and samples.seen == [(first, False)] * (1 + reused)
    # ...then one exactly when it is out, and the last one at that same instant.
    clock.now = start + interval
    worker._progress()
    worker._progress(final=True)
    assert queue.reads == 3
    assert samples.seen[1 + reused :] == [(second, False), (last, True)]


def test_a_depth_that_cannot_be_read_is_sampled_as_unknown_told_and_not_asked_again_too_soon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = _DepthOnly(QueueUnavailable("throttled"), Depth(4, 0))
    queue.backend = "sqs"  # type: ignore[attr-defined]
    clock, samples = _Clock(), _Samples()
    worker = _sampling_worker(queue, clock, samples)
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    start = clock.now
    for at in (0.0, 5.0, 15.0):
        clock.now = start + at
        worker._progress()
    assert [depth for depth, _ in samples.seen] == [None, None, Depth(4, 0)]
    assert queue.reads == 2, "a failed read waits out the interval too: SQS is not hammered"
    assert _records(caplog, logging.WARNING) == ["could not read the queue depth: throttled"]


def test_the_last_sample_of_a_run_shows_the_queue_as_the_run_left_it(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(4, 3)).ok
    samples = _Samples()
    with _store_beside(queue, tmp_path) as store:
        # One message a group (by the first guess of 100 events each): the first sample, after the first
        # group, sees three left; the run ends well within the second that depth read is good for.
        worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_events=100), out=None, observers=[samples])
        assert worker.run(until_empty=True) == 0
    depths = [(d.visible, d.in_flight, final) for d, final in samples.seen if d is not None]
    assert len(depths) == len(samples.seen)
    assert depths[0] == (3, 0, False) and depths[-1] == (0, 0, True)
    assert samples.messages[0] == 1 and samples.messages[-1] == 4, "each sample carries the run's totals"


# -- signals and the backoff wait ---------------------------------------------------------------

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.fixture()
def stop_signals() -> Iterator[None]:
    """Until the worker installs its own, a stop signal fails the test (rather than ending pytest);
    the original handlers come back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def unhandled(signum: int, _frame: FrameType | None) -> None:
        raise AssertionError(f"signal {signum} reached no worker handler")

    for signum in STOP_SIGNALS:
        signal.signal(signum, unhandled)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


class _SignalledDuringWrite(Store):
    signum: int
    raised = False

    def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
        if not self.raised:
            self.raised = True
            signal.raise_signal(self.signum)  # as an operator's kill arriving while the store writes
        return super().write(batch, give_up)


@pytest.mark.usefixtures("stop_signals")
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_a_stop_signal_during_a_write_lets_that_transaction_finish_and_hands_back_the_rest(
    tmp_path: Path, signum: int
) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    _fill(queue, messages=6, per_message=200, seed=1705)
    store = _SignalledDuringWrite.open(tmp_path / "firehose.db")
    store.signum = signum
    try:
        # One group of six (by the first guess of 100 events each), cut into transactions of three.
        worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_events=600), out=None)
        worker.install_signal_handlers()
        assert worker.run() == 0
        written = store.counts()["envelopes"]
    finally:
        store.close()
    try:
        depth = queue.depth()
    finally:
        queue.close()
    assert written == 3, "the transaction being written commits; no other one starts"
    assert (depth.visible, depth.in_flight) == (3, 0), "its messages are deleted; the rest handed back at once"


class _ReceiveSignalled(LocalQueue):
    """A stop signal arrives during each long poll; `polled_on` counts the polls that went on after it."""

    signum: int
    polled_on = 0

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        if wait_seconds > 0:
            signal.raise_signal(self.signum)
            self.polled_on += 1
        return super().receive(max_messages, wait_seconds, visibility_timeout)


@pytest.mark.usefixtures("stop_signals")
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_a_stop_signal_during_an_idle_long_poll_ends_it_at_once(tmp_path: Path, signum: int) -> None:
    queue = _ReceiveSignalled(tmp_path / "queue.db")
    queue.signum = signum
    assert queue.send_all(_even_messages(2, 3)).ok
    written, depth = _run_stoppable(queue, tmp_path, Limits(wait_seconds=20))
    assert queue.polled_on == 0, "the poll is broken into, not waited out"
    assert written == 0 and (depth.visible, depth.in_flight) == (2, 0), "nothing was received"


class _UnreachableOnce(LocalQueue):
    refused = False

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        if not self.refused:
            self.refused = True
            raise QueueUnavailable("connection refused")
        return super().receive(max_messages, wait_seconds, visibility_timeout)


class _SleepSignalled:
    """`time` as worker.loop sees it, but a sleep during which a stop signal arrives."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.asked: list[float] = []
        self.slept_out: list[float] = []  # sleeps the signal did not cut short
        self.time, self.perf_counter, self.monotonic = time.time, time.perf_counter, time.monotonic

    def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        signal.raise_signal(self.signum)
        self.slept_out.append(seconds)


@pytest.mark.usefixtures("stop_signals")
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_a_stop_signal_during_the_backoff_after_a_queue_error_ends_the_wait_at_once(
    tmp_path: Path, signum: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = _UnreachableOnce(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(2, 3)).ok
    clock = _SleepSignalled(signum)
    monkeypatch.setattr(worker_loop, "time", clock)
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with _store_beside(queue, tmp_path) as store:
        worker = Worker(queue, store, Limits(wait_seconds=0), out=None)
        worker.install_signal_handlers()
        assert worker.run() == 0
        # Once the wait is over, a further signal only asks to stop again: it raises nothing here.
        signal.raise_signal(signum)
        written = store.counts()["envelopes"]
        depth = queue.depth()
    assert clock.asked == [1.0] and clock.slept_out == [], "the first backoff is a second, cut short by the signal"
    assert written == 0 and (depth.visible, depth.in_flight) == (2, 0)
    assert _records(caplog, logging.ERROR) == [
        "queue unreachable, retrying in 1 s (nothing is deleted): connection refused"
    ]


# -- a bug met while writing the groups in hand after a queue error -----------------------------


class _OverlappingInline(InlineDecoder):
    """Decodes inline, but holds a group back as a helper process would (while the next is received)."""

    overlaps = True


class _BrokenAfterFirstGroup(LocalQueue):
    """Unreachable once empty; its delete has a bug (not a `QueueUnavailable`)."""

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        messages = super().receive(max_messages, wait_seconds, visibility_timeout)
        if not messages:
            raise QueueUnavailable("connection reset")
        return messages

    def delete(self, receipts: list[str]) -> list[str]:
        raise RuntimeError("bug in delete")


class _SleepStops:
    """`time` as worker.loop sees it, but the backoff's sleep stops the worker (as SIGTERM would)."""

    worker: Worker

    def __init__(self) -> None:
        self.time, self.perf_counter, self.monotonic = time.time, time.perf_counter, time.monotonic

    def sleep(self, seconds: float) -> None:
        self.worker.request_stop()


@pytest.mark.worker_errors_expected  # the bug is logged as an error, by design
def test_a_bug_met_writing_the_group_in_hand_after_a_queue_error_is_told_and_leaves_it_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = _BrokenAfterFirstGroup(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(3, 5)).ok
    clock = _SleepStops()
    monkeypatch.setattr(worker_loop, "time", clock)
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with _store_beside(queue, tmp_path) as store:
        # The group of three (one transaction's worth by the first guess) waits in hand while the next
        # receive fails; the worker then writes it, and deleting it meets the bug.
        clock.worker = worker = Worker(
            queue, store, Limits(wait_seconds=0, max_batch_events=300), out=None, decoder=_OverlappingInline()
        )
        assert worker.run() == 0
        written = store.counts()["envelopes"]
        depth = queue.depth()
    assert written == 3 and (depth.visible, depth.in_flight) == (0, 3), "written, not deleted: they come back"
    assert _records(caplog, logging.ERROR) == [
        "queue unreachable, retrying in 1 s (nothing is deleted): connection reset",
        "unexpected error; the messages in hand come back after their visibility timeout",
    ]


# -- how many messages a group holds: one transaction's worth by the last group -----------------


class _Asks(LocalQueue):
    """Records how many messages each receive asks for."""

    asked: list[int]

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        self.asked.append(max_messages)
        return super().receive(max_messages, wait_seconds, visibility_timeout)


def _drain_recording(tmp_path: Path, bodies: list[str], limits: Limits) -> tuple[list[int], list[tuple[int, int]]]:
    queue = _Asks(tmp_path / "queue.db")
    queue.asked = []
    assert queue.send_all(bodies).ok
    store = _Cuts.open(tmp_path / "firehose.db")
    store.cuts = []
    try:
        assert Worker(queue, store, limits, out=None).run(until_empty=True) == 0
    finally:
        store.close()
        queue.close()
    return queue.asked, store.cuts


ONE_EVENT = _even_messages(1, 1)[0]
ONE_EVENT_DECODED = decode_batch([("m", ONE_EVENT, 1)], 1 << 20, 0).decoded_bytes


def test_after_a_group_of_one_event_messages_a_group_holds_a_transactions_worth_of_events(tmp_path: Path) -> None:
    # The first group is sized by the first guess (100 events a message): one message, since eight
    # events fill a transaction. Afterwards by what it held: eight one-event messages a group.
    asked, cuts = _drain_recording(tmp_path, _even_messages(17, 1), Limits(wait_seconds=0, max_batch_events=8))
    assert cuts == [(1, 1), (8, 8), (8, 8)]
    assert asked == [1, 8, 8, 8]


def test_after_a_group_a_group_holds_a_transactions_worth_of_decoded_bytes(tmp_path: Path) -> None:
    # Before anything is decoded only events count: ten messages. Afterwards a transaction holds
    # three of these messages' decoded bytes, so each group asks for three.
    limits = Limits(wait_seconds=0, max_batch_events=1000, max_batch_bytes=3 * ONE_EVENT_DECODED)
    asked, cuts = _drain_recording(tmp_path, _even_messages(16, 1), limits)
    assert cuts == [(3, 3), (3, 3), (3, 3), (1, 1), (3, 3), (3, 3)]
    assert asked == [10, 3, 3, 3]


def test_bodies_that_shrink_when_decoded_are_counted_as_their_size_while_collecting(tmp_path: Path) -> None:
    # A one-event message decodes smaller than its body: its inflation counts as 1, never less.
    assert ONE_EVENT_DECODED < len(ONE_EVENT)
    # A transaction holds 15 bodies' worth of bytes: 28 of these messages decoded. The first group is
    # ten (the first guess, 100 events a message); the second takes ten more while the twenty bodies
    # in hand stay under 15 bodies' worth, and stops there.
    limits = Limits(wait_seconds=0, max_batch_events=1000, max_batch_bytes=15 * len(ONE_EVENT))
    assert limits.max_batch_bytes // ONE_EVENT_DECODED >= 20
    _asked, cuts = _drain_recording(tmp_path, _even_messages(30, 1), limits)
    assert cuts == [(10, 10), (20, 20)]


# -- the heartbeat's pace -----------------------------------------------------------------------


class _PacedEvent(threading.Event):
    """The heartbeat's stop event: keeps each wait's interval, and waits only a moment."""

    intervals: ClassVar[list[float | None]] = []

    def wait(self, timeout: float | None = None) -> bool:
        _PacedEvent.intervals.append(timeout)
        return super().wait(0.001)


class _Extensions:
    """A queue seen only through the heartbeat's extensions; `wait_for(n)` until n have been made."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.threads: list[tuple[str, bool]] = []
        self._made = threading.Condition()

    def change_visibility(self, receipts: list[str], timeout: int) -> list[str]:
        current = threading.current_thread()
        with self._made:
            self.calls.append((list(receipts), timeout))
            self.threads.append((current.name, current.daemon))
            self._made.notify_all()
        return []

    def wait_for(self, count: int) -> None:
        with self._made:
            assert self._made.wait_for(lambda: len(self.calls) >= count, 60), "the heartbeat stopped extending"


@pytest.mark.parametrize(("timeout", "interval"), [(60, 20.0), (3, 1.0), (1, 1.0)])
def test_the_heartbeat_extends_the_messages_in_hand_every_third_of_their_timeout_and_no_more_than_each_second(
    monkeypatch: pytest.MonkeyPatch, timeout: int, interval: float
) -> None:
    _PacedEvent.intervals = []
    monkeypatch.setattr(
        worker_loop, "threading", SimpleNamespace(Event=_PacedEvent, Lock=threading.Lock, Thread=threading.Thread)
    )
    queue = _Extensions()
    heartbeat = Heartbeat(queue, ["a", "b", "c"], timeout).start()  # type: ignore[arg-type]
    try:
        queue.wait_for(2)
        heartbeat.forget(["b"])  # written: an extension under way when this returns has ended
        forgotten_at = len(queue.calls)
        queue.wait_for(forgotten_at + 2)
    finally:
        heartbeat.stop()
    stopped_at = len(queue.calls)
    assert set(_PacedEvent.intervals) == {interval}
    assert queue.calls[:forgotten_at] == [(["a", "b", "c"], timeout)] * forgotten_at
    assert queue.calls[forgotten_at:] == [(["a", "c"], timeout)] * (stopped_at - forgotten_at)
    # Named in a thread dump; a daemon, so one never stopped (a bug) cannot keep the process alive.
    assert set(queue.threads) == {("visibility-heartbeat", True)}


# -- the backoff after queue errors, and what is left running at the end --------------------------


class _UnreachableFor(LocalQueue):
    """Refuses the receives numbered in `refusals` (counting from 1), then answers as usual."""

    refusals: frozenset[int]
    receives = 0

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        self.receives += 1
        if self.receives in self.refusals:
            raise QueueUnavailable("connection refused")
        return super().receive(max_messages, wait_seconds, visibility_timeout)


class _SleepRecorded:
    """`time` as worker.loop sees it, but a sleep that only records how long it was asked for."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.time, self.perf_counter, self.monotonic = time.time, time.perf_counter, time.monotonic

    def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)


@pytest.mark.worker_errors_expected  # each refused receive is logged as an error, by design
def test_the_wait_after_queue_errors_doubles_up_to_a_minute_and_starts_over_after_a_good_receive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = _UnreachableFor(tmp_path / "queue.db")
    # Eight refusals in a row, one good receive (the message, a whole group), then two more refusals.
    queue.refusals = frozenset([*range(1, 9), 10, 11])
    assert queue.send_all(_even_messages(1, 3)).ok
    clock = _SleepRecorded()
    monkeypatch.setattr(worker_loop, "time", clock)
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with _store_beside(queue, tmp_path) as store:
        worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_events=3), out=None)
        assert worker.run(until_empty=True) == 0
        written = store.counts()["envelopes"]
    assert written == 1
    assert clock.asked == [1, 2, 4, 8, 16, 32, 60, 60, 1, 2]
    assert _records(caplog, logging.ERROR) == [
        f"queue unreachable, retrying in {seconds:.0f} s (nothing is deleted): connection refused"
        for seconds in clock.asked
    ]


def _heartbeats() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "visibility-heartbeat" and t.is_alive()}


class _FaultyDisk(Store):
    def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
        raise DatabaseFault("database or disk is full: firehose.db")


@pytest.mark.worker_errors_expected  # the fault is logged as an error, by design
def test_a_database_fault_stops_the_worker_deleting_nothing_and_tells_the_operator_what_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(3, 100)).ok
    store = _FaultyDisk.open(tmp_path / "firehose.db")
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    before = _heartbeats()
    try:
        # One message a group (100 events fill a transaction); with a decoder that overlaps, the second
        # group is in hand, decoded and not written, when the first one's write meets the fault.
        worker = Worker(
            queue, store, Limits(wait_seconds=0, max_batch_events=100), out=None, decoder=_OverlappingInline()
        )
        assert worker.run(until_empty=True) == worker_loop.EXIT_DB_FAULT
        left_running = _heartbeats() - before
        depth = queue.depth()
    finally:
        store.close()
        queue.close()
    assert left_running == set(), "no message in hand is kept invisible after the worker stopped"
    assert (depth.visible, depth.in_flight) == (1, 2), "the two received are not deleted: they come back"
    assert _records(caplog, logging.ERROR) == [
        "database or disk is full: firehose.db. Stopping without deleting the messages in hand; they will be "
        "redelivered once the database is fixed."
    ]


class _FailsFirstTelling:
    """An observer with a bug: it raises on the first transaction it is told of."""

    told = 0

    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None:
        self.told += 1
        if self.told == 1:
            raise RuntimeError("bug in an observer")

    def sampled(self, totals: Totals, depth: Depth | None, final: bool = False) -> None:
        pass


@pytest.mark.worker_errors_expected  # the bug is logged as an error, by design
def test_a_bug_met_mid_group_counts_the_unwritten_messages_and_leaves_them_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    _fill(queue, messages=6, per_message=200, seed=1706)
    clock = _SleepStops()
    monkeypatch.setattr(worker_loop, "time", clock)
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with _store_beside(queue, tmp_path) as store:
        # One group of six (by the first guess of 100 events each), cut into transactions of three: the
        # first is written and deleted, then the bug; the backoff's sleep stops the worker.
        clock.worker = worker = Worker(
            queue, store, Limits(wait_seconds=0, max_batch_events=600), out=None, observers=[_FailsFirstTelling()]
        )
        assert worker.run() == 0
        written = store.counts()["envelopes"]
        depth = queue.depth()
    assert written == 3 and (depth.visible, depth.in_flight) == (0, 3), "the rest come back after their timeout"
    assert _records(caplog, logging.ERROR) == [
        "unexpected error; the 3 messages in hand come back after their visibility timeout"
    ]


# -- with a decoder that overlaps: one group waits while the next is received ---------------------


class _Journal(LocalQueue):
    """Records each receive's long-poll wait, and (through `_Written`) each write, in order."""

    journal: list[tuple[str, float]]

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        self.journal.append(("receive", wait_seconds))
        return super().receive(max_messages, 0, visibility_timeout)  # the journal says how long; none here


class _Written(Store):
    journal: list[tuple[str, float]]

    def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
        stats = super().write(batch, give_up)
        self.journal.append(("write", len(batch.envelopes)))
        return stats


@pytest.mark.parametrize("overlaps", [True, False], ids=["overlapping", "inline"])
def test_a_group_waits_in_hand_only_while_the_next_is_received_and_that_receive_does_not_long_poll(
    tmp_path: Path, overlaps: bool
) -> None:
    queue = _Journal(tmp_path / "queue.db")
    journal: list[tuple[str, float]] = []
    queue.journal = journal
    assert queue.send_all(_even_messages(3, 100)).ok
    store = _Written.open(tmp_path / "firehose.db")
    assert isinstance(store, _Written)
    store.journal = journal
    decoder = _OverlappingInline() if overlaps else InlineDecoder()
    try:
        # One message a group (100 events fill a transaction). Draining, a long poll waits at most a second.
        worker = Worker(queue, store, Limits(wait_seconds=20, max_batch_events=100), out=None, decoder=decoder)
        assert worker.run(until_empty=True) == 0
    finally:
        store.close()
        queue.close()
    if overlaps:
        assert journal == [
            ("receive", 1.0),
            ("receive", 0),
            ("write", 1),
            ("receive", 0),
            ("write", 1),
            ("receive", 0),
            ("write", 1),
        ]
    else:
        assert journal == [("receive", 1.0), ("write", 1)] * 3 + [("receive", 1.0)]


class _StopsAfterEmptyPolls(LocalQueue):
    """Stops the worker once it has found the queue empty `patience` times."""

    worker: Worker
    patience = 3
    empty_polls = 0

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        messages = super().receive(max_messages, wait_seconds, visibility_timeout)
        if not messages:
            self.empty_polls += 1
            if self.empty_polls == self.patience:
                self.worker.request_stop()
        return messages


def test_by_default_the_worker_keeps_polling_an_empty_queue_until_stopped(tmp_path: Path) -> None:
    queue = _StopsAfterEmptyPolls(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(2, 3)).ok
    with _store_beside(queue, tmp_path) as store:
        queue.worker = worker = Worker(queue, store, Limits(wait_seconds=0), out=None)
        assert worker.run() == 0
        written = store.counts()["envelopes"]
    assert written == 2 and queue.empty_polls == queue.patience


# -- how a group is gathered: its receives, its bytes, its time ------------------------------------


class _Receives(LocalQueue):
    """Records each receive as (how many asked, long-poll wait, visibility timeout)."""

    receives: list[tuple[int, float, int]]

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        self.receives.append((max_messages, wait_seconds, visibility_timeout))
        return super().receive(max_messages, wait_seconds, visibility_timeout)


def _drain_receiving(
    tmp_path: Path, bodies: list[str], limits: Limits, clock: Callable[[], float] = time.monotonic
) -> tuple[list[tuple[int, float, int]], list[tuple[int, int]]]:
    queue = _Receives(tmp_path / "queue.db")
    queue.receives = []
    assert queue.send_all(bodies).ok
    store = _Cuts.open(tmp_path / "firehose.db")
    assert isinstance(store, _Cuts)
    store.cuts = []
    try:
        assert Worker(queue, store, limits, out=None, clock=clock).run(until_empty=True) == 0
    finally:
        store.close()
        queue.close()
    return queue.receives, store.cuts


def test_a_group_is_topped_up_asking_only_for_what_it_lacks_with_the_configured_visibility(tmp_path: Path) -> None:
    # The first group wants 15 messages (1500 events by the first guess of 100 each): ten, then five.
    # Afterwards one-event messages: as many as the queue holds, ten at a time.
    limits = Limits(wait_seconds=0, max_batch_events=1500, visibility_timeout=45)
    receives, cuts = _drain_receiving(tmp_path, _even_messages(30, 1), limits)
    assert cuts == [(15, 15), (15, 15)]
    assert [asked for asked, _, _ in receives] == [10, 5, 10, 10, 10, 10]
    assert {(wait, visibility) for _, wait, visibility in receives} == {(0, 45)}


def test_the_first_group_stops_growing_once_its_bodies_inflated_by_the_first_guess_fill_a_transaction(
    tmp_path: Path,
) -> None:
    bodies = _even_messages(40, 1)
    body = len(bodies[0])
    assert {len(b) for b in bodies} == {body}
    # Twenty bodies, inflated four times (the first guess), are exactly a transaction's bytes: the
    # group stops there. Once decoded (these shrink) a transaction holds them all.
    limits = Limits(wait_seconds=0, max_batch_events=10_000, max_batch_bytes=20 * body * 4)
    receives, _cuts = _drain_receiving(tmp_path, bodies, limits)
    assert [asked for asked, _, _ in receives][:2] == [10, 10]
    assert _cuts[0] == (20, 20)


def test_a_group_gathers_for_no_longer_than_max_batch_seconds(tmp_path: Path) -> None:
    # The worker's clock stands still: with no time to gather, a group is what one receive returns.
    limits = Limits(wait_seconds=0, max_batch_seconds=0)
    _receives, cuts = _drain_receiving(tmp_path, _even_messages(25, 1), limits, clock=_Clock())
    assert cuts == [(10, 10), (10, 10), (5, 5)]


class _StopsWhenEmpty(_Journal):
    """Stops the worker once a long poll finds nothing."""

    worker: Worker

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        messages = super().receive(max_messages, wait_seconds, visibility_timeout)
        if not messages and wait_seconds > 0:
            self.worker.request_stop()
        return messages


def test_not_draining_an_idle_worker_long_polls_for_the_whole_wait(tmp_path: Path) -> None:
    queue = _StopsWhenEmpty(tmp_path / "queue.db")
    queue.journal = []
    assert queue.send_all(_even_messages(1, 3)).ok
    with _store_beside(queue, tmp_path) as store:
        queue.worker = worker = Worker(queue, store, Limits(wait_seconds=20), out=None)
        assert worker.run() == 0
        written = store.counts()["envelopes"]
    # A long poll, a top-up that does not wait (and finds nothing), then a long poll again.
    assert written == 1 and queue.journal == [("receive", 20), ("receive", 0), ("receive", 20)]


class _SignalledAfterReceive(LocalQueue):
    """A stop signal arrives just as a receive returns what it took."""

    signum: int

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        messages = super().receive(max_messages, wait_seconds, visibility_timeout)
        signal.raise_signal(self.signum)
        return messages


@pytest.mark.usefixtures("stop_signals")
def test_a_stop_signal_during_a_receive_that_does_not_long_poll_hands_back_what_it_took_at_once(
    tmp_path: Path,
) -> None:
    queue = _SignalledAfterReceive(tmp_path / "queue.db")
    queue.signum = signal.SIGTERM
    assert queue.send_all(_even_messages(3, 3)).ok
    written, depth = _run_stoppable(queue, tmp_path, Limits(wait_seconds=0))
    assert written == 0 and (depth.visible, depth.in_flight) == (3, 0), "not left in flight until their timeout"


@pytest.mark.usefixtures("stop_signals")
def test_a_stop_signal_during_a_drains_one_second_long_poll_ends_it_at_once(tmp_path: Path) -> None:
    queue = _ReceiveSignalled(tmp_path / "queue.db")
    queue.signum = signal.SIGTERM
    assert queue.send_all(_even_messages(2, 3)).ok
    with _store_beside(queue, tmp_path) as store:
        worker = Worker(queue, store, Limits(wait_seconds=20), out=None)
        worker.install_signal_handlers()
        assert worker.run(until_empty=True) == 0  # draining, a long poll waits at most a second
        depth = queue.depth()
    assert queue.polled_on == 0, "the poll is broken into, not waited out"
    assert (depth.visible, depth.in_flight) == (2, 0)


# -- what a group's start records: redeliveries, the receive time, the size limit ----------------


def test_a_redelivered_message_is_told_with_its_id_and_receive_count_and_a_first_delivery_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    sent = queue.send_all(_even_messages(2, 3))
    assert sent.ok
    again = queue.receive(1, 0, 60)  # another worker took one and handed it back unwritten
    assert queue.change_visibility([m.receipt for m in again], 0) == []
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with _store_beside(queue, tmp_path) as store:
        assert Worker(queue, store, Limits(wait_seconds=0), out=None).run(until_empty=True) == 0
    told = [r for r in caplog.records if r.name == WORKER_LOG and r.levelno == logging.INFO]
    redelivered = again[0].message_id
    assert [r.getMessage() for r in told] == [f"message {redelivered} redelivered (receive count 2)"]
    assert told[0].data == {"message_id": redelivered, "receive_count": 2}  # type: ignore[attr-defined]


class _FrozenTime(_SleepRecorded):
    """`time` as worker.loop sees it, but a wall clock that stands at `at`."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.time = lambda: at + 0.75


def test_each_message_is_stored_with_the_time_it_was_received_and_checked_against_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received_at = 1_700_000_000
    monkeypatch.setattr(worker_loop, "time", _FrozenTime(received_at))
    queue = LocalQueue(tmp_path / "queue.db")
    small, large = _even_messages(1, 1)[0], _even_messages(1, 50)[0]
    small_size = decode_batch([("m", small, 1)], 1 << 20, 0).decoded_bytes
    assert queue.send_all([small, large]).ok
    with _store_beside(queue, tmp_path) as store:
        # The limit lets the one-event message through and rejects the fifty-event one, undecoded.
        limits = Limits(wait_seconds=0, max_decoded_bytes=small_size + 200)
        assert Worker(queue, store, limits, out=None).run(until_empty=True) == 0
        counts = store.counts()
        times = {row[0] for row in store.db.execute("SELECT received_at FROM envelopes")}
    assert (counts["envelopes"], counts["events"], counts["rejects"]) == (2, 1, 1)
    assert times == {received_at}


def test_what_a_group_held_per_message_counts_every_transaction_it_was_cut_into(tmp_path: Path) -> None:
    # The first group: six messages (600 events by the first guess), cut into two transactions of
    # three 200-event messages. Learnt from the whole group, the next asks for three.
    bodies = _even_messages(9, 200)
    asked, cuts = _drain_recording(tmp_path, bodies, Limits(wait_seconds=0, max_batch_events=600))
    assert cuts == [(3, 600), (3, 600), (3, 600)]
    assert asked == [6, 3, 3]


# -- what the observers are told of each transaction ---------------------------------------------


class _Told:
    """An observer that keeps what it is told of each transaction, and the last sample's totals."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], int, int, float]] = []
        self.final_messages = -1

    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None:
        self.batches.append(([m.message_id for m in messages], len(batch.envelopes), stats.events, commit_seconds))

    def sampled(self, totals: Totals, depth: Depth | None, final: bool = False) -> None:
        if final:
            self.final_messages = totals.messages


class _QuarterSecondTicks(_SleepRecorded):
    """`time` as worker.loop sees it, but a `perf_counter` that moves a quarter second a reading."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0

        def perf_counter() -> float:
            self.ticks += 1
            return 100.0 + 0.25 * self.ticks

        self.perf_counter = perf_counter


def test_observers_are_told_each_transactions_messages_rows_stats_and_time_and_the_runs_totals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_loop, "time", _QuarterSecondTicks())
    queue = LocalQueue(tmp_path / "queue.db")
    result = queue.send_all(_even_messages(6, 200))
    assert result.ok
    sent = result.message_ids
    told = _Told()
    with _store_beside(queue, tmp_path) as store:
        # One group of six (by the first guess of 100 events each), cut into transactions of three.
        worker = Worker(queue, store, Limits(wait_seconds=0, max_batch_events=600), out=None, observers=[told])
        assert worker.run(until_empty=True) == 0
    assert told.batches == [(sent[:3], 3, 600, 0.25), (sent[3:], 3, 600, 0.25)]
    assert told.final_messages == 6


def test_a_stop_requested_while_a_transaction_waits_makes_the_store_give_up(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(2, 3)).ok
    asked: list[bool] = []
    worker: Worker

    class Waits(Store):
        def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
            asked.append(give_up())
            worker.request_stop()  # as a SIGTERM arriving while the store waits for a lock
            asked.append(give_up())
            return super().write(batch, give_up)

    store = Waits.open(tmp_path / "firehose.db")
    try:
        worker = Worker(queue, store, Limits(wait_seconds=0), out=None)
        assert worker.run(until_empty=True) == 0
    finally:
        store.close()
        queue.close()
    assert asked == [False, True]


class _TopUpRefused(LocalQueue):
    """A queue that hands out one message, then fails the receive that tops the group up; after
    `patience` receives it asks the worker to stop (so a worker left waiting ends the test)."""

    calls = 0
    patience = 20
    stop: Callable[[], None] | None = None

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        self.calls += 1
        if self.calls == 2:
            raise QueueUnavailable("connection reset")
        if self.calls >= self.patience and self.stop is not None:
            self.stop()
        return super().receive(1 if self.calls == 1 else max_messages, wait_seconds, visibility_timeout)


def test_a_failed_top_up_receive_writes_and_deletes_what_the_group_already_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The messages received before a receive that fails are written and deleted now, not left in
    flight until their visibility timeout (a minute here) while the worker polls."""
    caplog.set_level(logging.WARNING)
    queue = _TopUpRefused(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(3, 2)).ok
    with _store_beside(queue, tmp_path) as store:
        worker = Worker(queue, store, Limits(wait_seconds=0, visibility_timeout=60), out=None)
        queue.stop = worker.request_stop
        assert worker.run(until_empty=True) == 0
        written = store.counts()["envelopes"]
        depth = queue.depth()
    assert written == 3 and (depth.visible, depth.in_flight) == (0, 0)
    assert _records(caplog, logging.WARNING) == [
        "could not receive more (connection reset); writing the 1 messages in hand"
    ]


@pytest.mark.parametrize(
    ("decoder", "decoded_first"),
    [(InlineDecoder(), True), (_OverlappingInline(), False)],
    ids=["inline", "overlapping"],
)
def test_a_transactions_messages_are_decoded_before_it_begins_unless_the_decoder_overlaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: InlineDecoder, decoded_first: bool
) -> None:
    """Decoding here, outside the transaction, keeps the write lock for the inserts only; a decoder
    that works beside the worker hands each part to the store as it comes (docs/worker.md)."""
    journal: list[str] = []
    decode = worker_decoders.decode_message

    def decode_message(*args: object, **kwargs: object) -> object:
        journal.append("decode")
        return decode(*args, **kwargs)  # type: ignore[arg-type]

    class Journalled(Store):
        def write(self, batch: Rows | Incoming, give_up: Callable[[], bool] = lambda: False) -> WriteStats:
            journal.append("write")
            return super().write(batch, give_up)

    monkeypatch.setattr(worker_decoders, "decode_message", decode_message)
    queue = LocalQueue(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(3, 2)).ok
    store = Journalled.open(tmp_path / "firehose.db")
    try:
        worker = Worker(queue, store, Limits(wait_seconds=0), out=None, decoder=decoder)
        assert worker.run(until_empty=True) == 0
        assert store.counts()["envelopes"] == 3
    finally:
        store.close()
        queue.close()
    # Overlapping, the first message is decoded to learn that a transaction is due, the rest during it.
    assert journal == (["decode"] * 3 + ["write"] if decoded_first else ["decode", "write", "decode", "decode"])


def test_the_worker_writes_its_progress_line_to_the_stream_it_is_given(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(3, 2)).ok
    out = io.StringIO()
    with _store_beside(queue, tmp_path) as store:
        assert Worker(queue, store, Limits(wait_seconds=0), out=out).run(until_empty=True) == 0
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("done: ") and "| messages 3 | events 6 | duplicates 0 |" in last, last


def test_a_stop_asked_for_before_the_run_starts_ends_it_at_once_raising_nothing(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    assert queue.send_all(_even_messages(2, 2)).ok
    with _store_beside(queue, tmp_path) as store:
        worker = Worker(queue, store, Limits(wait_seconds=20), out=None)
        worker.request_stop()  # as a SIGTERM during start-up, before the first receive
        assert worker.run() == 0
        written, depth = store.counts()["envelopes"], queue.depth()
    assert written == 0 and (depth.visible, depth.in_flight) == (2, 0)
