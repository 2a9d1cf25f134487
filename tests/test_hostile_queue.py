"""Issue 12, finding 1 and "the class": no input on the queue may end the worker.

Messages are put straight on the queue, as TUNE (or anyone holding the queue's credentials) would,
between good messages. Whatever they hold, one `--until-empty` run exits 0, every good event is
stored exactly once, every other input is one reject row with its reason, and the queue and its
dead-letter queue end empty.
"""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import json
import marshal
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from chalicelib.queues.local import LocalQueue
from chalicelib.queues.sqs import SqsQueue, make_client
from chalicelib.settings import Settings, load_settings
from db.store import Store
from tests.faultkit import local_queue_state
from tests.kit import dlq_url, gzip_b64, make_sqs_queue, rows, run_worker_cli, send, sqs_depth, tune_message
from worker import decoders
from worker.decoders import InlineDecoder, ProcessDecoder
from worker.loop import Limits, Worker

# Finding 1, byte for byte: compact JSON (as TUNE writes it) with a scalar where an event belongs.
FINDING_1 = b'{"events":[{"action":"click","tune_event_id":"x"},7]}'
# The same with the other JSON scalars the finding names: (document, the event stored, type named).
SCALAR_POISON = [
    (FINDING_1, "x", "int"),
    (b'{"events":[{"action":"click","tune_event_id":"x-null"},null]}', "x-null", "NoneType"),
    (b'{"events":[{"action":"click","tune_event_id":"x-true"},true]}', "x-true", "bool"),
    (b'{"events":[{"action":"click","tune_event_id":"x-float"},1.5]}', "x-float", "float"),
]


def good(i: int) -> str:
    return tune_message([{"action": "click", "tune_event_id": f"good-{i}", "offer_id": i}])


def scalar_bodies() -> list[str]:
    bodies = [good(0)]
    for i, (document, _key, _kind) in enumerate(SCALAR_POISON, start=1):
        bodies += [gzip_b64(document), good(i)]
    return bodies


def assert_scalar_outcome(db: Path) -> None:
    keys = [key for (key,) in rows(db, "SELECT tune_event_id FROM events")]
    expected = {f"good-{i}" for i in range(len(SCALAR_POISON) + 1)} | {key for _d, key, _k in SCALAR_POISON}
    assert sorted(keys) == sorted(expected)  # each once, the poison envelopes' own event included
    rejects = rows(db, "SELECT event_index, reason, raw FROM rejects ORDER BY raw")
    assert [(index, raw) for index, _reason, raw in rejects] == sorted(
        [(1, raw) for raw in ("7", "null", "true", "1.5")], key=lambda r: r[1]
    )
    for _index, reason, raw in rejects:
        kind = {"7": "int", "null": "NoneType", "true": "bool", "1.5": "float"}[raw]
        assert f"must be a JSON object, got {kind}" in reason


@pytest.mark.parametrize("decode", ["inline", "process"])
def test_finding_1_scalar_events_on_the_local_queue(tmp_path: Path, decode: str) -> None:
    queue_path, db = tmp_path / "queue.db", tmp_path / "firehose.db"
    queue = LocalQueue(queue_path)
    send(queue, scalar_bodies())
    queue.close()

    done = run_worker_cli(db, f"local:{queue_path}", decode)

    assert done.returncode == 0, done.stderr[-3000:]
    assert_scalar_outcome(db)
    state = local_queue_state(queue_path)
    assert (state.visible, state.in_flight, state.dead) == (0, 0, 0)


@pytest.mark.parametrize("decode", ["inline", "process"])
def test_finding_1_scalar_events_on_sqs(
    tmp_path: Path, decode: str, sqs_settings: Settings, sqs_client: Any, moto_server: str
) -> None:
    url = sqs_settings.queue_url
    assert url is not None
    for body in scalar_bodies():  # one SendMessage each, as TUNE sends
        sqs_client.send_message(QueueUrl=url, MessageBody=body)
    db = tmp_path / "firehose.db"

    done = run_worker_cli(db, url, decode, env={"AWS_ENDPOINT_URL_SQS": moto_server})

    assert done.returncode == 0, done.stderr[-3000:]
    assert_scalar_outcome(db)
    assert sqs_depth(sqs_client, url) == (0, 0)
    assert sqs_depth(sqs_client, dlq_url(sqs_client, url)) == (0, 0)


# -- the class: arbitrary messages straight on the queue ------------------------------------------------------
#
# Every example is one queue and one database, filled with good messages (TUNE's own form, events keyed
# good-N) and between them hostile ones of four kinds:
#   events    an envelope (or a bare list) whose events list holds arbitrary JSON values: objects with
#             arbitrary values in every field the worker reads, scalars, lists;
#   envelope  an envelope with arbitrary values where the events list and the control fields belong;
#   garbage   what cannot be decoded at all: random bytes (as they are, and as base64(gzip)), truncated
#             messages, JSON scalars, documents too deep or with integers too long for any JSON parser;
# each as compact or pretty JSON, plain or as base64(gzip). Hostile events are distinct from one another
# and from the good ones (a unique marker in every object; ids either unique or unusable as keys), so no
# outcome of one can hide behind a duplicate of another, and each can be counted against the input.

FUZZ = os.environ.get("FIREHOSE_FUZZ") == "1"
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
TEXT = st.one_of(
    st.text(max_size=8),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), st.sampled_from(SURROGATES), st.text(max_size=3)),
)
EXTREMES = st.sampled_from(
    [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**40), 1e308, -1e308, 5e-324, -0.0, 1e15, 1e16,
     float("nan"), float("inf"), float("-inf"), "9223372036854775808", "--5", "1e400", "  12 ", "", "0x1F",
     "2026-11-30 12:00:00", "9999-12-31T23:59:59Z", "0001-01-01", "1" * 400, True, False, None]
)  # fmt: skip
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT, EXTREMES)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=10
)
READ_FIELDS = [
    "action", "datetime", "num", "offer_id", "affiliate_id", "goal_id", "payout", "revenue", "sale_amount",
    "current_payout", "current_revenue", "currency", "aff_sub", "status", "is_click_unique",
    "created_from_adjustment", "created_timestamp", "adjustment_timestamp", "adjust_action", "transaction_id",
]  # fmt: skip
USABLE_ACTIONS = st.sampled_from(["click", "conversion", " Impression ", "install"])
ADJUST = st.sampled_from([1, 2, "1", "2", "create", "update", " UPDATE ", 3, "delete", [2], None])
MARKER = "zz_fuzz"  # a field no column reads; its unique value keeps every hostile object distinct


class Raw(str):
    """JSON text spliced into a document as it is: nesting or numbers no serialiser would write."""


def deep_text(depth: int, kind: str) -> Raw:
    return Raw("[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth)


RAW_FRAGMENTS = st.one_of(
    st.builds(deep_text, st.integers(2, 60), st.sampled_from(["list", "object"])),  # readable
    # Past any parser, and far past: Hypothesis raises the recursion limit while it runs, and the
    # worker may run in this very process.
    st.builds(deep_text, st.integers(5_000, 20_000), st.sampled_from(["list", "object"])),
    st.integers(4_301, 6_000).map(lambda n: Raw("9" * n)),  # past Python's integer-string limit
)


@dataclass
class Counter:
    n: int = 0
    seen: set[str] = field(default_factory=set)  # the hostile values that are no objects, as JSON

    def next(self) -> int:
        self.n += 1
        return self.n

    def fresh(self, value: Any) -> bool:
        """True the first time `value` is seen in the example: a second would be a duplicate reject."""
        key = dumps(value, False, True)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@st.composite
def hostile_event(draw: st.DrawFn, ids: Counter) -> Any:
    """An arbitrary JSON value where an event belongs: mostly objects with arbitrary values in the
    fields the worker reads, sometimes a scalar or a list."""
    if draw(st.integers(0, 9)) < 2:
        value = draw(st.one_of(SCALARS, st.lists(VALUES, max_size=3)))
        if ids.fresh(value):
            return value
    n = ids.next()
    event: dict[str, Any] = {MARKER: n}
    if draw(st.booleans()):
        event["action"] = draw(st.one_of(USABLE_ACTIONS, VALUES))
    for name in draw(st.lists(st.sampled_from(READ_FIELDS), max_size=5, unique=True)):
        event[name] = draw(st.one_of(VALUES, EXTREMES, ADJUST if name == "adjust_action" else VALUES))
    # Keys: unique when usable, so no hostile event can be a duplicate of another (or of a good one).
    unusable = st.one_of(
        st.none(), st.booleans(), st.floats(), st.just(""), st.just("  "), st.lists(SCALARS, max_size=2)
    )
    for name in ("tune_event_id", "event_id"):
        choice = draw(st.integers(0, 2))
        if choice == 1:
            event[name] = f"hostile-{n}-{name}-" + draw(TEXT)
        elif choice == 2:
            event[name] = draw(unusable)
    choice = draw(st.integers(0, 3))
    if choice == 1:
        event["adjustment_sequence_id"] = 1_000_000 + n
    elif choice == 2:
        event["adjustment_sequence_id"] = draw(st.one_of(unusable, st.integers(min_value=2**63), TEXT))
    for name, value in draw(st.dictionaries(TEXT, VALUES, max_size=3)).items():
        event.setdefault(name, value)
    if draw(st.integers(0, 9)) == 0:
        event["x_raw"] = draw(RAW_FRAGMENTS)
    return event


def dumps(doc: Any, pretty: bool, ascii_only: bool) -> str:
    """JSON text of `doc`, with each `Raw` spliced in as it is."""
    fragments: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Raw):
            fragments.append(value)
            return f"\x00raw{len(fragments) - 1}\x00"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(doc), indent=2 if pretty else None, separators=None if pretty else (",", ":"),
                      ensure_ascii=ascii_only)  # fmt: skip
    for i, fragment in enumerate(fragments):
        text = text.replace(json.dumps(f"\x00raw{i}\x00", ensure_ascii=ascii_only), fragment)
    return text


def as_body(text: str, b64gz: bool) -> str:
    if b64gz:
        return gzip_b64(text.encode("utf-8"))
    return text


def parses(text: str) -> Any:
    """What Python's own JSON parser makes of `text` (the documented reading), or a marker if nothing."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return UNREADABLE


UNREADABLE = object()
SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")  # what SQS accepts in a body


def readable_container(body: str) -> bool:
    """True when a body meant as garbage could be read as events after all (random bytes rarely are)."""
    candidates = [body]
    try:
        inner = base64.b64decode(body + "=" * (-len(body) % 4))
        candidates.append(gzip.decompress(inner).decode("utf-8") if inner[:2] == b"\x1f\x8b" else inner.decode("utf-8"))
    except (ValueError, OSError, EOFError, UnicodeDecodeError, zlib.error):
        pass
    return any(isinstance(parses(c.strip()), (list, dict)) for c in candidates)


@dataclass
class Input:
    body: str
    kind: str  # good, events, envelope, garbage
    events: int = 0  # for good and events: how many events it holds
    keys: list[str] = field(default_factory=list)  # for good: the keys that must be stored once


@st.composite
def hostile_message(draw: st.DrawFn, ids: Counter) -> Input:
    kind = draw(st.sampled_from(["events", "events", "envelope", "garbage"]))
    pretty, ascii_only, b64gz = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    if kind == "events":
        events = draw(st.lists(hostile_event(ids), min_size=1, max_size=6, unique_by=lambda e: dumps(e, False, True)))
        control = {
            MARKER: ids.next(),
            **draw(st.dictionaries(TEXT.filter(lambda k: k not in CONTROL_KEYS), VALUES, max_size=2)),
        }
        doc: Any = events if draw(st.integers(0, 4)) == 0 else {**control, "events": events}
    elif kind == "envelope":
        doc = {
            MARKER: ids.next(),
            **draw(st.dictionaries(TEXT.filter(lambda k: k not in CONTROL_KEYS), VALUES, max_size=3)),
        }
        doc["events"] = draw(st.one_of(SCALARS, st.dictionaries(TEXT, VALUES, max_size=3), RAW_FRAGMENTS))
        if draw(st.booleans()):
            doc["action"] = draw(st.one_of(USABLE_ACTIONS, VALUES))
    else:
        return draw(garbage())
    # Lone surrogates cannot be written as UTF-8 text, nor some characters in an SQS body: such a
    # document is written with JSON escapes.
    text = dumps(doc, pretty, ascii_only)
    if not _is_utf8(text) or SQS_TEXT.search(text):
        text = dumps(doc, pretty, True)
    if parses(text) is UNREADABLE:  # too deep, or an integer too long for any parser: garbage after all
        return Input(as_body(text, b64gz), "garbage")
    if kind == "events":
        return Input(as_body(text, b64gz), kind, events=len(events))
    return Input(as_body(text, b64gz), kind)


CONTROL_KEYS = {"events", "action", "tune_event_id", "event_id", "adjustment_sequence_id", MARKER}


@st.composite
def garbage(draw: st.DrawFn) -> Input:
    shape = draw(st.sampled_from(["bytes", "bytes-b64gz", "truncated", "scalar"]))
    if shape == "bytes":
        body = SQS_TEXT.sub("", draw(st.binary(min_size=1, max_size=300)).decode("latin-1")) or "\x7f"
    elif shape == "bytes-b64gz":
        body = gzip_b64(draw(st.binary(max_size=300)))
    elif shape == "truncated":
        whole = as_body(dumps({"events": [{"action": "click", "tune_event_id": "cut"}]}, draw(st.booleans()), True),
                        draw(st.booleans()))  # fmt: skip
        body = whole[: draw(st.integers(1, len(whole) - 1))]
    else:
        body = as_body(dumps(draw(SCALARS), False, True), draw(st.booleans()))
    assume(body.strip() and not readable_container(body))
    return Input(body, "garbage")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@st.composite
def queue_inputs(draw: st.DrawFn) -> list[Input]:
    """Good messages with hostile ones between them."""
    ids, good = Counter(), Counter()
    inputs: list[Input] = []
    # Distinct bodies: the same bad input twice is one reject (by design: a redelivery adds no row).
    for hostile in draw(st.lists(hostile_message(ids), min_size=1, max_size=6, unique_by=lambda i: i.body)):
        keys = [f"good-{good.next()}" for _ in range(draw(st.integers(1, 3)))]
        inputs.append(
            Input(
                tune_message([{"action": "click", "tune_event_id": k, "offer_id": 1} for k in keys]),
                "good",
                len(keys),
                keys,
            )
        )
        inputs.append(hostile)
    keys = [f"good-{good.next()}"]
    inputs.append(Input(tune_message([{"action": "click", "tune_event_id": keys[0]}]), "good", 1, keys))
    return inputs


def check_outcome(db: Path, inputs: list[Input], message_ids: list[str]) -> None:
    """Every good event stored once; every hostile input one outcome each, every reject with a reason."""
    good = [k for i in inputs for k in i.keys]
    stored = [k for (k,) in rows(db, "SELECT tune_event_id FROM events WHERE tune_event_id LIKE 'good-%'")]
    assert sorted(stored) == sorted(good)
    envelopes = dict(rows(db, "SELECT message_id, event_count FROM envelopes"))
    assert sorted(envelopes) == sorted(message_ids)  # every message once
    assert not rows(db, "SELECT reason FROM rejects WHERE trim(reason) = ''")
    whole = {m for (m,) in rows(db, "SELECT message_id FROM rejects WHERE event_index IS NULL")}
    hostile_stored = len(rows(db, "SELECT 1 FROM events WHERE tune_event_id NOT LIKE 'good-%'"))
    hostile_stored += len(rows(db, "SELECT 1 FROM adjustments"))
    event(f"hostile events stored: {'some' if hostile_stored else 'none'}")
    event(f"events rejected: {'some' if rows(db, 'SELECT 1 FROM rejects WHERE event_index IS NOT NULL') else 'none'}")
    for item, message_id in zip(inputs, message_ids, strict=True):
        outcomes = sum(
            n
            for (n,) in rows(
                db,
                "SELECT count(*) FROM events WHERE message_id = ?1 UNION ALL "
                "SELECT count(*) FROM adjustments WHERE message_id = ?1 UNION ALL "
                "SELECT count(*) FROM rejects WHERE message_id = ?1 AND event_index IS NOT NULL",
                message_id,
            )
        )
        what = f"{item.kind} message {item.body[:300]!r}"
        event(f"{item.kind} message: {'rejected whole' if message_id in whole else f'{outcomes} event outcomes'}")
        if item.kind == "garbage":
            assert message_id in whole and envelopes[message_id] == 0 and outcomes == 0, what
        elif item.kind in ("good", "events"):
            assert message_id not in whole and envelopes[message_id] == item.events == outcomes, what
        elif message_id in whole:  # envelope: rejected whole, or each event it turned out to hold accounted for
            assert envelopes[message_id] == 0 and outcomes == 0, what
        else:
            assert envelopes[message_id] == outcomes, what


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples * 10 if FUZZ else examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
    )  # fmt: skip


@pytest.fixture(scope="module")
def helper() -> Iterator[ProcessDecoder]:
    """One helper process for every example (a dead one is replaced by the decoder itself)."""
    with ProcessDecoder() as decoder:
        yield decoder.start()


LIMITS = st.sampled_from([3, 50, 5_000])  # events per transaction: cut hostile groups too
# Short, so a message the worker cannot settle comes back (and dead-letters) within seconds, not minutes.
VISIBILITY = 3


@pytest.mark.parametrize("decode", ["inline", "process"])
@fuzz_settings(50)
@given(inputs=queue_inputs(), max_events=LIMITS)
def test_no_message_on_the_local_queue_ends_the_worker(
    decode: str, helper: ProcessDecoder, tmp_path_factory: pytest.TempPathFactory, inputs: list[Input], max_events: int
) -> None:
    work = tmp_path_factory.mktemp("example")
    queue = LocalQueue(work / "queue.db")
    try:
        result = queue.send_all([i.body for i in inputs])
        assert result.ok, result.failed
        store = Store.open(work / "firehose.db")
        try:
            decoder = helper if decode == "process" else InlineDecoder()
            worker = Worker(
                queue,
                store,
                Limits(wait_seconds=0, visibility_timeout=VISIBILITY, max_batch_events=max_events),
                out=None,
                decoder=decoder,
            )
            assert worker.run(until_empty=True) == 0
        finally:
            store.close()
        check_outcome(work / "firehose.db", inputs, result.message_ids)
        depth = queue.depth()
        assert (depth.visible, depth.in_flight, depth.dead or 0) == (0, 0, 0)
    finally:
        queue.close()


@pytest.mark.parametrize("decode", ["inline", "process"])
@fuzz_settings(20)
@given(inputs=queue_inputs(), max_events=LIMITS)
def test_no_message_on_sqs_ends_the_worker(
    decode: str,
    helper: ProcessDecoder,
    tmp_path_factory: pytest.TempPathFactory,
    sqs_client: Any,
    moto_server: str,
    inputs: list[Input],
    max_events: int,
) -> None:
    work = tmp_path_factory.mktemp("example")
    url, dlq = make_sqs_queue(sqs_client, f"hostile-{next(_queue_names)}")
    settings_ = load_settings(
        {"QUEUE_URL": url, "AWS_ENDPOINT_URL_SQS": moto_server, "AWS_REGION": "us-east-1"}, dotenv_path=None
    )
    queue = SqsQueue(url, _client(settings_))
    message_ids = [sqs_client.send_message(QueueUrl=url, MessageBody=i.body)["MessageId"] for i in inputs]
    store = Store.open(work / "firehose.db")
    try:
        decoder = helper if decode == "process" else InlineDecoder()
        worker = Worker(
            queue,
            store,
            Limits(wait_seconds=0, visibility_timeout=VISIBILITY, max_batch_events=max_events),
            out=None,
            decoder=decoder,
        )
        assert worker.run(until_empty=True) == 0
    finally:
        store.close()
    check_outcome(work / "firehose.db", inputs, message_ids)
    assert sqs_depth(sqs_client, url) == (0, 0)
    assert sqs_depth(sqs_client, dlq) == (0, 0)


_queue_names = itertools.count()
_clients: dict[str, Any] = {}


def _client(settings_: Settings) -> Any:
    """One boto3 client for every example (making one costs more than a drain)."""
    if "sqs" not in _clients:
        _clients["sqs"] = make_client(settings_)
    return _clients["sqs"]


def test_a_message_the_helper_cannot_finish_is_decoded_by_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """If decoding fails inside the helper all the same (out of memory, say), the helper goes on
    with the next message and the worker decodes that one itself: the same rows, nothing lost."""
    items = [
        (f"m{i}", tune_message([{"action": "click", "tune_event_id": f"e{i}-{j}"} for j in range(3)]), 1)
        for i in range(3)
    ]
    real = decoders.decode_message

    def failing(item: Any, max_decoded_bytes: int, now: int) -> Any:
        if item[0] == "m1":
            raise MemoryError
        return real(item, max_decoded_bytes, now)

    requests, replies = io.BytesIO(), io.BytesIO()
    decoders._write_frame(requests, marshal.dumps((items, 1 << 20, 1_700_000_000)))
    requests.seek(0)
    monkeypatch.setattr(decoders, "decode_message", failing)
    decoders.serve(requests, replies)  # the helper's loop, here: it must not raise
    monkeypatch.setattr(decoders, "decode_message", real)

    replies.seek(0)
    reply = decoders._Reply(decoders._Window(1 << 20))
    while (frame := decoders._read_frame(replies)) is not None:
        if frame:
            reply.put(frame)
    reply.end()
    parts = list(decoders._HelperParts(reply, items, 1 << 20, 1_700_000_000))
    assert [p.envelopes[0][0] for p in parts] == ["m0", "m1", "m2"]
    for part, item in zip(parts, items, strict=True):
        here = real(item, 1 << 20, 1_700_000_000)
        assert [r[0] for r in part.events] == [r[0] for r in here.events] and not part.rejects
