"""What is deleted, where `make mutation` found no test to say so (docs/mutation.md).

- A message whose rows the store refuses (a bug, or a value one database cannot hold) costs only
  itself: the rest of its transaction is written one message at a time and deleted, it is never
  deleted, and it ends in the dead-letter queue after its receives, with nothing of it stored.
- The local queue answers each delete and visibility change with exactly the receipts it could not
  act on: the worker's "deletes failed after commit" warning and the heartbeat rely on that list.
- Redrive with no limit brings back every dead letter, not some.
- The local queue's own contract: receive's defaults, limits and waits, dead letters moved aside
  without handing out more than asked, the oldest message's age, what a send refuses and why, and
  how a file that is not a queue (or is locked) is refused.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.generate import Generator
from chalicelib.errors import NotAQueue, QueueUnavailable
from chalicelib.queues import local as local_queue
from chalicelib.queues.local import LocalQueue
from db.batch import Rows
from db.store import Store, WriteStats
from tests.faultkit import Expected, assert_exactly_once, pack
from worker.decoders import Decoder, InlineDecoder, ProcessDecoder
from worker.loop import Limits, Worker

MESSAGES, PER_MESSAGE = 12, 5


@pytest.fixture(params=["inline", "process"])
def decoder(request: pytest.FixtureRequest) -> Iterator[Decoder]:
    made: Decoder = InlineDecoder() if request.param == "inline" else ProcessDecoder().start()
    yield made
    made.close()


class _RefusesSome(Store):
    """A real store that raises (not a database fault) on any part holding a refused message's rows,
    as a store does on a value it cannot bind; the transaction rolls back like any failed one."""

    refused: frozenset[str] = frozenset()

    def _insert(self, batch: Rows) -> WriteStats:
        if any(envelope[0] in self.refused for envelope in batch.envelopes):
            raise ValueError("this store cannot hold a value of that message")
        return super()._insert(batch)


@pytest.mark.worker_errors_expected  # the refusals are logged as errors; the queue's max_receives ends the run
@pytest.mark.parametrize("refused_at", [[0], [5], [3, 11]])
def test_a_refused_message_costs_only_itself(tmp_path: Path, decoder: Decoder, refused_at: list[int]) -> None:
    queue = LocalQueue(tmp_path / "queue.db", max_receives=2)
    events = Generator(1601).events(MESSAGES * PER_MESSAGE)
    packed = pack(events, PER_MESSAGE)
    sent: list[str] = []
    for start in range(0, len(packed), 10):
        result = queue.send_all([body for body, _ in packed[start : start + 10]])
        assert result.ok
        sent += result.message_ids
    refused = {sent[i] for i in refused_at}
    store = _RefusesSome.open(tmp_path / "firehose.db")
    store.refused = frozenset(refused)
    try:
        # One transaction holds every message, so each refusal fails a transaction with others in it.
        limits = Limits(wait_seconds=0, visibility_timeout=1, max_batch_events=10_000)
        assert Worker(queue, store, limits, out=None, decoder=decoder).run(until_empty=True) == 0
    finally:
        store.close()
    try:
        depth = queue.depth()
        dead = {row[0] for row in queue._db.execute("SELECT message_id FROM dead_letters")}
    finally:
        queue.close()
    # Never deleted: each refused message went back, was received again and moved to dead letters.
    assert dead == refused
    assert (depth.visible, depth.in_flight) == (0, 0), "a written message was not deleted"
    kept = [event for i, (_, evs) in enumerate(packed) if i not in refused_at for event in evs]
    landed = assert_exactly_once(tmp_path / "firehose.db", Expected.of(kept))
    assert set(landed.envelopes) == set(sent) - refused


def test_local_queue_names_exactly_the_receipts_it_could_not_act_on(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        assert queue.send_all(["a", "b", "c", "d"]).ok
        first = queue.receive(4, 0, 0)  # visible again at once, so a second receive replaces the receipts
        second = {m.body: m for m in queue.receive(4, 0, 30)}
        stale = [m.receipt for m in first if m.body in ("a", "c")]
        live = [second["b"].receipt, second["d"].receipt]
        mixed = [stale[0], live[0], stale[1], live[1]]
        assert queue.change_visibility(mixed, 30) == stale
        assert queue.delete(mixed) == stale
        assert queue.delete(live) == live, "a receipt already used to delete must not delete again"
        remaining = queue.depth()
        assert (remaining.visible + remaining.in_flight) == 2  # a and c: only stale receipts were offered
    finally:
        queue.close()


def test_redrive_without_a_limit_brings_back_every_dead_letter(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db", max_receives=1)
    bodies = [f"dead-{i}" for i in range(4)]
    try:
        assert queue.send_all(bodies).ok
        queue.receive(10, 0, 0)  # one receive each: the next receive moves them to dead letters
        assert queue.receive(10, 0, 30) == []
        assert queue.depth().dead == len(bodies)
        assert queue.redrive().moved == len(bodies)
        assert _synchronous(queue) == 2, "a redrive is sent again: committed durably, as a send"
        depth = queue.depth()
        assert (depth.visible, depth.dead) == (len(bodies), 0)
    finally:
        queue.close()


# -- the local queue's own contract, where the mutation run found no test to say so ----------------


class _Clock:
    """Stands in for the local queue's `time`: the wall clock and the monotonic one move only when
    the queue sleeps (or the test says), and every sleep is recorded."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now, self.slept = now, []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    made = _Clock()
    monkeypatch.setattr(local_queue, "time", made)
    return made


def test_a_receive_waits_for_its_whole_wait_in_short_polls_and_not_longer(tmp_path: Path, clock: _Clock) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        assert queue.receive(1, 0.12, 30) == []
        assert clock.slept == pytest.approx([0.05, 0.05, 0.02])
        clock.slept.clear()
        assert queue.receive(1, 0, 30) == [] and clock.slept == [], "no wait: one look, no sleep"
        assert queue.receive() == []  # by default a long poll of 20 s, as SQS's longest
        assert sum(clock.slept) == pytest.approx(20.0) and max(clock.slept) == local_queue.POLL_INTERVAL_SECONDS
    finally:
        queue.close()


def test_a_receive_by_default_takes_ten_hidden_for_thirty_seconds(tmp_path: Path, clock: _Clock) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        sent_at = clock.now
        assert queue.send_all([f"m{i}" for i in range(11)]).ok
        got = queue.receive()
        assert len(got) == 10 and all(m.sent_at == sent_at and m.receive_count == 1 for m in got)
        clock.now += 29.9
        assert (queue.depth().visible, queue.depth().in_flight) == (1, 10)
        clock.now += 0.1
        assert (queue.depth().visible, queue.depth().in_flight) == (11, 0)
    finally:
        queue.close()


@pytest.mark.parametrize("asked", [0, 11])
def test_a_receive_of_more_than_ten_or_none_is_refused(tmp_path: Path, asked: int) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        with pytest.raises(ValueError) as refused:
            queue.receive(asked, 0, 30)
        assert str(refused.value) == "max_messages must be between 1 and 10, as on SQS"
    finally:
        queue.close()


def test_a_receive_that_moves_dead_letters_aside_still_hands_out_no_more_than_asked(
    tmp_path: Path, clock: _Clock
) -> None:
    queue = LocalQueue(tmp_path / "queue.db", max_receives=2)
    try:
        assert queue.send_all(["dead-a", "dead-b"]).ok
        for _ in range(2):
            assert len(queue.receive(2, 0, 0)) == 2  # visible again at once
        clock.now += 1
        assert queue.send_all(["c", "d", "e", "f"]).ok
        got = queue.receive(3, 0, 30)
        assert [m.body for m in got] == ["c", "d", "e"]
        assert (queue.depth().visible, queue.depth().dead) == (1, 2)
    finally:
        queue.close()


def test_the_depth_gives_the_age_of_the_oldest_message_and_none_when_empty(tmp_path: Path, clock: _Clock) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        assert queue.depth().oldest_age_seconds is None
        assert queue.send_all(["old"]).ok
        clock.now += 0.5
        assert queue.send_all(["new"]).ok
        assert queue.depth().oldest_age_seconds == pytest.approx(0.5)
        clock.now += 10
        assert queue.depth().oldest_age_seconds == pytest.approx(10.5)
        clock.now -= 100  # the wall clock stepped back: an age is never negative
        assert queue.depth().oldest_age_seconds == 0.0
    finally:
        queue.close()


def test_a_send_refuses_only_the_bodies_it_cannot_take_and_says_why(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db", max_message_bytes=10)
    try:
        result = queue.send_all(["a", "", "é" * 5, "x" * 11, "b" * 10])
        assert result.failed == [(1, "message body is empty"), (3, "message is 11 bytes, over the 10 limit")]
        assert len(result.message_ids) == 3, "a body of exactly the limit (in UTF-8 bytes) is taken"
        assert sorted(m.body for m in queue.receive(10, 0, 30)) == ["a", "b" * 10, "é" * 5]
    finally:
        queue.close()


def test_each_message_keeps_the_md5_of_its_body(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    queue.send_all(["héllo"])
    queue.close()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        (md5,) = db.execute("SELECT md5_of_body FROM messages").fetchone()
    db.close()
    assert md5 == hashlib.md5("héllo".encode(), usedforsecurity=False).hexdigest()


def _not_a_database(tmp_path: Path) -> Path:
    text = tmp_path / "notes.txt"
    text.write_text("not a database, just long enough to have a header " * 4)
    return text


def test_a_file_that_is_not_a_queue_or_is_locked_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _not_a_database(tmp_path)
    with pytest.raises(NotAQueue) as refused:
        LocalQueue(text)
    assert str(refused.value) == f"{text} cannot be a local queue file: file is not a database"
    path = tmp_path / "queue.db"
    queue = LocalQueue(path)
    assert repr(queue) == f"LocalQueue({str(path)!r})"
    queue.close()
    # A file another process holds in an exclusive transaction (journal mode not WAL yet), waited on
    # for the busy timeout (shortened here): a passing condition, not a file that cannot be a queue.
    held = tmp_path / "held.db"
    monkeypatch.setattr(local_queue, "BUSY_TIMEOUT_MS", 50)
    other = sqlite3.connect(held, isolation_level=None)
    try:
        other.execute("CREATE TABLE t (x)")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(QueueUnavailable) as busy:
            LocalQueue(held)
        assert str(busy.value) == f"local queue {held}: database is locked"
    finally:
        other.close()


def _synchronous(queue: LocalQueue) -> int:
    return int(queue._db.execute("PRAGMA synchronous").fetchone()[0])


def test_a_send_commits_durably_and_a_receive_or_delete_with_normal_sync_in_wal_mode(tmp_path: Path) -> None:
    """FULL (2) for a send, which a 202 stands on; NORMAL (1) for the rest, which a power cut can only
    turn into a redelivery (chalicelib/queues/local.py)."""
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        assert queue._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert queue.send_all(["a", "b"]).ok and _synchronous(queue) == 2
        got = queue.receive(2, 0, 30)
        assert _synchronous(queue) == 1
        assert queue.send_all(["c"]).ok and _synchronous(queue) == 2
        assert queue.delete([m.receipt for m in got]) == [] and _synchronous(queue) == 1
    finally:
        queue.close()


def test_a_queue_opened_for_looking_only_writes_nothing_and_says_what_it_cannot_do(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    LocalQueue(path).close()
    queue = LocalQueue(path, readonly=True)
    try:
        assert queue.depth().visible == 0
        with pytest.raises(QueueUnavailable) as refused:
            queue.send_all(["a"])
        assert str(refused.value) == f"local queue {path}: attempt to write a readonly database"
    finally:
        queue.close()
    missing = tmp_path / "missing.db"
    with pytest.raises(NotAQueue):
        LocalQueue(missing, readonly=True)
    assert not missing.exists(), "looking creates nothing"
    text = _not_a_database(tmp_path)
    with pytest.raises(NotAQueue) as refused_text:
        LocalQueue(text, readonly=True)
    assert str(refused_text.value) == f"{text} cannot be a local queue file: file is not a database"
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()  # SQLite, but without the queue's tables
    looked = LocalQueue(other, readonly=True)
    try:
        with pytest.raises(QueueUnavailable) as no_tables:
            looked.depth()
        assert str(no_tables.value) == f"local queue {other}: no such table: messages"
    finally:
        looked.close()


def test_the_queue_waits_up_to_a_minute_for_another_process_holding_its_lock(tmp_path: Path) -> None:
    """Workers and the endpoint share the file: a lock held by one is waited for, not an error."""
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        assert queue._db.execute("PRAGMA busy_timeout").fetchone()[0] == local_queue.BUSY_TIMEOUT_MS == 60_000
    finally:
        queue.close()
