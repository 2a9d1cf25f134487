"""The worker loop: receive, decode, write one transaction, and only then delete.

prepare   receive up to 10 messages at a time, accumulating small ones (events, bytes,
          about a second) so the transaction size does not depend on envelope size
process   decode each message into rows; an undecodable one becomes a reject
commit    one SQLite transaction for the whole batch, while a heartbeat keeps the
          messages invisible to other workers
ack       delete the messages, only after COMMIT
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol, TextIO

from chalicelib.queues import Depth, Message, Queue, QueueUnavailable
from db.batch import Incoming, Rows
from db.store import DatabaseFault, Store, WriteStats
from worker.decoders import Decoder, InlineDecoder, decode_batch

log = logging.getLogger("tune_firehose.worker")

EXIT_OK, EXIT_DB_FAULT = 0, 3

# How often the progress line asks for the queue depth. The local queue counts its file;
# SQS refreshes its approximate counts about once a minute and bills every call.
DEPTH_INTERVAL_SECONDS = {"local": 1.0, "sqs": 15.0}


@dataclass
class Limits:
    wait_seconds: float = 20
    visibility_timeout: int = 60
    max_batch_events: int = 5_000
    max_batch_bytes: int = 16 * 1024 * 1024
    max_batch_seconds: float = 1.0
    max_decoded_bytes: int = 32 * 1024 * 1024


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
    """Extends the visibility of the messages in hand while their batch is being written."""

    def __init__(self, queue: Queue, receipts: list[str], timeout: int) -> None:
        self.queue, self.receipts, self.timeout = queue, receipts, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="visibility-heartbeat", daemon=True)

    def _run(self) -> None:
        interval = max(1.0, self.timeout / 3)
        while not self._stop.wait(interval):
            try:
                failed = self.queue.change_visibility(self.receipts, self.timeout)
                if failed:
                    log.warning("could not extend visibility of %d messages", len(failed))
            except QueueUnavailable as exc:
                log.warning("heartbeat: %s", exc)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Job:
    """Messages in hand, from receipt until their batch is committed and they are deleted."""

    messages: list[Message]
    now: int
    batch: Incoming
    heartbeat: Heartbeat


class Worker:
    def __init__(
        self,
        queue: Queue,
        store: Store,
        limits: Limits | None = None,
        out: TextIO | None = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
        observers: Sequence[Observer] = (),
        decoder: Decoder | None = None,
    ) -> None:
        self.queue, self.store = queue, store
        self.decoder = decoder or InlineDecoder()
        self.limits = limits or Limits()
        self.out = out
        self.clock = clock
        self.observers = list(observers)
        self.totals = Totals()
        self.stopping = False
        self._idle = False
        self._last_progress = 0.0
        self._last_depth: Depth | None = None
        self._depth_at: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Stop after the batch in hand; if idle in a long poll, stop now."""
        self.stopping = True
        if self._idle:
            raise _Interrupted()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def run(self, until_empty: bool = False) -> int:
        backoff = 1.0
        # Batches received and not yet deleted, oldest first. With a decoder that overlaps, one batch
        # decodes in the helper while the one before it is written.
        in_hand: list[_Job] = []
        most_waiting = 1 if self.decoder.overlaps else 0
        try:
            while not self.stopping:
                try:
                    messages = self._collect(until_empty, hurry=bool(in_hand))
                except _Interrupted:
                    break
                except QueueUnavailable as exc:
                    self._finish_all(in_hand)
                    log.error("queue unreachable, retrying in %.0f s (nothing is deleted): %s", backoff, exc)
                    self._sleep(backoff)
                    backoff = min(backoff * 2, 60)
                    continue
                backoff = 1.0
                if messages:
                    in_hand.append(self._start(messages))
                while len(in_hand) > (most_waiting if messages else 0):
                    self._finish(in_hand.pop(0))
                if not messages and until_empty and self._drained():
                    break
                self._progress()
            self._finish_all(in_hand)
        except DatabaseFault as exc:
            log.error(
                "%s. Stopping without deleting the messages in hand; they will be redelivered once the "
                "database is fixed.",
                exc,
            )
            return EXIT_DB_FAULT
        finally:
            for job in in_hand:  # never written: stop extending them, so they are redelivered soon
                job.heartbeat.stop()
        self._progress(final=True)
        return EXIT_OK

    def _finish_all(self, in_hand: list[_Job]) -> None:
        while in_hand:
            self._finish(in_hand.pop(0))

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
        """Receive until the batch is full by events or bytes, or about a second has passed.

        `hurry`: a batch is waiting to be written, so do not long-poll an empty queue."""
        limits = self.limits
        wait = 0 if hurry else min(limits.wait_seconds, 1.0) if until_empty else limits.wait_seconds
        self._idle = True
        try:
            if self.stopping:
                return []
            messages = self.queue.receive(10, wait, limits.visibility_timeout)
        finally:
            self._idle = False
        if not messages:
            return []
        deadline = self.clock() + limits.max_batch_seconds
        size = sum(len(m.body) for m in messages)
        while (
            not self.stopping
            and size < limits.max_batch_bytes
            and len(messages) * 100 < limits.max_batch_events  # ~100 events per envelope
            and self.clock() < deadline
        ):
            more = self.queue.receive(10, 0, limits.visibility_timeout)
            if not more:
                break
            messages.extend(more)
            size += sum(len(m.body) for m in more)
        return messages

    # -- process, commit, ack ----------------------------------------------------------------

    def process(self, messages: list[Message]) -> WriteStats:
        """Decode, write and delete these messages, one batch."""
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
            batch = self.decoder.submit(items, self.limits.max_decoded_bytes, now)
        except BaseException:
            heartbeat.stop()
            raise
        return _Job(messages, now, batch, heartbeat)

    def _finish(self, job: _Job) -> WriteStats:
        messages = job.messages
        receipts = [m.receipt for m in messages]
        batch = job.batch
        try:
            started = time.perf_counter()
            try:
                stats = self.store.write(batch, give_up=lambda: self.stopping)
            except DatabaseFault:
                raise
            except Exception:
                # One poison message must not take its whole batch to the dead-letter queue.
                log.exception("a batch of %d messages failed to write; writing them one at a time", len(messages))
                stats, receipts = self._write_each(messages, job.now)
            commit_seconds = time.perf_counter() - started
        finally:
            job.heartbeat.stop()
        self._ack(receipts)
        self.totals.messages += len(messages)
        self.totals.written.add(stats)
        for observer in self.observers:
            observer.batch_written(messages, batch.whole(), stats, commit_seconds)
        return stats

    def _write_each(self, messages: list[Message], now: int) -> tuple[WriteStats, list[str]]:
        """Write each message in its own transaction; return the stats and the receipts written."""
        stats, written = WriteStats(), []
        for m in messages:
            single = decode_batch([(m.message_id, m.body, m.receive_count)], self.limits.max_decoded_bytes, now)
            try:
                stats.add(self.store.write(single, give_up=lambda: self.stopping))
            except DatabaseFault:
                raise
            except Exception as exc:
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
        # At most one line a second; the depth in it is refreshed per DEPTH_INTERVAL_SECONDS.
        if (self.out is None and not self.observers) or (not final and now - self._last_progress < 1.0):
            return
        self._last_progress = now
        depth = self._depth(fresh=final)
        for observer in self.observers:
            observer.sampled(self.totals, depth, final)
        if self.out is None:
            return
        t, w = self.totals, self.totals.written
        elapsed = max(now - t.started, 1e-9)
        line = (
            f"{'done' if final else 'progress'}: {w.events / elapsed:,.0f} events/s | messages {t.messages:,} | "
            f"events {w.events:,} | duplicates {w.duplicates + w.duplicate_adjustments:,} | "
            f"adjustments {w.adjustments:,} | rejects {w.rejects:,}{_depth_text(depth)}"
        )
        print(line, file=self.out, flush=True)


def _depth_text(depth: Depth | None) -> str:
    if depth is None:
        return ""
    text = f" | queue {depth.visible:,} visible, {depth.in_flight:,} in flight"
    if depth.dead:
        text += f", {depth.dead:,} dead"
    if depth.oldest_age_seconds is not None:
        text += f", oldest {depth.oldest_age_seconds:,.0f} s"
    return text
