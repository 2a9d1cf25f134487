"""What is deleted, where `make mutation` found no test to say so (docs/mutation.md).

- A message whose rows the store refuses (a bug, or a value one database cannot hold) costs only
  itself: the rest of its transaction is written one message at a time and deleted, it is never
  deleted, and it ends in the dead-letter queue after its receives, with nothing of it stored.
- The local queue answers each delete and visibility change with exactly the receipts it could not
  act on: the worker's "deletes failed after commit" warning and the heartbeat rely on that list.
- Redrive with no limit brings back every dead letter, not some.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.generate import Generator
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
        depth = queue.depth()
        assert (depth.visible, depth.dead) == (len(bodies), 0)
    finally:
        queue.close()
