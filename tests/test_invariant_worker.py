"""The delete invariant on the worker loop in this process, on both queue backends and with both
decoders: at the moment of every delete, each deleted message's events and updates are committed
(tests/invariants.py checks it inside the local queue's delete and in the proxy in front of moto).

Small batches (one receive, ten messages, each) make eight batches of the 80 messages, so the helper
decoder's overlap (one batch decoding while the one before is written and deleted) runs many times.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.generate import Generator
from chalicelib.queues.base import Queue
from chalicelib.queues.sqs import SqsQueue, make_client
from chalicelib.settings import load_settings
from db.store import Store
from tests.faultkit import Expected, assert_exactly_once, pack, stored
from tests.invariants import Harness, SqsHarness, harness, leftovers
from worker.decoders import Decoder, InlineDecoder, ProcessDecoder
from worker.loop import Limits, Worker

MESSAGES = 80
PER_MESSAGE = 20
SMALL_BATCHES = Limits(wait_seconds=0.2, visibility_timeout=30, max_batch_events=500)  # one receive a batch


@pytest.fixture(params=["inline", "process"])
def decoder(request: pytest.FixtureRequest) -> Iterator[Decoder]:
    made: Decoder = InlineDecoder() if request.param == "inline" else ProcessDecoder().start()
    yield made
    made.close()


@pytest.fixture(params=["local", "sqs"])
def watched(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    moto = request.getfixturevalue("moto_server") if request.param == "sqs" else None
    with harness(request.param, tmp_path, moto_server=moto) as h:
        yield h


def _queue(h: Harness) -> Queue:
    """The queue as the worker sees it: on SQS, through the proxy that checks each delete."""
    if isinstance(h, SqsHarness):
        settings = load_settings(
            {"QUEUE_URL": h.url, "AWS_ENDPOINT_URL_SQS": h.proxy.url, "AWS_REGION": "us-east-1"}, dotenv_path=None
        )
        return SqsQueue(h.url, make_client(settings))
    return h.queue


def _fill(h: Harness, seed: int) -> Expected:
    events = Generator(seed).events(MESSAGES * PER_MESSAGE)
    bodies = [body for body, _ in pack(events, PER_MESSAGE)]
    for start in range(0, len(bodies), 10):
        assert h.queue.send_all(bodies[start : start + 10]).ok
    return Expected.of(events)


def test_every_delete_follows_its_commit(watched: Harness, decoder: Decoder) -> None:
    h = watched
    expected = _fill(h, 161)
    store = Store.open(h.db_path)
    try:
        worker = Worker(_queue(h), store, SMALL_BATCHES, out=None, decoder=decoder)
        assert worker.run(until_empty=True) == 0
    finally:
        store.close()
    h.check()
    assert h.checked() == MESSAGES
    assert_exactly_once(h.db_path, expected)
    assert leftovers(h) == (0, 0, 0)
    # The overlap is what is being checked: with the helper, batches were deleted while the next was
    # already in hand; decoding inline, never.
    assert (h.overlapped_deletes() > 0) == decoder.overlaps


class _StopDuringWrite(Store):
    """Asks the worker to stop while its third batch is being written, as SIGTERM would."""

    worker: Worker | None = None
    writes = 0

    def write(self, batch: Any, give_up: Any = lambda: False) -> Any:
        self.writes += 1
        if self.writes == 3 and self.worker is not None:
            self.worker.request_stop()
        return super().write(batch, give_up)


def test_a_stop_mid_write_deletes_exactly_what_was_committed(watched: Harness, decoder: Decoder) -> None:
    h = watched
    _fill(h, 162)
    store = _StopDuringWrite.open(h.db_path)
    try:
        worker = Worker(_queue(h), store, SMALL_BATCHES, out=None, decoder=decoder)
        store.worker = worker
        assert worker.run() == 0
    finally:
        store.close()
    h.check()
    deleted = {d.message_id for d in h.deletes()}
    committed = set(stored(h.db_path).envelopes)
    assert deleted == committed, f"{len(deleted - committed)} deleted uncommitted, {len(committed - deleted)} kept"
    visible, in_flight, dead = leftovers(h)
    assert in_flight == 0 and dead == 0, "the batch in hand was neither finished nor given back"
    assert visible + len(deleted) == MESSAGES and visible > 0, (visible, len(deleted))
