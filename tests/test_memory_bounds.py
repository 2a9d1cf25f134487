"""Issue 12, finding 6: the worker's memory is bounded by decoded bytes and events, not by messages.

A transaction holds at most `max_batch_events` events and `max_batch_bytes` of decoded text,
counted after decoding, whichever decoder; a message larger than either is written alone. The
helper process crosses a large message in pieces, and the worker never holds more than its
read-ahead of the helper's output. The limits are lowered here so that small messages exercise
them; `make bench` measures the peak RSS of the real shapes (bench/memory.py).
"""

from __future__ import annotations

import base64
import gzip
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.codec import dump_event, encode_envelope
from chalicelib.queues.local import LocalQueue
from db.batch import Incoming, Rows
from db.store import Store, WriteStats
from tests.kit import rows, send
from worker import decoders
from worker.decoders import CHUNK_BYTES, Decoder, InlineDecoder, ProcessDecoder, decode_message
from worker.loop import Limits, Worker

MAX_EVENTS, MAX_BYTES = 40, 24_000


@pytest.fixture(params=["inline", "process"])
def decoder(request: pytest.FixtureRequest) -> Iterator[Decoder]:
    made: Decoder = InlineDecoder() if request.param == "inline" else ProcessDecoder()
    yield made
    made.close()


def event(key: str, pad: int = 0) -> dict[str, Any]:
    return {"action": "click", "tune_event_id": key, "offer_id": 1, **({"pad": "p" * pad} if pad else {})}


def message(name: str, events: int, pad: int = 0) -> str:
    return encode_envelope([dump_event(event(f"{name}-{i}", pad)) for i in range(events)])


# name -> (events, padding per event): small ones, ones that fill a transaction by events or by
# bytes, ones larger than a whole transaction by either, and one that cannot be decoded at all.
SHAPES = {
    "tiny": (3, 0),
    "by-events": (25, 0),
    "by-bytes": (4, 5_000),
    "over-events": (130, 0),
    "over-bytes": (3, 20_000),
    "one-huge-event": (1, 60_000),
}
ORDER = ["tiny", "tiny", "by-events", "tiny", "by-bytes", "by-bytes", "over-events", "tiny", "over-bytes", "tiny"]
ORDER += ["by-events", "by-events", "one-huge-event", "tiny", "tiny", "tiny", "garbage", "by-bytes", "tiny"]


def as_stored(batch: Rows) -> list[list[tuple[Any, ...]]]:
    """Rows as the database holds them: NaN (how empty columns are built) and None are both NULL."""
    tables = (batch.events, batch.adjustments, batch.envelopes, batch.rejects)
    return [[tuple(None if v != v else v for v in row) for row in table] for table in tables]


class Recording(Store):
    """The real store, recording each transaction's parts: (message id, rows, decoded bytes)."""

    transactions: list[list[tuple[str, int, int]]]

    def write(self, batch: Rows | Incoming, give_up: Any = lambda: False) -> WriteStats:
        parts = list(batch.parts()) if isinstance(batch, Incoming) else [batch]
        self.transactions.append([(p.envelopes[0][0], p.size, p.decoded_bytes) for p in parts])
        return super().write(batch, give_up)


def test_transactions_are_bounded_by_events_and_decoded_bytes(
    local_queue: LocalQueue, tmp_path: Path, decoder: Decoder
) -> None:
    garbage = base64.b64encode(gzip.compress(b"not json")).decode()
    bodies = [garbage if name == "garbage" else message(f"{i}{name}", *SHAPES[name]) for i, name in enumerate(ORDER)]
    send(local_queue, bodies)
    store = Recording.open(tmp_path / "f.db")
    store.transactions = []
    worker = Worker(
        local_queue,
        store,
        Limits(wait_seconds=0, max_batch_events=MAX_EVENTS, max_batch_bytes=MAX_BYTES),
        out=None,
        decoder=decoder,
    )
    assert worker.run(until_empty=True) == 0
    store.close()

    seen = [message_id for transaction in store.transactions for message_id, _, _ in transaction]
    sent = [m for (m,) in rows(tmp_path / "f.db", "SELECT message_id FROM envelopes ORDER BY rowid")]
    assert sorted(seen) == sorted(sent) and len(set(seen)) == len(ORDER)  # each message in one transaction
    for transaction in store.transactions:
        events = sum(size for _, size, _ in transaction)
        decoded = sum(size for _, _, size in transaction)
        # Within both limits, or a single message (one larger than a limit is written alone).
        assert len(transaction) == 1 or (events <= MAX_EVENTS and decoded <= MAX_BYTES), transaction
    alone = {name: [t for t in store.transactions if any(name in m for m, _, _ in t)] for name in SHAPES}
    for name in ("over-events", "over-bytes", "one-huge-event"):
        assert all(len(t) == 1 for t in alone[name]), f"{name} shares a transaction"
    # Nothing was lost on the way: every event is stored.
    expected = sum(SHAPES[name][0] for name in ORDER if name != "garbage")
    assert rows(tmp_path / "f.db", "SELECT count(*) FROM events") == [(expected,)]


def test_a_transaction_of_many_small_messages_is_cut_by_events_not_by_messages(
    local_queue: LocalQueue, tmp_path: Path, decoder: Decoder
) -> None:
    """Messages of 1,000 events with a limit of 500: each is its own transaction, never 50 of them
    (the receive side once assumed 100 events per message)."""
    send(local_queue, [message(f"m{i}", 1_000) for i in range(6)])
    store = Recording.open(tmp_path / "f.db")
    store.transactions = []
    worker = Worker(local_queue, store, Limits(wait_seconds=0, max_batch_events=500), out=None, decoder=decoder)
    assert worker.run(until_empty=True) == 0
    store.close()
    assert [len(t) for t in store.transactions] == [1] * 6
    assert rows(tmp_path / "f.db", "SELECT count(*) FROM events") == [(6_000,)]


def test_a_large_message_crosses_from_the_helper_in_pieces() -> None:
    """The helper sends a message's rows in frames of about CHUNK_BYTES, each with the message's
    size, and the worker puts them back together into exactly the rows decoded here."""
    body = message("big", 40, CHUNK_BYTES // 10)  # about 4 chunks
    item = ("big", body, 1)
    frames = list(decoders._frames(item, 1 << 25, 1_700_000_000))
    assert len(frames) >= 3
    assert all(len(f) < 2 * CHUNK_BYTES for f in frames)
    here = decode_message(item, 1 << 25, 1_700_000_000)
    with ProcessDecoder() as decoder:
        parts = decoder.submit([item, ("small", message("small", 2), 1)], 1 << 25, 1_700_000_000)
        assert parts.peek() == (here.size, here.decoded_bytes)  # known before the rows are loaded
        got = next(parts)
        assert as_stored(got) == as_stored(here) and got.decoded_bytes == here.decoded_bytes
        assert next(parts).size == 2 and parts.peek() is None


class _WatchedWindow(decoders._Window):
    """The real read-ahead window, noting when the reader thread had to wait and how much it held."""

    most = 0
    waited = threading.Event()

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        real_wait = self._cond.wait

        def wait(timeout: float | None = None) -> bool:
            _WatchedWindow.most = max(_WatchedWindow.most, self.held)
            _WatchedWindow.waited.set()
            return real_wait(timeout)

        self._cond.wait = wait  # type: ignore[method-assign]


def test_the_worker_holds_at_most_its_read_ahead_of_the_helpers_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is taken until the helper has had to wait: by then the worker holds no more than the
    read-ahead (plus the one frame it let in when it held nothing)."""
    monkeypatch.setattr(decoders, "_Window", _WatchedWindow)
    limit = 2 * CHUNK_BYTES
    items = [(f"m{i}", message(f"m{i}", 8, CHUNK_BYTES // 8), 1) for i in range(12)]  # ~12 MiB of rows
    with ProcessDecoder(read_ahead_bytes=limit) as decoder:
        parts = decoder.submit(items, 1 << 25, 1_700_000_000)
        assert _WatchedWindow.waited.wait(60), "the reader never waited for the worker to take frames"
        assert 0 < _WatchedWindow.most <= limit
        taken = list(parts)
    assert [p.envelopes[0][0] for p in taken] == [m for m, _, _ in items]
    assert sum(p.size for p in taken) == 12 * 8
