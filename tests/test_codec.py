"""The codec: every accepted body form round-trips; garbage raises a clear CodecError."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from chalicelib.codec import (
    CodecError,
    EventTooLarge,
    decode_body,
    encode_envelope,
    pack_events,
    validate_events,
)

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
        (gzip.compress(b'{"events": [')[:-6], "truncated"),
        (gzip.compress(b"\xff\xfe not utf-8"), "not valid UTF-8"),
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
