"""The worker loop: receive, decode, write one transaction, and only then delete.

prepare   receive up to 10 messages at a time, accumulating small ones (about a second, and about
          one transaction's worth as far as the last messages tell) into a group
process   decode each message into rows, one part per message; whatever cannot be decoded
          becomes a reject, never an error
commit    cut the group into transactions of at most `max_batch_events` events and
          `max_batch_bytes` decoded bytes (counted after decoding: a message larger than either
          is written alone), each one SQLite transaction, while a heartbeat keeps the messages
          invisible to other workers
ack       delete each transaction's messages, only after its COMMIT

No input ends the loop: only a stop (SIGINT/SIGTERM, or a drained queue with --until-empty) or a
database that cannot be written (`DatabaseFault`).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Protocol, TextIO

from chalicelib.errors import QueueUnavailable
from chalicelib.queues import Depth, Message, Queue
from chalicelib.settings import DEFAULT_MAX_DECODED_BYTES
from db.batch import Incoming, Part, Rows
from db.errors import DatabaseFault
from db.store import WriteStats
from worker.decoders import Decoder, InlineDecoder, Parts
from worker.logs import ProgressLine

if TYPE_CHECKING:  # db.stores would import the PostgreSQL store's module at start-up
    from db.stores import WritableStore

log = logging.getLogger("tune_firehose.worker")

EXIT_OK, EXIT_DB_FAULT = 0, 3

# How often the progress line asks for the queue depth. The local queue counts its file;
# SQS refreshes its approximate counts about once a minute and bills every call.
DEPTH_INTERVAL_SECONDS = {"local": 1.0, "sqs": 15.0}
# What the receive side assumes before any message has been decoded (TUNE sends about 100 events
# per message); afterwards it goes by the last group. Only how many to receive depends on it: the
# limits are enforced on the decoded rows.
FIRST_GUESS_EVENTS_PER_MESSAGE = 100.0
# Likewise for how far a body inflates (TUNE's base64(gzip(JSON)) inflates 5 to 10 times, and more
# for repetitive events): a first group of large bodies is then about one transaction, not several,
# which each process would hold twice (the messages, and the request that takes them to the helper).
FIRST_GUESS_DECODED_PER_BODY_BYTE = 4.0


@dataclass
class Limits:
    wait_seconds: float = 20
    visibility_timeout: int = 60
    # One transaction: at most this many events (updates and rejects included), and at most this
    # much decoded text (`Rows.decoded_bytes`), both counted after decoding.
    max_batch_events: int = 5_000
    max_batch_bytes: int = 16 * 1024 * 1024
    max_batch_seconds: float = 1.0
    # One message, inflated: larger ones are rejected undecoded (MAX_DECODED_BYTES).
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES


@dataclass
class Totals:
    messages: int = 0
    written: WriteStats = field(default_factory=WriteStats)
    started: float = field(default_factory=time.monotonic)


class Observer(Protocol):
    """Something that watches the worker: metrics, structured logs."""

    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None: ...

    def sampled(self, totals: Totals, depth: Depth | None, final: bool = False) -> None: ...


class _Interrupted(BaseException):
    """Raised by the signal handler inside an idle long poll. A BaseException, because botocore
    catches Exception around the HTTP call and retries it, which would wait out the whole poll."""


class Heartbeat:
    """Extends the visibility of the messages in hand while their transactions are being written."""

    def __init__(self, queue: Queue, receipts: list[str], timeout: int) -> None:
        self.queue, self.receipts, self.timeout = queue, receipts, timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held during an extension, so a forgotten receipt is never extended after
        self._thread = threading.Thread(target=self._run, name="visibility-heartbeat", daemon=True)

    def _run(self) -> None:
        interval = max(1.0, self.timeout / 3)
        while not self._stop.wait(interval):
            with self._lock:
                try:
                    failed = self.queue.change_visibility(self.receipts, self.timeout)
                    if failed:
                        log.warning("could not extend visibility of %d messages", len(failed))
                except QueueUnavailable as exc:
                    log.warning("heartbeat: %s", exc)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def forget(self, receipts: list[str]) -> None:
        """Stop extending these (deleted, or left to come back)."""
        gone = set(receipts)
        with self._lock:
            self.receipts = [r for r in self.receipts if r not in gone]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Job:
    """A group of received messages, from receipt until each is written and deleted (or released)."""

    messages: list[Message]
    now: int
    parts: Parts  # one per message, in order
    heartbeat: Heartbeat
    done: int = 0  # messages[:done] are settled

    def drop(self) -> None:
        self.parts.close()
        self.heartbeat.stop()


@dataclass
class _PerMessage:
    """What the last decoded group held per message: how many to receive for one transaction."""

    events: float = FIRST_GUESS_EVENTS_PER_MESSAGE
    decoded_bytes: float = 0.0  # not known before a group is decoded
    decoded_per_body_byte: float = FIRST_GUESS_DECODED_PER_BODY_BYTE

    def learn(self, messages: list[Message], events: int, decoded_bytes: int) -> None:
        body_bytes = sum(len(m.body) for m in messages)
        self.events = max(events / len(messages), 1.0)
        self.decoded_bytes = decoded_bytes / len(messages)
        self.decoded_per_body_byte = max(decoded_bytes / max(body_bytes, 1), 1.0)

    def per_transaction(self, limits: Limits) -> int:
        """About how many messages fill one transaction (at least one)."""
        fit = limits.max_batch_events / self.events
        if self.decoded_bytes:
            fit = min(fit, limits.max_batch_bytes / self.decoded_bytes)
        return max(1, int(fit))


class Worker:
    def __init__(
        self,
        queue: Queue,
        store: WritableStore,
        limits: Limits | None = None,
        out: TextIO | None = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
        observers: Sequence[Observer] = (),
        decoder: Decoder | None = None,
    ) -> None:
        self.queue, self.store = queue, store
        self.decoder = decoder or InlineDecoder()
        self.limits = limits or Limits()
        self.clock = clock
        # The human progress line is one more observer: the loop itself never prints.
        self.observers = list(observers) + ([ProgressLine(out, clock)] if out is not None else [])
        self.totals = Totals()
        self.stopping = False
        self._idle = False
        self._last_progress = 0.0
        self._last_depth: Depth | None = None
        self._depth_at: float | None = None
        self._per_message = _PerMessage()

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Stop after the transaction in hand; if idle in a long poll, stop now."""
        self.stopping = True
        if self._idle:
            raise _Interrupted()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def run(self, until_empty: bool = False) -> int:
        """Until a stop, or a drained queue with `until_empty`: EXIT_OK. EXIT_DB_FAULT when the
        database cannot be written. Nothing else ends it: not a message, not a bug met on one."""
        backoff = 1.0
        # Groups received and not yet written, oldest first. With a decoder that overlaps, one group
        # decodes in the helper while the one before it is written.
        in_hand: list[_Job] = []
        try:
            while not self.stopping:
                try:
                    if self._step(in_hand, until_empty):
                        break
                    backoff = 1.0
                    continue
                except _Interrupted:
                    break
                except DatabaseFault:
                    raise
                except QueueUnavailable as exc:
                    log.error("queue unreachable, retrying in %.0f s (nothing is deleted): %s", backoff, exc)
                    self._settle(in_hand)
                except Exception:  # a bug must not stop the landing of everything else
                    log.exception(
                        "unexpected error; the %d messages in hand come back after their visibility timeout",
                        sum(len(job.messages) - job.done for job in in_hand),
                    )
                    self._drop(in_hand)
                self._sleep(backoff)
                backoff = min(backoff * 2, 60)
            self._settle(in_hand)
        except DatabaseFault as exc:
            log.error(
                "%s. Stopping without deleting the messages in hand; they will be redelivered once the "
                "database is fixed.",
                exc,
            )
            return EXIT_DB_FAULT
        finally:
            self._drop(in_hand)  # never written: stop extending them, so they are redelivered soon
        self._progress(final=True)
        return EXIT_OK

    def _step(self, in_hand: list[_Job], until_empty: bool) -> bool:
        """Receive one group and write what is due; True when the run is over."""
        messages = self._collect(until_empty, hurry=bool(in_hand))
        if messages:
            in_hand.append(self._start(messages))
        most_waiting = 1 if self.decoder.overlaps and messages else 0
        while len(in_hand) > most_waiting:
            self._finish(in_hand[0])
            in_hand.pop(0)
        if not messages and until_empty and self._drained():
            return True
        self._progress()
        return False

    def _settle(self, in_hand: list[_Job]) -> None:
        """Write the groups in hand (or, stopping, hand them back); a bug met here drops them."""
        try:
            while in_hand:
                self._finish(in_hand[0])
                in_hand.pop(0)
        except DatabaseFault:
            raise
        except Exception:
            log.exception("unexpected error; the messages in hand come back after their visibility timeout")
            self._drop(in_hand)

    def _drop(self, in_hand: list[_Job]) -> None:
        while in_hand:
            in_hand.pop(0).drop()

    def _sleep(self, seconds: float) -> None:
        self._idle = True
        try:
            time.sleep(seconds)
        except _Interrupted:
            pass
        finally:
            self._idle = False

    def _drained(self) -> bool:
        try:
            depth = self.queue.depth()
        except QueueUnavailable as exc:  # not known to be empty: keep polling rather than crash
            log.warning("could not read the queue depth, so not stopping yet: %s", exc)
            return False
        return depth.visible == 0 and depth.in_flight == 0

    # -- prepare -----------------------------------------------------------------------------

    def _collect(self, until_empty: bool, hurry: bool = False) -> list[Message]:
        """Receive until about one transaction's worth is in hand (by what the last group held per
        message), or about a second has passed.

        `hurry`: a group is waiting to be written, so do not long-poll an empty queue."""
        limits, per = self.limits, self._per_message
        wanted = per.per_transaction(limits)
        wait = 0 if hurry else min(limits.wait_seconds, 1.0) if until_empty else limits.wait_seconds
        # Only a long poll is interrupted by a stop: a receive that returns at once is let finish, since
        # breaking into it could leave what it received in flight until its visibility timeout.
        self._idle = wait > 0
        try:
            if self.stopping:
                return []
            # Large messages are received one at a time: a group of them would only wait in memory.
            messages = self.queue.receive(min(10, wanted), wait, limits.visibility_timeout)
        finally:
            self._idle = False
        if not messages:
            return []
        deadline = self.clock() + limits.max_batch_seconds
        body_bytes = sum(len(m.body) for m in messages)
        while (
            not self.stopping
            and len(messages) < wanted
            and body_bytes * per.decoded_per_body_byte < limits.max_batch_bytes
            and self.clock() < deadline
        ):
            try:
                more = self.queue.receive(min(10, wanted - len(messages)), 0, limits.visibility_timeout)
            except QueueUnavailable as exc:
                # What is in hand is written now, not left in flight until its visibility timeout;
                # the queue's trouble shows again at the next receive.
                log.warning("could not receive more (%s); writing the %d messages in hand", exc, len(messages))
                break
            if not more:
                break
            messages.extend(more)
            body_bytes += sum(len(m.body) for m in more)
        return messages

    # -- process, commit, ack ----------------------------------------------------------------

    def process(self, messages: list[Message]) -> WriteStats:
        """Decode, write and delete these messages."""
        return self._finish(self._start(messages))

    def _start(self, messages: list[Message]) -> _Job:
        for m in messages:
            if m.receive_count > 1:
                log.info(
                    "message %s redelivered (receive count %d)",
                    m.message_id,
                    m.receive_count,
                    extra={"data": {"message_id": m.message_id, "receive_count": m.receive_count}},
                )
        heartbeat = Heartbeat(self.queue, [m.receipt for m in messages], self.limits.visibility_timeout).start()
        now = int(time.time())
        try:
            items = [(m.message_id, m.body, m.receive_count) for m in messages]
            parts = self.decoder.submit(items, self.limits.max_decoded_bytes, now)
        except BaseException:
            heartbeat.stop()
            raise
        return _Job(messages, now, parts, heartbeat)

    def _finish(self, job: _Job) -> WriteStats:
        """Write the group's transactions in order, deleting each one's messages after its COMMIT.
        Once stopping, no new transaction starts: the messages not yet written are handed back."""
        stats = WriteStats()
        events = decoded = 0
        try:
            for batch, parts in self._transactions(job):
                stats.add(self._commit(job, batch, parts))
                events += sum(part.size for part in parts)
                decoded += sum(part.decoded_bytes for part in parts)
                del batch, parts  # before the next transaction's rows are loaded
            if job.done < len(job.messages):
                self._release(job.messages[job.done :])
            elif job.messages:
                self._per_message.learn(job.messages, events, decoded)
        finally:
            job.drop()
        return stats

    def _transactions(self, job: _Job) -> Iterator[tuple[Incoming, list[Part]]]:
        """The group's parts cut into transactions within the limits, by each part's size known
        before its rows are loaded; a part that does not fit starts the next transaction, and one
        larger than the limits is written alone. With a decoder that overlaps, a transaction's parts
        reach the store as they are decoded; otherwise they are decoded first, outside the
        transaction. Each comes with the list of its parts taken so far (one per message). A large
        message's part is `Streamed`: the store loads its rows chunk by chunk as it writes them."""
        parts, limits = job.parts, self.limits

        def take(taken: list[Part]) -> Iterator[Part]:
            events = size = 0
            while (next_size := parts.peek()) is not None:
                events, size = events + next_size[0], size + next_size[1]
                if taken and (events > limits.max_batch_events or size > limits.max_batch_bytes):
                    return
                taken.append(next(parts))
                yield taken[-1]

        while not self.stopping and parts.peek() is not None:
            taken: list[Part] = []
            source = take(taken)
            yield Incoming(source if self.decoder.overlaps else list(source)), taken

    def _commit(self, job: _Job, batch: Incoming, parts: list[Part]) -> WriteStats:
        """Write one transaction, then delete its messages: the group's next ones, one per part."""
        started = time.perf_counter()
        failed: Exception | None = None
        try:
            stats = self.store.write(batch, give_up=lambda: self.stopping)
        except DatabaseFault:
            raise
        except Exception as exc:
            failed = exc
        batch.taken()  # every part by now (the rest taken here if the write failed half-way)
        messages = job.messages[job.done : job.done + len(parts)]
        receipts = [m.receipt for m in messages]
        if failed is not None:
            # One poison message must not take its whole transaction to the dead-letter queue.
            log.error(
                "a transaction of %d messages failed to write; writing them one at a time",
                len(messages),
                exc_info=failed,
            )
            stats, receipts = self._write_each(messages, parts)
        commit_seconds = time.perf_counter() - started
        # Of a large message only what the observers need, never its rows (`Streamed.summary`).
        summary = batch.summary()
        job.heartbeat.forget([m.receipt for m in messages])  # written, or left to come back
        self._ack(receipts)
        job.done += len(messages)
        self.totals.messages += len(messages)
        self.totals.written.add(stats)
        for observer in self.observers:
            observer.batch_written(messages, summary, stats, commit_seconds)
        return stats

    def _write_each(self, messages: list[Message], parts: list[Part]) -> tuple[WriteStats, list[str]]:
        """Write each message in its own transaction; return the stats and the receipts written. A
        `Streamed` part reads its rows again (decoding its message again, if need be)."""
        stats, written = WriteStats(), []
        for m, part in zip(messages, parts, strict=True):
            try:
                stats.add(self.store.write(Incoming([part]), give_up=lambda: self.stopping))
            except DatabaseFault:
                raise
            except Exception as exc:  # the store refused this message's rows alone
                log.error(
                    "message %s cannot be written (receive count %d); it stays on the queue and moves to the "
                    "dead-letter queue after maxReceiveCount receives: %r",
                    m.message_id,
                    m.receive_count,
                    exc,
                )
                continue
            written.append(m.receipt)
        return stats, written

    def _release(self, messages: list[Message]) -> None:
        """Hand messages received but not written back to the queue now, rather than after their timeout."""
        try:
            self.queue.change_visibility([m.receipt for m in messages], 0)
        except QueueUnavailable as exc:
            log.warning(
                "could not hand back %d unwritten messages; they return after their timeout: %s", len(messages), exc
            )

    def _ack(self, receipts: list[str]) -> None:
        try:
            failed = self.queue.delete(receipts)
        except QueueUnavailable as exc:
            log.warning("delete failed after commit (the redelivery will change nothing): %s", exc)
            return
        if failed:
            log.warning("%d deletes failed after commit; their redelivery will change nothing", len(failed))

    # -- progress ----------------------------------------------------------------------------

    def _depth(self, fresh: bool = False) -> Depth | None:
        now = self.clock()
        interval = DEPTH_INTERVAL_SECONDS.get(getattr(self.queue, "backend", ""), 1.0)
        if not fresh and self._depth_at is not None and now - self._depth_at < interval:
            return self._last_depth
        self._depth_at = now
        try:
            self._last_depth = self.queue.depth()
        except QueueUnavailable as exc:
            log.warning("could not read the queue depth: %s", exc)
            self._last_depth = None
        return self._last_depth

    def _progress(self, final: bool = False) -> None:
        now = self.clock()
        # At most one sample a second; the depth in it is refreshed per DEPTH_INTERVAL_SECONDS.
        if not self.observers or (not final and now - self._last_progress < 1.0):
            return
        self._last_progress = now
        depth = self._depth(fresh=final)
        for observer in self.observers:
            observer.sampled(self.totals, depth, final)
