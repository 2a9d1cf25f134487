"""Issue 5, item 3: poison and bad data.

Every bad input is tried twice: as a POST to the endpoint (it must answer 4xx with a clear
reason and enqueue nothing, or accept it so that the worker rejects it with a clear reason), and
as a message put straight on the queue, as TUNE would (the worker must store a reject with a
clear reason, delete the message and keep going). Good messages are interleaved with the bad
ones; every good event must be stored exactly once.

The gzip bomb is checked with a spy on the inflater: refusing it must not inflate more than the
limit (plus one byte), neither on the endpoint nor on the worker.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from chalice.test import Client

import app as app_module
from bench.generate import Generator
from chalicelib import codec
from chalicelib.codec import decode_body
from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings
from db.store import Store
from tests.faultkit import Expected, assert_exactly_once, tune_body
from worker.loop import Limits, Worker

MB = 1024 * 1024
BOMB_INFLATED = 100 * MB


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def b64gz(data: bytes) -> str:
    return base64.b64encode(gz(data)).decode("ascii")


def bomb() -> bytes:
    """A ~100 KB gzip stream that inflates to 100 MiB of zeros."""
    out = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(MB)
    return b"".join(out.compress(chunk) for _ in range(BOMB_INFLATED // MB)) + out.flush()


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


GOOD = {"action": "click", "tune_event_id": "good-in-poison-envelope", "offer_id": 1}


def envelope(*events: Any) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def huge_int_event() -> bytes:
    return b'{"events":[{"action":"click","tune_event_id":"big","num":' + b"9" * 5000 + b"}]}"


# (name, the raw JSON document or bytes, reason the worker gives, event ids of the same envelope
#  that must still be stored)
POISON: list[tuple[str, bytes, str, list[str]]] = [
    ("not-utf8", b'{"events":[{"action":"click","tune_event_id":"u","aff_sub":"\xff\xfe"}]}', "not valid UTF-8", []),
    ("json-number", b"42", "must be an object or a list, got int", []),
    ("json-string", b'"just a string"', "must be an object or a list, got str", []),
    ("json-null", b"null", "must be an object or a list, got NoneType", []),
    ("no-action", envelope(GOOD, {"tune_event_id": "no-action"}), "event 1: has no 'action'", [GOOD["tune_event_id"]]),
    ("action-not-string", envelope({"action": 7, "tune_event_id": "a7"}), "'action' must be a non-empty string", []),
    ("payout-inf", envelope({"action": "conversion", "tune_event_id": "inf", "payout": 1e400}), "out of range", []),
    ("payout-nan", b'{"events":[{"action":"click","tune_event_id":"nan","payout":NaN}]}', "out of range", []),
    ("num-2^70", envelope({"action": "click", "tune_event_id": "n70", "num": 2**70}), "num is out of range", []),
    (
        "seq-2^64",
        envelope({"action": "click", "adjust_action": 2, "tune_event_id": "x", "adjustment_sequence_id": 2**64}),
        "adjustment_sequence_id must be a 64-bit integer",
        [],
    ),
    ("int-5000-digits", huge_int_event(), "integer string conversion", []),
    (
        "string-10MB",
        envelope({"action": "click", "tune_event_id": "big-string", "aff_sub": "x" * (10 * MB)}, GOOD),
        "per-event limit",
        [GOOD["tune_event_id"]],
    ),
    (
        "nesting-10000",
        b'{"events":[{"action":"click","tune_event_id":"deep","x":' + deep(10_000).encode() + b"}]}",
        "nested too deeply",
        [],
    ),
    (
        "duplicate-keys",
        b'{"events":[{"action":"click","tune_event_id":"d1","tune_event_id":"d2"}]}',
        "duplicate key 'tune_event_id'",
        [],
    ),
    (
        "duplicate-envelope-keys",
        b'{"events":[],"events":[{"action":"click","tune_event_id":"d3"}]}',
        "duplicate key 'events'",
        [],
    ),
]

# Message bodies that are broken below the JSON layer.
RAW_POISON: list[tuple[str, str, str]] = [
    ("truncated-gzip", base64.b64encode(gz(envelope(GOOD))[:-12]).decode(), "gzip data is"),
    ("truncated-gzip-header", base64.b64encode(gz(envelope(GOOD))[:6]).decode(), "gzip data is"),
    ("invalid-base64", "@@@ this is not base64 %%% !!!", "base64"),
    ("base64-of-garbage", base64.b64encode(b"\x00\x01garbage that is neither").decode(), "does not hold gzip or JSON"),
    ("gzip-bomb", base64.b64encode(bomb()).decode(), "exceeds the limit"),
]


class InflateSpy:
    """Stands in for the zlib module inside codec; counts every byte the codec inflates."""

    def __init__(self) -> None:
        self.per_stream: list[int] = []  # bytes inflated by each inflater the codec made
        self.error = zlib.error

    @property
    def inflated(self) -> int:
        """The most any one stream was inflated."""
        return max(self.per_stream, default=0)

    @property
    def objects(self) -> int:
        return len(self.per_stream)

    def decompressobj(self, *args: Any, **kwargs: Any) -> Any:
        index = len(self.per_stream)
        self.per_stream.append(0)
        real = zlib.decompressobj(*args, **kwargs)
        spy = self

        class Inflater:
            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                out = real.decompress(data, max_length)
                spy.per_stream[index] += len(out)
                return out

            def flush(self, *a: Any) -> bytes:
                out = real.flush(*a)
                spy.per_stream[index] += len(out)
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        return Inflater()

    def __getattr__(self, name: str) -> Any:
        return getattr(zlib, name)


@pytest.fixture()
def inflate_spy(monkeypatch: pytest.MonkeyPatch) -> InflateSpy:
    spy = InflateSpy()
    monkeypatch.setattr(codec, "zlib", SimpleNamespace(decompressobj=spy.decompressobj, error=zlib.error))
    return spy


# -- the endpoint -------------------------------------------------------------------------------------


@pytest.fixture()
def endpoint(tmp_path: Path) -> Iterator[tuple[Client, LocalQueue]]:
    queue = LocalQueue(tmp_path / "queue.db")
    settings = load_settings({"QUEUE_URL": f"local:{queue.path}"}, dotenv_path=None)
    app_module.runtime.reset(settings=settings, queue=queue)
    with Client(app_module.app) as client:
        yield client, queue
    app_module.runtime.reset()
    queue.close()


def queued(queue: LocalQueue) -> int:
    depth = queue.depth()
    return depth.visible + depth.in_flight


# HTTP forms of the poison: (name, body, content type, extra headers, status, reason)
HTTP_POISON: list[tuple[str, bytes, str, dict[str, str], int, str]] = [
    ("truncated-gzip", gz(envelope(GOOD))[:-12], "application/json", {"Content-Encoding": "gzip"}, 400, "gzip data is"),
    ("truncated-gzip-type", gz(envelope(GOOD))[:-12], "application/gzip", {}, 400, "gzip data is"),
    ("invalid-base64", b"@@@ this is not base64 %%% !!!", "text/plain", {}, 400, "base64"),
    (
        "not-utf8-raw",
        b'{"events":[{"action":"click","aff_sub":"\xff\xfe"}]}',
        "application/json",
        {},
        400,
        "not valid UTF-8",
    ),
    ("not-utf8-gzip", gz(b'[{"action":"click","x":"\xc3\x28"}]'), "application/gzip", {}, 400, "not valid UTF-8"),
    ("json-number", b"42", "application/json", {}, 400, "must be an object or a list"),
    ("json-string", b'"hello"', "application/json", {}, 400, "must be an object or a list"),
    ("json-true", b"true", "application/json", {}, 400, "must be an object or a list"),
    ("json-number-b64gz", b64gz(b"42").encode(), "text/plain", {}, 400, "must be an object or a list"),
    ("no-action", envelope(GOOD, {"tune_event_id": "x"}), "application/json", {}, 400, "event 1 has no 'action'"),
    ("object-without-events", b'{"foo": 1}', "application/json", {}, 400, "no list of events"),
    ("int-5000-digits", huge_int_event(), "application/json", {}, 400, "integer string conversion"),
    (
        "string-10MB-plain",
        envelope({"action": "click", "aff_sub": "x" * (10 * MB)}),
        "application/json",
        {},
        413,
        "byte limit",
    ),
    (
        "string-10MB-gzip",
        gz(envelope({"action": "click", "aff_sub": "x" * (10 * MB)})),
        "application/json",
        {"Content-Encoding": "gzip"},
        413,
        "per-event limit",
    ),
    (
        "string-2MB-ndjson",
        json.dumps({"action": "click", "aff_sub": "y" * (2 * MB)}).encode(),
        "application/x-ndjson",
        {},
        413,
        "per-event limit",
    ),
    (
        "nesting-10000",
        b'[{"action":"click","x":' + deep(10_000).encode() + b"}]",
        "application/json",
        {},
        400,
        "nested too deeply",
    ),
    ("nesting-10000-bare", deep(10_000).encode(), "application/json", {}, 400, "nested too deeply"),
    (
        "duplicate-keys",
        b'[{"action":"click","tune_event_id":"a","tune_event_id":"b"}]',
        "application/json",
        {},
        400,
        "duplicate key 'tune_event_id'",
    ),
    (
        "duplicate-action",
        b'[{"action":"click","action":"conversion"}]',
        "application/json",
        {},
        400,
        "duplicate key 'action'",
    ),
    ("ndjson-bad-line", b'{"action":"click"}\n{"action":\n', "application/x-ndjson", {}, 400, "line 2"),
    ("empty", b"   ", "application/json", {}, 400, "body is empty"),
]


@pytest.mark.parametrize("name, body, ctype, headers, status, reason", HTTP_POISON, ids=[p[0] for p in HTTP_POISON])
def test_endpoint_refuses_poison_with_a_reason(
    endpoint: tuple[Client, LocalQueue],
    name: str,
    body: bytes,
    ctype: str,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    client, queue = endpoint
    resp = client.http.post("/events", body=body, headers={"Content-Type": ctype, **headers})
    assert resp.status_code == status, resp.body[:300]
    assert set(resp.json_body) == {"error"}, resp.body[:300]
    assert reason in resp.json_body["error"]
    assert "Traceback" not in resp.body.decode()
    assert queued(queue) == 0, "a refused request enqueued something"
    # ...and the endpoint keeps going.
    ok = client.http.post("/events", body=envelope(GOOD), headers={"Content-Type": "application/json"})
    assert ok.status_code == 202 and queued(queue) == 1


def test_endpoint_accepts_what_only_the_worker_can_judge(endpoint: tuple[Client, LocalQueue]) -> None:
    """Out-of-range money is not the endpoint's business: it is queued, and rejected with a reason later."""
    client, queue = endpoint
    resp = client.http.post(
        "/events", body=envelope({"action": "click", "tune_event_id": "inf", "payout": 1e400}), headers={}
    )
    assert resp.status_code == 202
    (message,) = queue.receive(10, 0, 60)
    assert decode_body(message.body).events[0]["payout"] == float("inf")


@pytest.mark.parametrize("encoding", [{"Content-Encoding": "gzip"}, {}])
def test_endpoint_gzip_bomb_refused_without_inflating_it(
    tmp_path: Path, inflate_spy: InflateSpy, encoding: dict[str, str]
) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    limit = 4 * MB
    settings = load_settings({"QUEUE_URL": f"local:{queue.path}", "MAX_DECODED_BYTES": str(limit)}, dotenv_path=None)
    app_module.runtime.reset(settings=settings, queue=queue)
    body = bomb()
    try:
        with Client(app_module.app) as client:
            resp = client.http.post("/events", body=body, headers={"Content-Type": "application/gzip", **encoding})
    finally:
        app_module.runtime.reset()
    assert len(body) < 200_000
    assert resp.status_code == 413 and "exceeds the limit" in resp.json_body["error"]
    assert inflate_spy.objects >= 1, "the body was not inflated through the capped inflater"
    assert inflate_spy.inflated <= limit + 1, f"inflated {inflate_spy.inflated} bytes to refuse a bomb"
    assert queued(queue) == 0
    queue.close()


def test_endpoint_bomb_under_the_default_limit(endpoint: tuple[Client, LocalQueue], inflate_spy: InflateSpy) -> None:
    client, queue = endpoint
    resp = client.http.post("/events", body=bomb(), headers={"Content-Type": "application/gzip"})
    limit = app_module.runtime.settings.max_decoded_bytes
    assert resp.status_code == 413
    assert 0 < inflate_spy.inflated <= limit + 1 < BOMB_INFLATED
    assert queued(queue) == 0


# -- the worker -------------------------------------------------------------------------------------------


def _poison_bodies() -> list[tuple[str, str, str, list[str]]]:
    out = [(name, base64.b64encode(gz(doc)).decode(), reason, keep) for name, doc, reason, keep in POISON]
    out += [(name, body, reason, []) for name, body, reason in RAW_POISON]
    # TUNE's own form is base64(gzip(JSON)); the worker also reads plain JSON put on the queue.
    out.append(("plain-json-dup-keys", '{"events":[{"action":"click","a":1,"a":2}]}', "duplicate key 'a'", []))
    return out


def test_worker_rejects_each_poison_with_a_reason_and_loses_nothing_else(
    any_queue: Any, tmp_path: Path, inflate_spy: InflateSpy
) -> None:
    """Good messages before, between and after every poison message; all on one queue."""
    generator = Generator(77)
    expected = Expected()
    poison = _poison_bodies()
    bodies: list[str] = []
    for _, body, _, keep in poison:
        good = generator.events(50, duplicate_share=0)
        expected.add(good)
        expected.events.update(keep)
        bodies += [tune_body(good), body]
    tail = generator.events(50, duplicate_share=0)
    expected.add(tail)
    bodies.append(tune_body(tail))
    message_ids: list[str] = []
    for start in range(0, len(bodies), 10):
        result = any_queue.send_all(bodies[start : start + 10])
        assert result.ok, result.failed
        message_ids += result.message_ids
    # Each poison body sits at an odd position (good, poison, good, poison, ..., good).
    poison_ids = {name: message_ids[2 * i + 1] for i, (name, *_rest) in enumerate(poison)}

    db_path = tmp_path / "firehose.db"
    store = Store.open(db_path)
    worker = Worker(any_queue, store, Limits(wait_seconds=1, visibility_timeout=30), out=None)
    assert worker.run(until_empty=True) == 0
    store.close()

    got = assert_exactly_once(db_path, expected, rejects=len(poison))
    by_message: dict[str, list[str]] = {}
    for message_id, _index, reason_text, _raw in got.rejects:
        by_message.setdefault(message_id, []).append(reason_text)
    for name, _, reason, _ in poison:
        # Its own reject, about its own message: a reason found on another message does not count.
        own = by_message.get(poison_ids[name], [])
        assert len(own) == 1 and reason in own[0], f"{name}: expected one reject saying {reason!r}; got {own}"
    depth = any_queue.depth()
    assert (depth.visible, depth.in_flight, depth.dead or 0) == (0, 0, 0), "poison was left on the queue"
    limit = Limits().max_decoded_bytes
    assert inflate_spy.objects >= len(bodies) - 3, "messages were not inflated through the capped inflater"
    assert inflate_spy.inflated <= limit + 1 < BOMB_INFLATED, "the bomb was inflated past the limit"
    print(f"\n[poison:worker:{any_queue.backend}] bad_inputs={len(poison)} good_events={expected.offered} lost=0")
