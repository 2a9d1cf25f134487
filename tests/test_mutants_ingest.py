"""What the endpoint says it queued is what is in the queue, where `make mutation` found no test
to say so (docs/mutation.md).

A sender retries on 503 and relies on `queued_events` to know what already reached the queue, so
that number must be the count of events actually queued: all of them on a 202, exactly those of
the messages the queue took on a partial refusal, none when the queue is unreachable, and absent
(unknown) when a send broke off half-way. Each reply is checked against the queue's content.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import ingest
from chalicelib.codec import decode_body
from chalicelib.errors import QueueUnavailable
from chalicelib.ingest import accept, serve
from chalicelib.queues.base import SendResult
from chalicelib.queues.local import LocalQueue
from chalicelib.runtime import Runtime
from chalicelib.settings import Settings, load_settings

HEADERS = {"Content-Type": "application/json"}
NDJSON = "application/x-ndjson"
SMALL = 2_000  # bytes a message may hold: a few events each, so one request makes many messages


class _RefusesSome(LocalQueue):
    """A real local queue that refuses the messages at the given positions of each send, as SQS's
    SendMessageBatch can refuse some entries of a batch and take the others."""

    refuse: frozenset[int] = frozenset()

    def send_all(self, bodies: list[str]) -> SendResult:
        kept = [i for i in range(len(bodies)) if i not in self.refuse]
        taken = super().send_all([bodies[i] for i in kept])
        result = SendResult(message_ids=taken.message_ids)
        result.failed = sorted([(i, "ServiceUnavailable") for i in range(len(bodies)) if i in self.refuse])
        return result


class _Unreachable(LocalQueue):
    def send_all(self, bodies: list[str]) -> SendResult:
        raise QueueUnavailable("simulated: the queue cannot be reached")


class _BreaksOff(LocalQueue):
    """Sends the first message, then fails with something that is not a queue fault."""

    def send_all(self, bodies: list[str]) -> SendResult:
        super().send_all(bodies[:1])
        raise RuntimeError("simulated: the send broke off")


def _events(count: int) -> list[dict[str, Any]]:
    return [{"action": "click", "tune_event_id": f"e{i}", "pad": "x" * 300} for i in range(count)]


def _in_queue(queue: LocalQueue) -> list[Any]:
    out: list[Any] = []
    while batch := queue.receive(10, 0, 60):
        for m in batch:
            out.extend(decode_body(m.body).events)
    return out


def _accept(queue: LocalQueue, events: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    conf = load_settings({"QUEUE_URL": f"local:{queue.path}"}, dotenv_path=None)
    reply = accept(HEADERS, json.dumps(events).encode(), conf, queue)
    return reply.status, reply.body


EXAMPLES = 200 if os.environ.get("FIREHOSE_FUZZ") else 15


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 40), refuse=st.sets(st.integers(0, 12), max_size=6))
def test_queued_events_is_what_the_queue_holds(
    tmp_path_factory: pytest.TempPathFactory, count: int, refuse: set[int]
) -> None:
    queue = _RefusesSome(tmp_path_factory.mktemp("q") / "queue.db", max_message_bytes=SMALL)
    queue.refuse = frozenset(refuse)
    try:
        events = _events(count)
        status, body = _accept(queue, events)
        held = _in_queue(queue)
    finally:
        queue.close()
    assert all(e in events for e in held) and len({e["tune_event_id"] for e in held}) == len(held)
    if status == 202:
        assert held == events and body["accepted"] == count
        return
    assert status == 503 and "retry" in body["error"]
    assert body["queued_events"] == len(held), body
    # "accepted k of n": k messages reached the queue, n were offered.
    taken, offered = (int(w) for w in body["error"].split("accepted ")[1].split(" messages")[0].split(" of "))
    assert taken < offered
    assert (taken == 0) == (body["queued_events"] == 0)


def test_an_unreachable_queue_is_503_with_nothing_queued(tmp_path: Path) -> None:
    queue = _Unreachable(tmp_path / "queue.db")
    try:
        status, body = _accept(queue, _events(5))
        assert (status, body["queued_events"]) == (503, 0)
        assert _in_queue(queue) == []
    finally:
        queue.close()


def test_a_send_that_broke_off_does_not_claim_a_count(tmp_path: Path) -> None:
    queue = _BreaksOff(tmp_path / "queue.db", max_message_bytes=SMALL)
    try:
        status, body = _accept(queue, _events(20))
        held = _in_queue(queue)
    finally:
        queue.close()
    # Some events did reach the queue, so "nothing was queued" (queued_events 0) would be false:
    # what reached it is unknown, and the reply must not name a number.
    assert held and status == 503
    assert "queued_events" not in body and "retry" in body["error"]
    assert "RuntimeError" in body["error"]


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP"])
def test_a_body_already_inflated_but_labelled_gzip_is_accepted(tmp_path: Path, encoding: str) -> None:
    """API Gateway may inflate a gzip body and keep its Content-Encoding header: the JSON inside
    is what was sent, and it is queued as it is."""
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        events = _events(3)
        conf = load_settings({"QUEUE_URL": f"local:{queue.path}"}, dotenv_path=None)
        headers = {**HEADERS, "Content-Encoding": encoding}
        reply = accept(headers, json.dumps(events).encode(), conf, queue)
        assert reply.status == 202, reply.body
        assert _in_queue(queue) == events
    finally:
        queue.close()


# -- every answer says what was wrong and where (docs/endpoint.md, Answers) --------------------------------

TOKEN = "s3cret-token"
THREE = [{"action": "click", "tune_event_id": f"t{i}"} for i in range(3)]
# The types docs/endpoint.md lists, as the 415 answer names them (sorted, comma-separated).
DOCUMENTED_TYPES = (
    "application/gzip, application/json, application/json-seq, application/jsonlines, application/ndjson, "
    "application/octet-stream, application/x-gzip, application/x-ndjson, text/json, text/plain"
)


def _answer(tmp_path: Path, headers: dict[str, str], body: bytes, **env: str) -> tuple[int, dict[str, Any], list[Any]]:
    """accept() on a fresh local queue: the status, the JSON body, and the events now in the queue."""
    queue = LocalQueue(tmp_path / "answer.db")
    try:
        conf = load_settings({"QUEUE_URL": f"local:{queue.path}", **env}, dotenv_path=None)
        reply = accept(headers, body, conf, queue)
        return reply.status, reply.body, _in_queue(queue)
    finally:
        queue.close()


def _ndjson(events: list[Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def _json_seq(events: list[Any], indent: int | None = None) -> bytes:
    return b"".join(b"\x1e" + json.dumps(e, indent=indent).encode() + b"\n" for e in events)


@pytest.mark.parametrize(
    "headers, body, env, status, error",
    [
        ({}, json.dumps(THREE).encode(), {"FIREHOSE_TOKEN": TOKEN}, 401,
         "missing bearer token: send 'Authorization: Bearer <FIREHOSE_TOKEN>'"),
        ({"Authorization": "Bearer"}, json.dumps(THREE).encode(), {"FIREHOSE_TOKEN": TOKEN}, 401,
         "missing bearer token: send 'Authorization: Bearer <FIREHOSE_TOKEN>'"),
        ({"Authorization": "Bearer wrong"}, json.dumps(THREE).encode(), {"FIREHOSE_TOKEN": TOKEN}, 401,
         "invalid bearer token"),
        ({}, b"[" + b" " * 999 + b"]", {"MAX_BODY_BYTES": "1000"}, 413,
         "body is 1001 bytes, over the 1000 byte limit"),
        ({"Content-Type": "application/xml"}, b"<xml/>", {}, 415,
         f"unsupported content type 'application/xml'; send one of {DOCUMENTED_TYPES}"),
        ({"Content-Encoding": "br"}, json.dumps(THREE).encode(), {}, 415,
         "unsupported content encoding 'br'; send gzip or none"),
        ({}, b" \n ", {}, 400, "body is empty (chunked uploads are not supported: send Content-Length)"),
        ({"Content-Type": "application/json-seq"}, b"\x1e" + b" " * 998 + b"{}", {"MAX_DECODED_BYTES": "1000"}, 413,
         "JSON text sequence exceeds the limit of 1000 bytes"),
        ({}, b"[" + b" " * 999 + b"]", {"MAX_DECODED_BYTES": "1000"}, 413, "JSON body exceeds the limit of 1000 bytes"),
        ({"Content-Type": "application/gzip"}, gzip.compress(b"[" + b" " * 999 + b"]"), {"MAX_DECODED_BYTES": "1000"},
         413, "decompressed body exceeds the limit of 1000 bytes"),
        ({"Content-Encoding": "gzip"}, gzip.compress(b"[" + b" " * 999 + b"]"), {"MAX_DECODED_BYTES": "1000"},
         413, "decompressed body exceeds the limit of 1000 bytes"),
        ({"Content-Type": NDJSON}, b'{"action":"a"}\n\n{"action":"b"}\n{"x":1}\n', {}, 400, "event 2 has no 'action'"),
    ],
    ids=[
        "no-token", "bearer-without-token", "wrong-token", "body-over-limit", "content-type", "content-encoding",
        "empty-body", "json-seq-over-decoded-limit", "json-over-decoded-limit", "gzip-over-decoded-limit",
        "content-encoding-gzip-over-decoded-limit", "ndjson-bad-event-named-by-index",
    ],
)  # fmt: skip
def test_a_refused_request_is_answered_with_its_status_and_reason_and_queues_nothing(
    tmp_path: Path, headers: dict[str, str], body: bytes, env: dict[str, str], status: int, error: str
) -> None:
    assert _answer(tmp_path, headers, body, **env) == (status, {"error": error}, [])


@pytest.mark.parametrize(
    "body, env",
    [
        (b"[" + json.dumps(THREE[0]).encode().ljust(998) + b"]", {"MAX_BODY_BYTES": "1000"}),
        (b"\x1e" + json.dumps(THREE[0]).encode().ljust(999), {"MAX_DECODED_BYTES": "1000"}),
    ],
    ids=["body-at-max-body-bytes", "json-seq-at-max-decoded-bytes"],
)
def test_a_body_exactly_at_a_limit_is_accepted(tmp_path: Path, body: bytes, env: dict[str, str]) -> None:
    assert len(body) == 1000
    ctype = "application/json-seq" if body[:1] == b"\x1e" else "application/json"
    status, reply, held = _answer(tmp_path, {"Content-Type": ctype}, body, **env)
    assert (status, reply, held) == (202, {"accepted": 1, "messages": 1}, [THREE[0]])


@pytest.mark.parametrize(
    "headers, body",
    [
        ({}, json.dumps(THREE).encode()),
        ({"Content-Type": ""}, json.dumps(THREE).encode()),
        ({"content-type": "application/x-ndjson"}, _ndjson(THREE)),
        ({"CONTENT-TYPE": "Application/X-NDJSON"}, _ndjson(THREE)),
        ({"Content-Type": "application/x-ndjson;charset=utf-8"}, _ndjson(THREE)),
        ({"Content-Type": "application/x-ndjson; charset=utf-8; profile=tune"}, _ndjson(THREE)),
        ({"Content-Encoding": ""}, json.dumps(THREE).encode()),
        ({"Content-Encoding": "identity"}, json.dumps(THREE).encode()),
        ({"Content-Encoding": " x-gzip "}, gzip.compress(json.dumps(THREE).encode())),
        ({"Content-Type": "application/json-seq"}, b"\n \x1e" + _json_seq(THREE, indent=2)),
        ({"Authorization": f"Bearer  {TOKEN}"}, json.dumps(THREE).encode()),
        ({"AUTHORIZATION": f"BEARER {TOKEN}"}, json.dumps(THREE).encode()),
    ],
    ids=[
        "no-content-type-is-json", "empty-content-type-is-json", "lower-case-header-name", "upper-case-type",
        "type-with-a-parameter", "type-with-two-parameters", "empty-content-encoding", "identity-encoding",
        "x-gzip-encoding", "json-seq-after-leading-whitespace", "token-after-two-spaces", "upper-case-scheme",
    ],
)  # fmt: skip
def test_headers_are_read_as_http_says(tmp_path: Path, headers: dict[str, str], body: bytes) -> None:
    """Header names and media types are case-insensitive, parameters follow a `;`, an absent or empty
    Content-Type is JSON, an empty Content-Encoding is none: each of these requests is accepted whole."""
    if not any(k.lower() == "authorization" for k in headers):
        headers = {**headers, "Authorization": f"Bearer {TOKEN}"}
    status, reply, held = _answer(tmp_path, headers, body, FIREHOSE_TOKEN=TOKEN)
    assert (status, reply, held) == (202, {"accepted": 3, "messages": 1}, THREE)


def _wire(data: bytes) -> bytes:
    return base64.b64encode(gzip.compress(data))


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip"])
@pytest.mark.parametrize(
    "ctype, inner",
    [
        ("application/json", json.dumps({"events": THREE}).encode()),
        (NDJSON, _ndjson(THREE)),
        ("application/json-seq", _json_seq(THREE, indent=2)),
        ("application/json", _wire(json.dumps(THREE).encode())),
        ("text/plain", _wire(json.dumps(THREE).encode())),
        ("application/json-seq", _wire(_json_seq(THREE))),
    ],
    ids=["json", "ndjson", "json-seq", "wire-form-as-json", "wire-form-as-text", "json-seq-wire-form"],
)
def test_every_form_is_accepted_under_content_encoding_gzip(
    tmp_path: Path, ctype: str, inner: bytes, encoding: str
) -> None:
    """docs/endpoint.md: any of the forms, gzip'd again with `Content-Encoding: gzip` (or x-gzip)."""
    headers = {"Content-Type": ctype, "Content-Encoding": encoding}
    assert _answer(tmp_path, headers, gzip.compress(inner)) == (202, {"accepted": 3, "messages": 1}, THREE)


def test_a_layer_of_gzip_the_headers_do_not_declare_is_not_guessed(tmp_path: Path) -> None:
    """One gzip layer is the form `application/gzip` names; gzip inside it is not JSON, and is refused."""
    body = gzip.compress(gzip.compress(json.dumps(THREE).encode()))
    status, reply, held = _answer(tmp_path, {"Content-Type": "application/gzip"}, body)
    assert (status, held) == (400, []) and reply["error"]


# -- what a 202 promises: every message fits the worker (docs/endpoint.md) ----------------------------------


def _padded(size: int) -> dict[str, Any]:
    """An event whose compact JSON is exactly `size` bytes."""
    event: dict[str, Any] = {"action": "click", "pad": ""}
    event["pad"] = "x" * (size - len(json.dumps(event, separators=(",", ":"))))
    return event


def test_an_event_over_the_per_event_limit_is_413_and_one_at_it_is_queued(tmp_path: Path) -> None:
    """1 MiB of JSON per event, however well it compresses: the worker refuses a bigger one."""
    limit = 1024 * 1024
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    over = gzip.compress(json.dumps([THREE[0], _padded(limit + 1)], separators=(",", ":")).encode())
    error = f"event 1 is {limit + 1} bytes, over the {limit} byte per-event limit"
    assert _answer(tmp_path / "over", headers, over) == (413, {"error": error}, [])
    at = gzip.compress(json.dumps([_padded(limit)], separators=(",", ":")).encode())
    status, reply, held = _answer(tmp_path, headers, at)
    assert (status, reply) == (202, {"accepted": 1, "messages": 1}) and held == [_padded(limit)]


def test_every_message_inflates_within_max_decoded_bytes(tmp_path: Path) -> None:
    """Events grow when written for the queue (1e15 becomes 1000000000000000.0): the messages are cut
    so that each inflates to at most the MAX_DECODED_BYTES the endpoint was given."""
    limit = 200_000
    values = ",".join(["1e15"] * 1200)
    text = "[" + ",".join(f'{{"action":"click","tune_event_id":"n{i}","v":[{values}]}}' for i in range(25)) + "]"
    assert len(text) < limit < 3 * len(text)
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        conf = load_settings({"QUEUE_URL": f"local:{queue.path}", "MAX_DECODED_BYTES": str(limit)}, dotenv_path=None)
        reply = accept({"Content-Encoding": "gzip"}, gzip.compress(text.encode()), conf, queue)
        assert reply.status == 202 and reply.body["accepted"] == 25, reply.body
        held: list[Any] = []
        while batch := queue.receive(10, 0, 60):
            for m in batch:
                held.extend(decode_body(m.body, limit).events)  # raises BodyTooLarge past the limit
    finally:
        queue.close()
    assert held == json.loads(text)


# -- 503s: what the sender is told, what the operator is told ---------------------------------------------


def test_an_unreachable_queue_is_answered_and_logged_with_its_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    queue = _Unreachable(tmp_path / "queue.db")
    try:
        status, body = _accept(queue, _events(5))
    finally:
        queue.close()
    assert (status, body) == (503, {"error": "queue unavailable, nothing was queued; retry", "queued_events": 0})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["queue unavailable: simulated: the queue cannot be reached"]


def test_a_partial_refusal_is_logged_with_the_counts_and_the_first_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    queue = _RefusesSome(tmp_path / "queue.db", max_message_bytes=SMALL)
    queue.refuse = frozenset({1, 2})
    rng = random.Random(7)  # text gzip cannot shrink much, so the request needs several messages
    events = [{"action": "click", "tune_event_id": f"r{i}", "pad": rng.randbytes(300).hex()} for i in range(20)]
    try:
        status, body = _accept(queue, events)
        held = _in_queue(queue)
    finally:
        queue.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [line] = warnings
    refused, total = (int(n) for n in line.split("queue refused ")[1].split(" messages")[0].split(" of "))
    assert refused == 2 and line == f"queue refused 2 of {total} messages: ServiceUnavailable"
    assert (status, body) == (
        503,
        {"error": f"queue accepted {total - 2} of {total} messages; retry the request", "queued_events": len(held)},
    )


class _NoQueue(Runtime):
    """A runtime whose queue cannot be opened (a missing disk, a botocore fault)."""

    def __init__(self, settings: Settings, exc: Exception) -> None:
        super().__init__()
        self.reset(settings=settings)
        self.exc = exc

    @property
    def queue(self) -> LocalQueue:  # type: ignore[override]
        raise self.exc


def test_a_queue_that_cannot_be_opened_is_503_and_the_log_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    detail = "disk gone: " + "d" * 300
    conf = load_settings({"QUEUE_URL": f"local:{tmp_path / 'q.db'}"}, dotenv_path=None)
    reply = serve({}, json.dumps(THREE).encode(), _NoQueue(conf, OSError(detail)))
    assert (reply.status, reply.body) == (
        503,
        {"error": "queue unavailable, nothing was queued; retry", "queued_events": 0},
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"queue cannot be opened: OSError: {detail[:200]}"]


# -- a fault of ours: 503 and one ERROR line (docs/endpoint.md: the exception, where, size, type) ----------


def _raise_from_depth(depth: int, message: str) -> None:
    if depth:
        _raise_from_depth(depth - 1, message)
    raise TypeError(message)


def _error_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    logged: dict[str, Any] = json.loads(error.getMessage())
    return logged


def test_an_unexpected_error_is_logged_as_one_bounded_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The line names the exception, its text (200 characters at most), the last four frames with the
    innermost last, the stage, the body's size and its content type: enough to find the bug, never the body."""
    message = "simulated bug " + "m" * 300

    def broken(*args: object, **kwargs: object) -> None:
        _raise_from_depth(8, message)

    monkeypatch.setattr(ingest, "pack_events", broken)
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    body = json.dumps(THREE).encode()
    status, reply, held = _answer(tmp_path, {"Content-Type": "text/json; charset=utf-8"}, body)
    assert (status, held) == (503, [])
    assert reply == {"error": "internal error (TypeError) while reading the request; nothing was queued; retry later",
                     "queued_events": 0}  # fmt: skip
    logged = _error_line(caplog)
    where = logged.pop("where")
    assert logged == {
        "route": "POST /events",
        "unexpected": "TypeError",
        "while": "reading the request",
        "detail": message[:200],
        "bytes": len(body),
        "content_type": "text/json",
    }
    assert len(where) == 4 and all(w.startswith("test_mutants_ingest.py:") for w in where)
    assert [w.rsplit(" ", 1)[1] for w in where] == ["_raise_from_depth"] * 4


def test_the_logged_content_type_is_cut_to_80_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault before the content type is checked logs whatever the sender put there: at most 80 characters."""

    def broken(headers: object, token: object) -> None:
        raise TypeError("simulated bug in the token check")

    monkeypatch.setattr(ingest, "check_token", broken)
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    ctype = "application/" + "z" * 200
    status, reply, _ = _answer(tmp_path, {"Content-Type": ctype}, b"[]")
    assert status == 503 and reply["queued_events"] == 0
    assert _error_line(caplog)["content_type"] == ctype[:80]


def test_a_send_that_broke_off_is_logged_and_answered_as_a_send_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    queue = _BreaksOff(tmp_path / "queue.db", max_message_bytes=SMALL)
    try:
        status, body = _accept(queue, _events(20))
    finally:
        queue.close()
    assert (status, body) == (
        503,
        {"error": "internal error (RuntimeError) while sending to the queue; retry the request"},
    )
    logged = _error_line(caplog)
    assert (logged["unexpected"], logged["while"]) == ("RuntimeError", "sending to the queue")
    assert logged["detail"] == "simulated: the send broke off"


# -- the one INFO line per request ----------------------------------------------------------------------


class _Clock:
    """perf_counter for the endpoint: the request starts at 10 s and ends 12.3456 ms later."""

    def __init__(self) -> None:
        self.ticks = iter([10.0, 10.0123456])

    def perf_counter(self) -> float:
        return next(self.ticks)


def _request_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and '"route"' in r.getMessage()]
    logged: dict[str, Any] = json.loads(line)
    return logged


@pytest.mark.parametrize(
    "headers, body, expect",
    [
        ({}, json.dumps(THREE).encode(), {"status": 202, "events": 3, "messages": 1}),
        ({"Content-Type": "application/xml"}, b"<x/>", {"status": 415, "events": 0, "messages": 0}),
    ],
    ids=["accepted", "refused"],
)
def test_each_request_logs_one_line_with_its_outcome_size_and_duration(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    body: bytes,
    expect: dict[str, int],
) -> None:
    monkeypatch.setattr(ingest, "time", _Clock())
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    _answer(tmp_path, headers, body)
    assert _request_line(caplog) == {"route": "POST /events", **expect, "bytes": len(body), "ms": 12.35}
