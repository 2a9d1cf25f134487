"""Issue 12, finding 6: the worker's memory is bounded by decoded bytes and events, not by messages.

A transaction holds at most `max_batch_events` events and `max_batch_bytes` of decoded text,
counted after decoding, whichever decoder; a message larger than either is written alone. The
helper process crosses a large message in pieces, and the worker never holds more than its
read-ahead of the helper's output. A large message is read event by event, with exactly the
result of reading it whole, and no process holds its text, its events or its rows at once. The
limits are lowered here so that small messages exercise them; one test measures the real
worker's peak memory on large messages, and `make bench` that of the real shapes (bench/memory.py).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import codec
from chalicelib.codec import dump_event, encode_envelope
from chalicelib.queues.local import LocalQueue
from db.batch import Incoming, Rows, Streamed
from db.store import CACHE_KIB, Store, WriteStats
from tests.kit import rows, send
from tests.ops_kit import examples
from worker import decoders
from worker.decoders import (
    CHUNK_BYTES,
    READ_AHEAD_BYTES,
    Decoder,
    InlineDecoder,
    ProcessDecoder,
    decode_batch,
    decode_message,
)
from worker.loop import Limits, Worker
from worker.rows import Batch

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


# -- reading a large message event by event (chalicelib.codec.EventStream) --------------------------


class FloatLiteral:
    """A number literal written as is (one no float holds exactly, or out of range)."""

    def __init__(self, text: str) -> None:
        self.text = text


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1e400", "1.00000000000000000001", "-0.0", "12345678901234567890123"]).map(FloatLiteral),
    st.text(max_size=12),
    st.sampled_from(["\ud800", "é€😀", "\\", '"', "\u2028"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_events = st.one_of(
    st.fixed_dictionaries(
        {"action": st.sampled_from(["click", "conversion", "", " "]), "tune_event_id": st.text(max_size=6)},
        optional={"payout": _scalars, "num": _scalars, "offer_id": _scalars, "adjust_action": _scalars, "x": _values},
    ),
    _values,
)


def _json(value: Any, style: str) -> str:
    """JSON text in one of the forms a producer may write (FloatLiteral is written as its literal)."""
    if isinstance(value, FloatLiteral):
        return value.text
    if isinstance(value, list):
        parts = [_json(v, style) for v in value]
        return "[" + (", " if style == "pretty" else ",").join(parts) + "]"
    if isinstance(value, dict):
        sep = ": " if style == "pretty" else ":"
        items = [json.dumps(k) + sep + _json(v, style) for k, v in value.items()]
        return "{" + (",\n " if style == "pretty" else ",").join(items) + "}"
    return json.dumps(value, ensure_ascii=style == "ascii")


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """Envelopes in every shape `decode_body` reads (and some it rejects), in several spellings,
    sometimes damaged: control fields before and after the events, a bare list, a key named twice,
    a single event, no list at all, trailing text, a cut."""
    events = draw(st.lists(_events, max_size=6))
    style = draw(st.sampled_from(["compact", "pretty", "ascii"]))
    # Fields as (name, value) pairs, so that a name can come twice.
    before = draw(st.lists(st.tuples(st.sampled_from(["producer", "sent_at", "x"]), _values), max_size=3))
    later = st.one_of(_values, st.lists(_events, max_size=2))
    after = draw(st.lists(st.tuples(st.sampled_from(["z", "x", "events"]), later), max_size=1))
    shape = draw(st.sampled_from(["envelope", "envelope", "list", "other"]))
    if shape == "list":
        text = _json(events, style)
    elif shape == "envelope":
        fields = [json.dumps(k) + ":" + _json(v, style) for k, v in [*before, ("events", events), *after]]
        text = "{" + ",".join(fields) + "}"
    else:
        text = _json(draw(_values), style)
    data = (draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", " ", "\n", " x"]))).encode(
        "utf-8", "surrogatepass"
    )
    cut = draw(st.integers(0, 20))
    return data[: len(data) - cut] if cut and draw(st.booleans()) else data


def _body(document: bytes, form: str) -> str:
    if form == "plain":  # a queue body is text: a document that is not UTF-8 cannot be sent plain
        return document.decode("utf-8", "replace")
    packed = gzip.compress(document, mtime=0)
    if form == "truncated":
        packed = packed[: max(2, len(packed) // 2)]
    return base64.b64encode(packed).decode()


def _decoded(body: str, max_bytes: int) -> tuple[Any, ...]:
    batch = Batch()
    batch.add_message("m", body, 1, max_bytes, 1_700_000_000)
    return as_stored(batch), batch.decoded_bytes, batch.size


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=documents(),
    form=st.sampled_from(["tune", "tune", "plain", "truncated"]),
    piece=st.integers(1, 64),
    max_bytes=st.sampled_from([32 << 20, 64]),
)
def test_a_message_read_event_by_event_gives_exactly_the_rows_of_one_read_whole(
    document: bytes, form: str, piece: int, max_bytes: int
) -> None:
    """Whatever the body holds, reading it event by event (in pieces of a few bytes here, so every
    value is cut somewhere) gives the very rows, rejects and reasons, and sizes, that decoding the
    whole document gives; where it cannot, it falls back to exactly that."""
    body = _body(document, form)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "STREAM_MIN_BYTES", 1 << 40)  # never streamed: the reference
        whole = _decoded(body, max_bytes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "STREAM_MIN_BYTES", 0)  # always streamed
        patch.setattr(codec, "_PIECE_BYTES", piece)
        streamed = _decoded(body, max_bytes)
    assert streamed == whole


# -- peak memory of the real worker and its helper, by bytes (issue 12: "memory bounded by bytes") --

HUGE_EVENTS, HUGE_PAD = 3_000, 8 * 1024  # one message: ~24 MiB of decoded text, under MAX_DECODED_BYTES


def _peak_of(pid: int) -> float:
    """A process's high-water resident set in bytes (VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _drain_peak(queue_path: Path, db: Path, decode: str) -> float:
    """Drain with `read_queue.py --until-empty` as a child process, reading the high-water mark of it
    and of every process it starts (the decoding helper) from /proc until it exits: the sum of their
    peaks, in bytes (an upper bound of what they held together)."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUE_URL", "DB_PATH", "FIREHOSE_TOKEN")}
    args = [sys.executable, str(root / "read_queue.py"), "--until-empty", "--quiet", "--wait-seconds", "0"]
    args += ["--db", str(db), "--queue-url", f"local:{queue_path}", "--decode", decode]
    peaks: dict[int, float] = {}
    with subprocess.Popen(args, cwd=db.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as child:
        while True:
            for pid in [child.pid, *_children(child.pid)]:
                peaks[pid] = max(peaks.get(pid, 0), _peak_of(pid))
            try:
                child.wait(timeout=0.01)  # a polling interval: the peaks are high-water marks, none is missed
                break
            except subprocess.TimeoutExpired:
                continue
        stderr = child.stderr.read() if child.stderr else b""
    assert child.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return sum(peaks.values())


@pytest.mark.parametrize("decode", ["inline", "process"])
def test_peak_memory_of_worker_and_helper_grows_with_bytes_held_not_with_message_size(
    tmp_path: Path, decode: str
) -> None:
    """Draining messages that each inflate to ~24 MiB takes the worker and its helper no further
    above a drain of small messages than their fixed buffers (SQLite's page cache, which a larger
    database fills; the read-ahead of the helper's output) plus one such message's text: no
    process holds a message's text, its parsed events and its rows at once. (Before large messages
    were read event by event, they took about 145 MiB more here, the fixed buffers included.)"""
    huge = [message(f"h{i}", HUGE_EVENTS, HUGE_PAD) for i in range(4)]
    message_bytes = HUGE_EVENTS * HUGE_PAD
    peaks = {}
    for name, bodies in (("small", [message(f"s{i}", 100) for i in range(4)]), ("huge", huge)):
        queue = LocalQueue(tmp_path / f"{name}-queue.db", max_message_bytes=64 << 20)
        send(queue, bodies)
        queue.close()
        peaks[name] = _drain_peak(tmp_path / f"{name}-queue.db", tmp_path / f"{name}.db", decode)
    assert rows(tmp_path / "huge.db", "SELECT count(*) FROM events") == [(4 * HUGE_EVENTS,)]
    allowance = CACHE_KIB * 1024 + (READ_AHEAD_BYTES if decode == "process" else 0) + message_bytes
    growth = peaks["huge"] - peaks["small"]
    assert growth <= allowance, f"{growth / 2**20:.0f} MiB above small messages, allowed {allowance / 2**20:.0f}"


class FailingOnce(Store):
    """The real store, whose first write of the large message fails once its first chunk of rows is
    in (the transaction is rolled back)."""

    failed = False

    def _insert(self, batch: Rows) -> WriteStats:
        stats = super()._insert(batch)
        if not FailingOnce.failed and any(row[0].startswith("big-") for row in batch.events):
            FailingOnce.failed = True
            raise RuntimeError("refused half-way")
        return stats


def test_a_large_message_whose_write_fails_half_way_is_written_again_whole(
    local_queue: LocalQueue, tmp_path: Path, decoder: Decoder
) -> None:
    """A large message crosses to the store chunk by chunk and no copy of its rows is kept; when its
    transaction fails after some chunks, the worker writes it again alone, reading its rows again
    (decoding it again from its body): every event once, the same rows as decoding it here."""
    body = message("big", 40, CHUNK_BYTES // 10)  # ~4 MiB: read event by event, ~4 chunks
    assert isinstance(decode_message(("big", body, 1), 1 << 25, 1), Streamed)
    send(local_queue, [message("small", 3), body])
    FailingOnce.failed = False
    store = FailingOnce.open(tmp_path / "f.db")
    worker = Worker(local_queue, store, Limits(wait_seconds=0), out=None, decoder=decoder)
    assert worker.run(until_empty=True) == 0
    store.close()
    assert FailingOnce.failed
    keys = [k for (k,) in rows(tmp_path / "f.db", "SELECT tune_event_id FROM events ORDER BY rowid")]
    assert sorted(keys) == sorted([f"small-{i}" for i in range(3)] + [f"big-{i}" for i in range(40)])
    assert rows(tmp_path / "f.db", "SELECT count(*) FROM envelopes") == [(2,)]
    assert local_queue.depth().visible == 0 and local_queue.depth().in_flight == 0


def test_a_large_part_replays_its_rows_when_the_write_is_retried() -> None:
    """`Incoming.parts()` iterated again (a write retried after a lock) gives a large message's rows
    again, though the first pass kept none of them, whichever decoder made the part."""
    items = [("big", message("big", 40, CHUNK_BYTES // 10), 1), ("small", message("small", 2), 1)]
    expected = decode_batch(items, 1 << 25, 1_700_000_000)
    for decoder in (InlineDecoder(), ProcessDecoder()):
        with contextlib.closing(decoder):
            batch = Incoming(decoder.submit(items, 1 << 25, 1_700_000_000))
            first = batch.parts()
            next(first), next(first)  # half-way through the large message: the write failed there
            again = Rows()
            for chunk in batch.parts():
                again.extend(chunk)
            assert as_stored(again) == as_stored(expected)
            assert sum(p.size for p in batch.taken()) == expected.size
