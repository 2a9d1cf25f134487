"""The codec: every accepted body form round-trips; garbage raises a clear CodecError."""

from __future__ import annotations

import base64
import gzip
import json
import os
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.codec import (
    DEFAULT_MAX_DECODED_BYTES,
    Decoded,
    body_to_json_bytes,
    decode_body,
    dump_event,
    dump_event_text,
    encode_envelope,
    pack_events,
    parse_json,
    split_envelope,
    validate_events,
)
from chalicelib.errors import BodyTooLarge, CodecError, EventTooLarge, TooLarge

EVENTS = [
    {"action": "click", "tune_event_id": "a1", "offer_id": 1, "payout": 0.05},
    {"action": "conversion", "tune_event_id": "a2", "payout": 10, "revenue": "20.00"},
]


def tune_form(doc: object) -> str:
    return base64.b64encode(gzip.compress(json.dumps(doc).encode())).decode()


@pytest.mark.parametrize(
    "doc, control",
    [
        ({"events": EVENTS, "version": 3}, {"version": 3}),
        (EVENTS, {}),
        ({"batch": EVENTS, "count": 2}, {"count": 2}),  # unknown events key: the one list of objects
    ],
)
@pytest.mark.parametrize("form", ["tune", "gzip", "json", "json-bytes", "zlib-b64"])
def test_every_form_decodes_to_the_same_events(doc: object, control: dict, form: str) -> None:
    text = json.dumps(doc)
    body: str | bytes = {
        "tune": lambda: tune_form(doc),
        "gzip": lambda: gzip.compress(text.encode()),
        "json": lambda: text,
        "json-bytes": lambda: text.encode(),
        "zlib-b64": lambda: base64.b64encode(__import__("zlib").compress(text.encode())).decode(),
    }[form]()
    decoded = decode_body(body)
    assert decoded.events == EVENTS
    assert decoded.control == control


def test_single_event_is_a_list_of_one() -> None:
    assert decode_body(json.dumps(EVENTS[0])).events == [EVENTS[0]]


def test_base64_with_newlines_and_missing_padding() -> None:
    encoded = tune_form(EVENTS).rstrip("=")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert decode_body(wrapped).events == EVENTS


@pytest.mark.parametrize(
    "body, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("not base64 !!!", "neither JSON, gzip nor valid base64"),
        (base64.b64encode(b"hello world").decode(), "does not hold gzip or JSON"),
        (gzip.compress(b'{"events": [', mtime=0)[:-6], "truncated"),
        (gzip.compress(b"\xff\xfe not utf-8", mtime=0), "not valid UTF-8"),
        ('{"events": [1, 2', "invalid JSON at line 1"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('"just a string"', "must be an object or a list, got str"),
        ('{"no": "events"}', "holds no list of events"),
        (b"\x00\x01binary", "neither JSON, gzip nor valid base64"),
        (b"\xff\xfe\x00binary", "non-ASCII"),
    ],
)
def test_garbage_raises_a_clear_error(body: str | bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason.replace("(", r"\(")):
        decode_body(body)


def test_scalar_json_is_refused_with_its_type() -> None:
    with pytest.raises(CodecError, match="must be an object or a list, got int"):
        decode_body("42")


def test_decompression_is_capped_without_inflating_everything() -> None:
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")
    assert len(bomb) < 100_000
    with pytest.raises(CodecError, match="exceeds the limit of 1000000 bytes"):
        decode_body(base64.b64encode(bomb).decode(), max_bytes=1_000_000)


def test_validate_names_the_bad_event() -> None:
    validate_events(EVENTS)
    with pytest.raises(CodecError, match="no events"):
        validate_events([])
    with pytest.raises(CodecError, match="event 1 has no 'action'"):
        validate_events([EVENTS[0], {"tune_event_id": "x"}])
    with pytest.raises(CodecError, match="event 0 must be a JSON object, got list"):
        validate_events([[1]])
    with pytest.raises(CodecError, match="event 0 'action' must be a non-empty string"):
        validate_events([{"action": 7}])


def test_encode_writes_tune_form_that_decodes_back() -> None:
    body = encode_envelope([json.dumps(e).encode() for e in EVENTS], {"source": "test"})
    raw = gzip.decompress(base64.b64decode(body))
    envelope = json.loads(raw)
    assert envelope["events"] == EVENTS and envelope["source"] == "test"
    decoded = decode_body(body)
    assert decoded.events == EVENTS and decoded.control["source"] == "test"


def test_pack_uses_few_messages_each_within_the_limit() -> None:
    import random

    rng = random.Random(1)
    events = [
        {"action": "click", "tune_event_id": f"{i:032x}", "ua": "".join(rng.choice("abcdef0123") for _ in range(300))}
        for i in range(3000)
    ]
    limit = 64 * 1024
    packed = pack_events(events, limit)
    assert all(len(p.body) <= limit for p in packed)
    assert sum(p.event_count for p in packed) == len(events)
    assert [e for p in packed for e in decode_body(p.body).events] == events  # order kept, nothing lost
    total = sum(len(p.body) for p in packed)
    # "As few as fit": within one message of the lower bound set by the total size.
    assert len(packed) <= -(-total // limit) + 1


def test_pack_small_batch_is_one_message() -> None:
    packed = pack_events(EVENTS, 256 * 1024)
    assert len(packed) == 1 and packed[0].event_count == 2


def test_an_event_that_cannot_fit_alone_is_named() -> None:
    big = {"action": "click", "blob": base64.b64encode(__import__("os").urandom(4000)).decode()}
    with pytest.raises(EventTooLarge, match="event 1 does not fit"):
        pack_events([EVENTS[0], big], 2000)


# -- issue 12: the fast path is the slow path, and only CodecError ever leaves decode_body ---------------

FUZZ = os.environ.get("FIREHOSE_FUZZ") == "1"
SCALARS = [7, None, True, False, 1.5, 1e20, "text", -0.0]


@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
@pytest.mark.parametrize("form", ["compact", "pretty"])
def test_a_scalar_among_the_events_decodes_as_the_full_path_does(scalar: object, form: str) -> None:
    """Finding 1 (codec half): `{"events":[{...},7]}` in TUNE's compact form raised TypeError."""
    envelope = {"events": [{"action": "click", "tune_event_id": "x"}, scalar]}
    text = json.dumps(envelope, separators=(",", ":")) if form == "compact" else json.dumps(envelope, indent=2)
    body = base64.b64encode(gzip.compress(text.encode())).decode()
    assert decode_body(body) == slow_path(body)
    assert decode_body(body).events[1] == scalar


def slow_path(body: str | bytes, max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> Decoded:
    """What decode_body means: strip the transport, parse with the standard library, find the events."""
    return split_envelope(parse_json(body_to_json_bytes(body, max_bytes)))


def canonical(value: object) -> str:
    """Equality that also tells 1 from 1.0 and -0.0 from 0.0, and holds for NaN."""
    return json.dumps(value, ensure_ascii=True)


def outcome(fn: Callable[[], Decoded]) -> tuple[str, object]:
    try:
        decoded = fn()
    except CodecError as exc:
        return ("CodecError", type(exc))
    return ("decoded", (canonical(decoded.events), canonical(decoded.control)))


LONE_SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc00b"])


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """one_of with weights: a sampled index picks the strategy."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(pool))).flatmap(lambda i: pool[i])


PLAIN_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
HOSTILE_LEAF = st.one_of(
    st.sampled_from([2**64, -(2**63) - 1, 10**400, float("nan"), float("inf")]),
    st.sampled_from([1e-300, 5e-324, 1e16, 1e15, 1e-5, 0.0001, -0.0, 1.7976931348623157e308]),
    LONE_SURROGATES,
)
# Mostly what orjson writes as it is (so the fast path is tried), with hostile values in some places.
JSON_LEAF = weighted((40, PLAIN_LEAF), (1, HOSTILE_LEAF))
KEY = weighted((60, st.text(max_size=8)), (1, LONE_SURROGATES))


def nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEY, inner, max_size=4)),
    max_leaves=10,
)
DEEP = st.integers(min_value=200, max_value=1100).map(nested)  # around every parser's depth limit
EVENT = weighted(
    (8, st.dictionaries(KEY, JSON_VALUE, max_size=5).map(lambda d: {"action": "click", **d})),
    (1, JSON_VALUE),  # scalars, lists and objects where an event belongs
    (1, st.builds(lambda deep: {"action": "click", "x": deep}, DEEP)),
)
ENVELOPE = st.builds(
    lambda control, events: {**control, "events": events},  # "events" last, as encode_envelope writes it
    st.dictionaries(KEY.filter(lambda k: k != "events"), JSON_VALUE, max_size=3),
    weighted((6, st.lists(EVENT, max_size=5)), (1, JSON_VALUE)),
)
DOCUMENT = weighted((6, ENVELOPE), (1, st.lists(EVENT, max_size=5)), (1, JSON_VALUE), (1, DEEP))


def _orjson_compact(doc: object) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # what orjson cannot write: the standard library's compact form instead
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


PLACEHOLDER = "\x00placeholder\x00"
SPLICED = [
    b"18446744073709551616",  # over 64 bits: orjson reads a float, json an int
    b"-9223372036854775809",
    b"1E5",
    b"1e400",
    b"NaN",
    b"-Infinity",
    b'"\\ud800"',
    b'{"a":1,"a":2}',  # a key named twice
    b'"x","k":2',  # ... in the event itself
    b"1.0e0",
    b"-0",
    b"[" * 300 + b"]" * 300,
]


@st.composite
def bodies(draw: st.DrawFn) -> str | bytes:
    forms = ["orjson"] * 3 + ["spliced"] * 2 + ["compact", "compact-ascii", "pretty", "bytes", "truncated"]
    form = draw(st.sampled_from(forms))
    if form == "bytes":
        return draw(st.binary(max_size=300))
    doc = draw(DOCUMENT)
    if form == "orjson":
        data = _orjson_compact(doc)
    elif form == "spliced":  # TUNE's compact form with a literal no serialiser writes, in one event
        event = {"action": "click", "k": PLACEHOLDER}
        data = _orjson_compact({"v": 1, "events": [event, *draw(st.lists(EVENT, max_size=2))]})
        data = data.replace(orjson.dumps(PLACEHOLDER), draw(st.sampled_from(SPLICED)), 1)
    elif form in ("compact", "compact-ascii"):
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=form == "compact-ascii")
        data = text.encode("utf-8", "surrogatepass")
    else:
        data = json.dumps(doc, indent=2).encode()
    if form == "truncated":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    layer = draw(st.sampled_from(["tune", "tune", "gzip", "none", "text"]))
    if layer == "tune":
        return base64.b64encode(gzip.compress(data)).decode()
    if layer == "gzip":
        return gzip.compress(data)
    return data.decode("utf-8", "surrogatepass") if layer == "text" else data


@settings(
    max_examples=3000 if FUZZ else 600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=bodies())
def test_decode_body_is_the_slow_path_and_raises_only_codec_error(body: str | bytes) -> None:
    """Invariant: for any body, decode_body returns what the full path returns (values, number types,
    control fields), or raises CodecError exactly when the full path does; nothing else ever escapes.
    Where the fast path hands over each event's JSON, it is exactly dump_event_text's."""
    got = outcome(lambda: decode_body(body))
    assert got == outcome(lambda: slow_path(body))
    if got[0] == "decoded":
        decoded = decode_body(body)
        if decoded.raw is not None:
            assert decoded.raw == [dump_event_text(e) for e in decoded.events]


def test_an_envelope_in_compact_form_takes_the_fast_path() -> None:
    """The property above must reach the fast path, or it proves nothing about it."""
    body = encode_envelope([dump_event(e) for e in EVENTS])
    assert decode_body(body).raw is not None


# -- issue 12 finding 4: messages the worker can inflate ----------------------------------------------------


def test_packing_bounds_each_message_inflated_not_only_as_sent() -> None:
    """1e15 is written 1000000000000000.0: events that fit as sent inflate 4.5x when re-written."""
    events = [{"action": "click", "tune_event_id": f"n{i}", "v": [1e15] * 5_000} for i in range(40)]
    limit = 1_000_000
    packed = pack_events(events, 256 * 1024, max_decoded_bytes=limit)
    inflated = [len(gzip.decompress(base64.b64decode(p.body))) for p in packed]
    assert max(inflated) <= limit < sum(inflated)
    assert [e for p in packed for e in decode_body(p.body, limit).events] == events


def test_an_event_too_big_for_an_inflated_message_is_named() -> None:
    events = [EVENTS[0], {"action": "click", "v": [1e15] * 1000}]
    with pytest.raises(EventTooLarge, match=r"event 1 is 19\d\d\d bytes as JSON.*MAX_DECODED_BYTES"):
        pack_events(events, 256 * 1024, max_decoded_bytes=10_000)


def test_the_per_event_limit_counts_the_event_as_rewritten() -> None:
    small_as_sent = {"action": "click", "v": [1e15] * 100}  # 500 bytes as sent, 1,900 as written
    with pytest.raises(EventTooLarge, match=r"event 0 is 19\d\d bytes, over the 1000 byte per-event limit"):
        pack_events([small_as_sent], 256 * 1024, max_event_bytes=1000)


def test_an_event_with_a_lone_surrogate_is_named_with_where() -> None:
    with pytest.raises(CodecError, match=r"event 1 holds a lone UTF-16 surrogate at /x/1"):
        pack_events([EVENTS[0], {"action": "click", "x": ["ok", "\ud800"]}], 256 * 1024)


def test_errors_are_classes_a_caller_can_choose_by() -> None:
    assert issubclass(BodyTooLarge, TooLarge) and issubclass(EventTooLarge, TooLarge)
    assert issubclass(TooLarge, CodecError)
    bomb = gzip.compress(b"[" + b" " * 2_000_000 + b"]")
    with pytest.raises(BodyTooLarge):
        decode_body(bomb, max_bytes=1_000_000)
