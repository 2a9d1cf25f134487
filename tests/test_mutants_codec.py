"""How the endpoint cuts a request into queue messages, where `make mutation` found no test to
say so (docs/mutation.md). What a 202 promises is what the worker can store, so for any events
and any limits that each event fits alone:

- every message is within both limits: as sent (`max_message_bytes`) and inflated
  (`max_decoded_bytes`, what the worker will inflate);
- the messages' events, read back in order, are the request's events, each once;
- each message carries the request's control fields;
- a limit is inclusive: a request that fits exactly in one message is one message.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chalicelib import codec
from chalicelib.codec import CodecError, EventTooLarge, decode_body, encode_envelope, pack_events
from chalicelib.codec import dump_event as dumped

EXAMPLES = 500 if os.environ.get("FIREHOSE_FUZZ") else 60
CONTROL = {"account": "acme", "batch": 7}

_event = st.builds(
    lambda i, pad, n: {"action": "click", "tune_event_id": f"e{i}", "pad": pad, "n": n},
    st.integers(0, 10**6),
    st.text(alphabet="abcdefghij0123456789", max_size=400),
    st.integers(-(2**40), 2**40),
)


def _alone(event: dict[str, Any]) -> tuple[int, int]:
    """(bytes as sent, bytes inflated) of a message holding only this event."""
    body = encode_envelope([dumped(event)], CONTROL)
    return len(body), len(gzip.decompress(base64.b64decode(body)))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    events=st.lists(_event, min_size=1, max_size=60),
    slack_sent=st.integers(0, 6000),
    slack_decoded=st.integers(0, 12000),
)
def test_every_message_fits_and_together_they_are_the_request(
    events: list[dict[str, Any]], slack_sent: int, slack_decoded: int
) -> None:
    # Limits anywhere from "the largest event alone, exactly" upwards: each event fits alone.
    sent_limit = max(_alone(e)[0] for e in events) + slack_sent
    decoded_limit = max(_alone(e)[1] for e in events) + slack_decoded
    packed = pack_events(events, sent_limit, control=CONTROL, max_decoded_bytes=decoded_limit)
    back: list[Any] = []
    for p in packed:
        assert len(p.body) <= sent_limit
        assert len(gzip.decompress(base64.b64decode(p.body))) <= decoded_limit
        decoded = decode_body(p.body, max_bytes=decoded_limit)
        assert decoded.control.items() >= CONTROL.items(), decoded.control
        assert p.event_count == len(decoded.events) > 0
        back += decoded.events
    assert back == events


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(events=st.lists(_event, min_size=1, max_size=30))
def test_a_request_that_fits_exactly_is_one_message(events: list[dict[str, Any]]) -> None:
    body = encode_envelope([dumped(e) for e in events], CONTROL)
    inflated = len(gzip.decompress(base64.b64decode(body)))
    [one] = pack_events(events, len(body), control=CONTROL, max_decoded_bytes=inflated)
    assert one.body == body and one.event_count == len(events)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(event=_event)
def test_the_per_event_limit_is_inclusive(event: dict[str, Any]) -> None:
    size = len(dumped(event))
    [one] = pack_events([event], 10**6, max_event_bytes=size)
    assert decode_body(one.body).events == [event]
    with pytest.raises(EventTooLarge):
        pack_events([event], 10**6, max_event_bytes=size - 1)


# -- where the first survey found the rest of the module untested (docs/mutation.md) -----------------

# An event as `parse_json` gives it: floats that lose digits come back as FloatText, with their text.
_LITERALS = ["1.00000000000000000001", "0.10000000000000000000001", "-12345.678901234567891", "2.5", "1e-7"]


def _parsed(text: str) -> Any:
    return codec.parse_json(text.encode("utf-8"))


def _spelt(value: Any) -> Any:
    """The value with each float as (its type, its repr or kept text): equality that sees every digit."""
    if isinstance(value, dict):
        return {k: _spelt(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_spelt(v) for v in value]
    if type(value) is codec.FloatText:
        return ("text", value.text)
    if type(value) is float:
        return ("float", repr(value))
    return value


_json_leaf = st.one_of(
    st.sampled_from(_LITERALS),
    st.integers(-(10**6), 10**6).map(str),
    # Strings shaped like the markers that stand in for a FloatText while it is written.
    st.sampled_from(["None0", "float-text-0", "float-text--0", "x", ""]).map(json.dumps),
)
_json_text = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        )
    ),
    max_leaves=10,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(fields=st.lists(_json_text, min_size=1, max_size=4))
def test_packing_keeps_every_float_literal_and_every_other_value(fields: list[str]) -> None:
    """Money read with more digits than a float holds keeps them through the queue: what the worker
    decodes from the message is the event parsed from the request, every literal spelt as sent."""
    event = _parsed('{"action":"click",' + ",".join(f'"f{i}":{v}' for i, v in enumerate(fields)) + "}")
    [one] = pack_events([event], 10**6)
    assert _spelt(decode_body(one.body).events) == [_spelt(event)]


def _depth(value: Any) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in children), default=0)
    return 0


_floats = st.one_of(
    st.floats(allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e-4, -1e-4, 9.999999999999999e-05, 1e-5, 1e16, 9.999999999999998e15, 1.5, 1e-7]),
)
_scan_values = st.recursive(
    st.one_of(_floats, st.integers(), st.text(max_size=3), st.sampled_from(_LITERALS).map(_parsed)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=12,
)


def _holds_float_text(value: Any) -> bool:
    if isinstance(value, dict | list):
        return any(_holds_float_text(v) for v in (value.values() if isinstance(value, dict) else value))
    return type(value) is codec.FloatText


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(value=_scan_values, max_depth=st.integers(0, 5))
def test_the_packing_walk_sees_what_each_separate_question_would(value: Any, max_depth: int) -> None:
    """`_scan` answers in one walk what packing asks of an event: nested deeper than the limit (an
    object or list is a level); written by orjson byte for byte as json writes it (else the fast
    writer is skipped); holding a FloatText (whose literal must be kept). Where it is not too deep,
    each answer is the one its own walk gives."""
    scanned = codec._scan(value, max_depth)
    assert scanned.too_deep is (_depth(value) > max_depth)
    if not scanned.too_deep:
        assert scanned.same_with_orjson is codec._same_with_orjson(value)
        assert scanned.float_text is _holds_float_text(value)
    if codec._same_with_orjson(value):  # the promise the fast writer relies on (where orjson can write it)
        try:
            fast = orjson.dumps(value)
        except TypeError:  # a FloatText, a big integer: the writer falls back to json
            return
        assert fast == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _nested(levels: int) -> dict[str, Any]:
    """An event that nests objects and lists exactly `levels` deep (the event itself is one)."""
    inner: Any = "leaf"
    for _ in range(levels - 1):
        inner = [inner]
    return {"action": "click", "x": inner} if levels > 1 else {"action": "click"}


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_an_event_may_nest_as_deep_as_the_limit_and_no_deeper(limit: int) -> None:
    ok, deeper = _nested(limit), _nested(limit + 1)
    assert (_depth(ok), _depth(deeper)) == (limit, limit + 1)
    [one] = pack_events([{"action": "click"}, ok], 10**6, max_depth=limit)
    assert decode_body(one.body).events[1] == ok
    with pytest.raises(CodecError, match=rf"^event 1 nests objects or lists more than {limit} levels deep$"):
        pack_events([{"action": "click"}, deeper], 10**6, max_depth=limit)


# A lone surrogate cannot be written as UTF-8: the 400 says where it is, as a JSON pointer (RFC 6901:
# "~" written "~0", "/" written "~1"), a key cut to 40 characters, and whatever else the event holds.
LONG_KEY = "k" * 39 + "/~" + "tail"


@pytest.mark.parametrize(
    ("event", "where"),
    [
        ("\ud800", "at /"),  # the event itself is the string
        ({"action": "click", "n": 1, "z": None, "s": "\ud800", "t": "fine", "u": "é€"}, "at /s"),
        ({"action": "click", "x": [1, "é", {"a/b": {"c~d": ["ok", "\udfff"]}}]}, "at /x/2/a~1b/c~0d/1"),
        ({"action": "click", "x": {LONG_KEY: "\ud800"}}, "at /x/" + "k" * 39 + "~1"),
        ({"action": "click", "x": {"ok": 1, "bad\udc00": 2}}, "in a key at /x"),
        ({"action": "click", "x": ("\ud800",)}, "somewhere in it"),  # not from JSON: the walk does not go there
    ],
    ids=["top", "among-other-values", "escaped-pointer", "long-key", "key", "unwalked"],
)
def test_a_lone_surrogate_is_refused_saying_where_it_is(event: Any, where: str) -> None:
    expected = f"event 1 holds a lone UTF-16 surrogate {where}, which is not valid Unicode text"
    with pytest.raises(CodecError) as raised:
        pack_events([{"action": "click", "ok": "é"}, event], 10**6)
    assert str(raised.value) == expected


def test_what_cannot_be_written_is_refused_naming_the_event_and_why() -> None:
    """Values that parsed JSON never holds (the endpoint's own callers may pass them) are a
    CodecError naming the event, not a crash; so is a depth the limit was raised to let through."""
    with pytest.raises(CodecError) as raised:
        pack_events([{"action": "click"}, {"action": "click", "s": {1, 2}}], 10**6)
    assert str(raised.value) == "event 1 cannot be serialised as JSON (TypeError)"
    with pytest.raises(CodecError) as raised:
        pack_events([{"action": "click"}, _nested(5_000)], 10**6, max_depth=10**6)
    assert str(raised.value) == "event 1 is nested too deeply to serialise"


def test_an_empty_request_is_refused_in_so_many_words() -> None:
    with pytest.raises(CodecError) as raised:
        codec.validate_events([])
    assert str(raised.value) == "no events in the body"


# With two more events of pad 0 after it, an event of this pad is exactly one byte short of half the total.
PAD_BEFORE_HALF = len(dumped({"action": "click", "pad": ""})) - 2


def _sizes_of(packed: list[Any]) -> list[list[int]]:
    return [[len(dumped(e)) for e in decode_body(p.body, 10**7).events] for p in packed]


@settings(max_examples=EXAMPLES * 2, deadline=None)
@example(pads=[PAD_BEFORE_HALF, 0, 0], uniform=False)  # the first event one byte short of half
@given(pads=st.lists(st.integers(0, 60), min_size=2, max_size=8), uniform=st.booleans())
def test_a_request_just_over_one_message_is_cut_where_its_bytes_reach_half(pads: list[int], uniform: bool) -> None:
    """Split by bytes, not by count: when the whole request misses one message by a byte, it goes in
    two, the first ending with the first event at which the events' JSON reaches half its total (the
    second half when only the last event does), so neither message is larger than it must be."""
    events = [{"action": "click", "pad": "p" * (pads[0] if uniform else pad)} for pad in pads]
    sizes = [len(dumped(e)) for e in events]
    whole = len(gzip.decompress(base64.b64decode(encode_envelope([dumped(e) for e in events], CONTROL))))
    packed = pack_events(events, 10**7, control=CONTROL, max_decoded_bytes=whole - 1)
    cut = next((k for k in range(1, len(sizes)) if sum(sizes[:k]) >= sum(sizes) / 2), len(sizes) // 2)
    assert _sizes_of(packed) == [sizes[:cut], sizes[cut:]]


# -- a large message read event by event (read_body, EventStream) ------------------------------------

_small = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from([*_LITERALS, "true", "null", '"x"', '"é\\u00e9"', "[]", "{}", '{"a":[1,{"b":2}]}']),
)
_stream_event = st.one_of(
    st.builds(lambda v: '{"action":"click","v":' + v + "}", _small),
    st.just('{"action":"click","a":1,"a":2}'),  # a key named twice: the whole path's error
    _small,
)


def _fields(pairs: list[tuple[str, str]], gap: str) -> str:
    return "{" + f",{gap}".join(f"{json.dumps(k)}{gap}:{gap}{v}" for k, v in pairs) + "}"


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    """Envelopes of every shape: events with control fields before and after them, a bare list, a
    single event, no events list, a key named twice, trailing text or half a character, a cut."""
    gap = draw(st.sampled_from(["", " ", "\n\t"]))
    events = "[" + f",{gap}".join(draw(st.lists(_stream_event, max_size=4))) + gap + "]"
    before = draw(st.lists(st.tuples(st.sampled_from(["producer", "x", "events"]), _small), max_size=2))
    after = draw(
        st.lists(st.tuples(st.sampled_from(["z", "x", "events"]), st.one_of(_small, st.just(events))), max_size=2)
    )
    shape = draw(st.sampled_from(["envelope", "envelope", "envelope", "list", "event", "no-list", "scalar"]))
    text = {
        "envelope": lambda: _fields([*before, ("events", events), *after], gap),
        "list": lambda: events,
        "event": lambda: _fields([("action", '"click"'), *after], gap),
        "no-list": lambda: _fields([("x", "1"), *before], gap),
        "scalar": lambda: draw(_small),
    }[shape]()
    data = (draw(st.sampled_from(["", " ", "\n"])) + text).encode()
    data += draw(st.sampled_from([b"", b"", b" ", b" x", b",", b"]", b"\xc3", b" \xe2\x82"]))
    cut = draw(st.integers(0, 6))
    return data[: len(data) - cut] if draw(st.booleans()) else data


def _outcome(read: Any) -> tuple[Any, ...]:
    try:
        decoded = read()
    except CodecError as exc:
        return ("refused", str(exc))
    return ("read", _spelt(decoded.events), _spelt(decoded.control))


def _read_by_event(body: str | bytes) -> bool:
    """Whether the stream must read this body event by event: it decodes, and it is a list or an
    object holding an `events` list (the shapes the stream does not leave to `whole()`)."""
    try:
        doc = codec.parse_json(codec.body_to_json_bytes(body))
    except CodecError:
        return False
    return isinstance(doc, list) or (isinstance(doc, dict) and isinstance(doc.get("events"), list))


def _streamed(body: str | bytes, max_bytes: int) -> tuple[Any, ...]:
    try:
        read = codec.read_body(body, max_bytes)
    except CodecError as exc:
        return ("refused", str(exc))
    assert isinstance(read, codec.EventStream)
    events = list(read)
    if read.unusual:  # what was taken is dropped: the document is read whole, as decode_body does
        return _outcome(read.whole)
    assert read.count == len(events)
    return ("read", _spelt(events), _spelt(read.control))


@settings(max_examples=EXAMPLES * 4, deadline=None)
# A document that ends in the middle of a character (the stream's decoder must say so at the end).
@example(data=b'{"events":[{"action":"click"}]}\xc3', form="tune", piece=4, max_bytes=10**6)
@example(data=b'[{"action":"click"}] \xe2\x82', form="tune", piece=64, max_bytes=10**6)
@given(
    data=_documents(),
    form=st.sampled_from(["tune", "plain"]),
    piece=st.integers(1, 16),
    max_bytes=st.sampled_from([10**6, 40]),
)
def test_reading_event_by_event_gives_what_reading_whole_gives(
    data: bytes, form: str, piece: int, max_bytes: int
) -> None:
    """Whatever the document, the events and control fields read one event at a time (the text
    arriving in pieces of a few characters, so every value is cut somewhere) are those decode_body
    gives; where the stream cannot tell, `whole()` gives exactly decode_body's result or error. An
    envelope that decodes is read event by event, never left to `whole()`."""
    body = base64.b64encode(gzip.compress(data, mtime=0)).decode() if form == "tune" else data
    expected = _outcome(lambda: decode_body(body, max_bytes))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "STREAM_MIN_BYTES", 0)  # every message read event by event
        patch.setattr(codec, "_PIECE_BYTES", piece)
        assert _streamed(body, max_bytes) == expected
        if expected[0] == "read" and _read_by_event(body):
            stream = codec.read_body(body, max_bytes)
            assert isinstance(stream, codec.EventStream)
            assert (list(stream), stream.unusual) == (decode_body(body, max_bytes).events, False)


@pytest.mark.parametrize("piece", range(1, 17))
def test_a_number_cut_after_its_point_or_exponent_is_read_whole(piece: int) -> None:
    """A float among the envelope's own values, cut by a piece's end right after its "." or "e"
    (with every piece size from 1 to 16 some cut lands there), is read as the whole number, and the
    message is still read event by event."""
    data = b'{"events":[{"action":"click","n":1},{"action":"click"}],"payout":1.5,"rate":2e-3,"big":-10E+2}'
    body = base64.b64encode(gzip.compress(data, mtime=0)).decode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "STREAM_MIN_BYTES", 0)
        patch.setattr(codec, "_PIECE_BYTES", piece)
        stream = codec.read_body(body, 10**6)
        assert isinstance(stream, codec.EventStream)
        events = list(stream)
    assert (events, stream.unusual) == ([{"action": "click", "n": 1}, {"action": "click"}], False)
    assert stream.control == {"payout": 1.5, "rate": 2e-3, "big": -10e2}


@pytest.mark.parametrize("piece", [1, 7, 64])
def test_a_message_exactly_at_the_inflated_limit_is_read_event_by_event(piece: int) -> None:
    events = [{"action": "click", "n": i, "pad": "é" * i} for i in range(12)]
    body = encode_envelope([dumped(e) for e in events], CONTROL)
    size = len(gzip.decompress(base64.b64decode(body)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "STREAM_MIN_BYTES", 0)
        patch.setattr(codec, "_PIECE_BYTES", piece)
        stream = codec.read_body(body, size)
        assert isinstance(stream, codec.EventStream)
        assert (list(stream), stream.unusual, stream.count) == (events, False, len(events))
        assert stream.control.items() >= CONTROL.items()
        too_small = codec.read_body(body, size - 1)
        assert isinstance(too_small, codec.EventStream)
        assert len(list(too_small)) < len(events) and too_small.unusual
        with pytest.raises(codec.BodyTooLarge):
            too_small.whole()


def test_a_large_message_is_read_holding_pieces_not_the_document() -> None:
    """The point of reading event by event: a message of 16 MiB inflated is read holding a few
    pieces of 1 MiB (the inflated head, the text window), never the document or its events."""
    pad = "x" * 8192
    count = 16 * 1024 * 1024 // len(pad)
    doc = b'{"events":[' + b",".join(b'{"action":"click","n":%d,"pad":"%s"}' % (i, pad.encode()) for i in range(count))
    body = base64.b64encode(gzip.compress(doc + b'],"producer":"test"}', compresslevel=1)).decode()
    del doc
    tracemalloc.start()
    try:
        stream = codec.read_body(body)
        assert isinstance(stream, codec.EventStream)
        seen = sum(1 for event in stream if event["pad"] == pad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (seen, stream.count, stream.unusual, stream.control) == (count, count, False, {"producer": "test"})
    assert peak < 8 * 1024 * 1024, peak


# -- the fast path for an envelope exactly as orjson writes it (_decode_canonical) -------------------


@pytest.mark.parametrize(
    "doc",
    [
        b'{"events":[{"action":"click","v":0.00001,"w":[1e-7,2.5]},{"action":"open","n":1}]}',
        b'{"producer":"x","events":[{"action":"click","v":0.00001},{"action":"open","e":"\xc3\xa9"}]}',
        b'{"events":[]}',
    ],
    ids=["no-control", "control", "no-events"],
)
def test_the_fast_path_reads_what_the_full_path_reads_and_each_events_text(doc: bytes) -> None:
    """An envelope written as orjson writes it takes the fast path (with or without control fields),
    decodes as the full path does, and each event's text comes with it exactly as dump_event_text
    writes it (json's spelling, 1e-05, where orjson's 0.00001 differs)."""
    decoded = decode_body(doc)
    full = codec.split_envelope(codec.parse_json(doc))
    assert decoded.raw is not None
    assert (decoded.events, decoded.control) == (full.events, full.control)
    assert decoded.raw == [codec.dump_event_text(e) for e in decoded.events]


def _canonical_of_size(size: int) -> bytes:
    head, tail = b'{"events":[{"action":"click","pad":"', b'"}]}'
    return head + b"p" * (size - len(head) - len(tail)) + tail


def test_the_fast_path_stops_at_its_size_limit() -> None:
    """Above FAST_PATH_MAX_BYTES orjson would hold ~15 times the document: the full path reads it."""
    at_limit = _canonical_of_size(codec.FAST_PATH_MAX_BYTES)
    over = _canonical_of_size(codec.FAST_PATH_MAX_BYTES + 1)
    assert decode_body(at_limit).raw is not None
    decoded = decode_body(over)
    assert decoded.raw is None and decoded.events == codec.parse_json(over)["events"]


def test_each_message_names_its_producer_and_when_it_was_sent() -> None:
    """The envelope the endpoint writes carries, besides the request's control fields, who wrote it
    and the second it was packed (stored with the envelope, `docs/data.md`)."""
    before = int(time.time())
    events = [{"action": "click", "n": i, "pad": base64.b64encode(os.urandom(300)).decode()} for i in range(6)]
    packed = pack_events(events, 1200, control=CONTROL)
    after = int(time.time())
    assert len(packed) > 1
    for p in packed:
        control = decode_body(p.body).control
        assert control.keys() == {"producer", "sent_at", *CONTROL}
        assert control["producer"] == codec.PRODUCER == "tune-firehose"
        assert type(control["sent_at"]) is int and before <= control["sent_at"] <= after


def test_a_body_depends_on_its_events_and_send_time_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same request packed at the same `sent_at` gives the same bytes, whatever the clock says
    when gzip runs (a retried request is the same message; its gzip header holds no time)."""

    class Frozen:
        @staticmethod
        def time() -> float:
            return 1_700_000_000.5

    events = [{"action": "click", "n": i} for i in range(3)]
    monkeypatch.setattr(codec, "time", Frozen)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    first = pack_events(events, 10**6, control=CONTROL)
    monkeypatch.setattr(time, "time", lambda: 1_900_000_000.0)
    assert pack_events(events, 10**6, control=CONTROL) == first
    assert decode_body(first[0].body).control["sent_at"] == 1_700_000_000
    assert base64.b64decode(first[0].body)[4:8] == bytes(4), "gzip's MTIME field: 0, no time stamp"


# -- every rejection says what was wrong, in its own words ----------------------------------------

_DOC = json.dumps({"events": [{"action": "click", "n": i} for i in range(2000)]}).encode()
_INT_LIMIT_TEXT = (
    "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; "
    "use sys.set_int_max_str_digits() to increase the limit"
)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"", "body is empty"),
        (" \n\t", "body is empty"),
        ("héllo", "body is neither JSON, gzip nor base64 (it holds non-ASCII bytes)"),
        ("abcde", "body is neither JSON, gzip nor valid base64"),
        (base64.b64encode(b"hello").decode(), "base64 body does not hold gzip or JSON"),
        (gzip.compress(_DOC)[:2000], "gzip data is truncated"),
        ("[" * 100_000 + "]" * 100_000, "JSON is nested too deeply"),
        ("[" + "1" * 5000 + "]", "invalid JSON: " + _INT_LIMIT_TEXT[:120]),
        (
            '{"' + "k" * 100 + '":1,"' + "k" * 100 + '":2}',
            f"duplicate key {'k' * 80!r} in a JSON object (which value is meant is ambiguous)",
        ),
        (
            '{"foo":1}',
            "envelope holds no list of events (expected an 'events' list, a list, or an event with 'action')",
        ),
        ("true", "JSON must be an object or a list, got bool"),
        ("false", "JSON must be an object or a list, got bool"),
        ("null", "JSON must be an object or a list, got NoneType"),
    ],
    ids=[
        "empty",
        "blank",
        "non-ascii",
        "bad-base64",
        "base64-of-text",
        "truncated-gzip",
        "deep",
        "huge-int",
        "duplicate-key",
        "no-events",
        "true",
        "false",
        "null",
    ],
)
def test_each_rejection_says_what_is_wrong_with_the_body(body: str | bytes, said: str) -> None:
    """Both readers, the whole one and the worker's (which reads large messages event by event)."""
    with pytest.raises(CodecError) as whole:
        decode_body(body)
    assert str(whole.value) == said
    with pytest.raises(CodecError) as read:
        got = codec.read_body(body)
        if isinstance(got, codec.EventStream):
            list(got)
            got.whole()
    assert str(read.value) == str(whole.value)


def test_corrupt_gzip_is_a_codec_error_saying_so_from_both_readers() -> None:
    body = codec.GZIP_MAGIC + b"\x08junkjunk"
    for read in (decode_body, codec.read_body):
        with pytest.raises(CodecError, match=r"^gzip data is corrupt: Error -3 while decompressing data"):
            read(body)


@pytest.mark.parametrize("form", ["json", "base64-json"])
def test_a_json_body_may_be_exactly_the_limit_and_one_byte_more_is_refused_saying_the_limit(form: str) -> None:
    doc = json.dumps({"events": [{"action": "click", "n": 1}]}).encode()
    body = doc if form == "json" else base64.b64encode(doc)
    assert decode_body(body, len(doc)).events == [{"action": "click", "n": 1}]
    with pytest.raises(codec.BodyTooLarge) as refused:
        decode_body(body, len(doc) - 1)
    assert str(refused.value) == f"JSON body exceeds the limit of {len(doc) - 1} bytes"


@pytest.mark.parametrize(
    "doc", [b'{"events":[{"action":"click"}]}', b' \n[{"action":"click"}]'], ids=["object", "list"]
)
def test_base64_of_plain_json_is_read_as_json(doc: bytes) -> None:
    assert decode_body(base64.b64encode(doc)).events == [{"action": "click"}]


def test_base64_without_its_padding_and_url_safe_base64_are_read() -> None:
    for spaces in range(3):  # three lengths: once unpadded, one of them leaves len % 4 == 3
        doc = b'[{"action":"click"}]' + b" " * spaces
        assert decode_body(base64.b64encode(doc).rstrip(b"=")).events == [{"action": "click"}]
    # Four characters of the URL-safe alphabet only ('_'): a lenient standard decoder would drop them
    # and still find whole groups of four, decoding other bytes.
    doc = b'[{"pad":"????????????"}]'
    body = base64.urlsafe_b64encode(doc)
    assert body.count(b"_") == 4 and b"-" not in body
    assert decode_body(body).events == [{"pad": "?" * 12}]


def test_a_float_the_stdlib_spells_differently_is_written_compact() -> None:
    """Where orjson's spelling differs (1e20), the standard library writes the event: still compact."""
    assert codec.dump_event_text({"a": 1e20, "b": [1, 2], "é": "ü"}) == '{"a":1e+20,"b":[1,2],"é":"ü"}'


@pytest.mark.parametrize(
    ("literal", "queued"),
    [
        ("1.50", "1.5"),  # short: a float gives its value back, spelt as Python spells it
        ("0.10000000000000", "0.1"),  # 16 characters: still at most 15 significant digits
        ("0.100000000000000", "0.100000000000000"),  # 17, and not Python's spelling: kept as sent
        ("0.1000000000000001", "0.1000000000000001"),  # more digits than a float holds: kept as sent
    ],
)
def test_a_float_literal_is_queued_as_sent_only_when_a_float_could_lose_it(literal: str, queued: str) -> None:
    events = codec.parse_json(b'[{"action":"click","payout":%s}]' % literal.encode())
    (packed,) = pack_events(events, 10**6)
    text = gzip.decompress(base64.b64decode(packed.body)).decode()
    assert f'"payout":{queued}}}' in text, text


# -- which reader the worker gets: whole below STREAM_MIN_BYTES, event by event above --------------


_HEAD, _TAIL = b'{"events":[{"action":"click","pad":"', b'"}],"producer":"t"}'


def _doc_of_size(size: int) -> bytes:
    """An envelope of exactly `size` bytes: one event, padded."""
    return _HEAD + b"p" * (size - len(_HEAD) - len(_TAIL)) + _TAIL


@pytest.mark.parametrize("compressed", [False, True], ids=["json", "gzip"])
def test_a_message_is_read_whole_up_to_stream_min_bytes_and_event_by_event_above(compressed: bool) -> None:
    for size, streamed in [(1000, False), (codec.STREAM_MIN_BYTES, False), (codec.STREAM_MIN_BYTES + 1, True)]:
        doc = _doc_of_size(size)
        got = codec.read_body(gzip.compress(doc) if compressed else doc)
        assert isinstance(got, codec.EventStream) is streamed, size
        events = list(got) if isinstance(got, codec.EventStream) else got.events
        assert events == [{"action": "click", "pad": "p" * (size - len(_HEAD) - len(_TAIL))}]
        if isinstance(got, codec.EventStream):
            assert (got.unusual, got.control) == (False, {"producer": "t"})


def test_a_compressed_message_over_a_limit_below_stream_min_bytes_is_refused_at_once() -> None:
    doc = _doc_of_size(codec.STREAM_MIN_BYTES + 10)
    with pytest.raises(codec.BodyTooLarge, match=r"^decompressed body exceeds the limit of 1048576 bytes$"):
        codec.read_body(gzip.compress(doc), codec.STREAM_MIN_BYTES)


@pytest.mark.parametrize("lead", [b"", b" \n\t "], ids=["bare", "leading-whitespace"])
@pytest.mark.parametrize("extra", [0, 1, 2, 3, 8, 1000])
def test_a_large_message_is_read_event_by_event_to_its_end_wherever_its_pieces_end(lead: bytes, extra: int) -> None:
    """Sizes around whole pieces of inflated text (the last piece may be empty, the gzip trailer
    read alone), with and without whitespace before the envelope: read through, never `unusual`."""
    size = codec.STREAM_MIN_BYTES + 1 + codec._PIECE_BYTES + extra - len(lead)
    doc = lead + _doc_of_size(size)
    stream = codec.read_body(gzip.compress(doc, compresslevel=1))
    assert isinstance(stream, codec.EventStream)
    assert [len(e["pad"]) for e in stream] == [size - len(_HEAD) - len(_TAIL)]
    assert (stream.unusual, stream.count, stream.control) == (False, 1, {"producer": "t"})


def test_a_large_plain_json_message_read_whole_again_keeps_the_limit_it_was_read_with() -> None:
    """A limit set above the default (MAX_DECODED_BYTES) holds for the second, whole reading too: a
    single event (a shape read only whole) of the default limit plus one byte is read, not refused."""
    size = codec.DEFAULT_MAX_DECODED_BYTES + 1
    head, tail = b'{"action":"click","pad":"', b'"}'
    doc = head + b"p" * (size - len(head) - len(tail)) + tail
    stream = codec.read_body(doc, 2 * codec.DEFAULT_MAX_DECODED_BYTES)
    assert isinstance(stream, codec.EventStream)
    assert list(stream) == [] and stream.unusual
    (event,) = stream.whole().events
    assert len(event["pad"]) == size - len(head) - len(tail)
