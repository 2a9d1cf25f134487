"""POST /events through chalice.test.Client: every accepted form, every error, nothing enqueued on error."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

import app as app_module
from chalicelib import ingest
from chalicelib.codec import decode_body
from chalicelib.queues.base import SendResult
from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings
from scripts.local_stack import local_stack
from tests.kit import drain, rows

ROOT = Path(__file__).resolve().parent.parent
EVENTS = [
    {"action": "click", "tune_event_id": "e1", "offer_id": 3},
    {"action": "impression", "tune_event_id": "e2"},
    {"action": "conversion", "tune_event_id": "e3", "payout": 2.5},
]


NDJSON = "application/x-ndjson"
SURROGATE_EVENT = b'{"action":"click","tune_event_id":"s1","x":["\\ud800"]}'
SURROGATE = b'[{"action":"click","tune_event_id":"ok"},' + SURROGATE_EVENT + b"]"
SURROGATE_KEY = b'[{"action":"click"},{"action":"click","\\udfff":1}]'


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_event(depth: int) -> bytes:
    """A list of two events, the second holding a list `depth` deep (the event itself is one level)."""
    return b'[{"action":"click"},{"action":"click","tune_event_id":"d","x":' + deep(depth) + b"}]"


@pytest.fixture()
def queue(tmp_path: Path) -> Iterator[LocalQueue]:
    q = LocalQueue(tmp_path / "queue.db")
    yield q
    q.close()


def use(queue, **env: str) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings({"QUEUE_URL": f"local:{queue.path}", **env}, dotenv_path=None)
    app_module.runtime.reset(settings=settings, queue=queue)


@pytest.fixture()
def client(queue: LocalQueue) -> Iterator[Client]:
    use(queue)
    with Client(app_module.app) as c:
        yield c
    app_module.runtime.reset()


def json_seq(events: list[Any], indent: int | None = None) -> bytes:
    """RFC 7464: each JSON text after an RS (0x1E) and before an LF."""
    return b"".join(b"\x1e" + json.dumps(e, indent=indent).encode() + b"\n" for e in events)


def queued_events(queue: LocalQueue) -> list:
    out = []
    while batch := queue.receive(10, 0, 60):
        for m in batch:
            out.extend(decode_body(m.body).events)
    return out


def post(client: Client, body: bytes | str, ctype: str = "application/json", **headers: str):  # type: ignore[no-untyped-def]
    return client.http.post("/events", body=body, headers={"Content-Type": ctype, **headers})


def test_health_names_backend(client: Client) -> None:
    resp = client.http.get("/health")
    assert resp.status_code == 200 and resp.json_body == {"status": "ok", "queue": "local"}


@pytest.mark.parametrize(
    "body, ctype, headers",
    [
        (json.dumps({"events": EVENTS, "v": 1}), "application/json", {}),
        (json.dumps(EVENTS), "application/json; charset=utf-8", {}),
        ("\n".join(json.dumps(e) for e in EVENTS) + "\n", "application/x-ndjson", {}),
        (gzip.compress(json.dumps(EVENTS).encode()), "application/json", {"Content-Encoding": "gzip"}),
        (base64.b64encode(gzip.compress(json.dumps({"events": EVENTS}).encode())), "application/json", {}),
        (base64.b64encode(gzip.compress(json.dumps(EVENTS).encode())), "text/plain", {}),
        (gzip.compress(json.dumps(EVENTS).encode()), "application/gzip", {}),
        (json_seq(EVENTS), "application/json-seq", {}),
        (b"\x1e\x1e" + json_seq(EVENTS, indent=2) + b"\x1e\n", "application/json-seq", {}),
        (gzip.compress(json_seq(EVENTS)), "application/json-seq", {"Content-Encoding": "gzip"}),
        (base64.b64encode(gzip.compress(json_seq(EVENTS))), "application/json-seq", {}),
        (b"\n".join(json.dumps(e).encode() for e in EVENTS), "application/json-seq", {}),
    ],
    ids=[
        "envelope",
        "list",
        "ndjson",
        "content-encoding-gzip",
        "tune-base64-gzip",
        "base64-text",
        "gzip-type",
        "json-seq",
        "json-seq-pretty-with-empty-records",
        "json-seq-gzip",
        "json-seq-tune-form",
        "json-seq-as-lines",
    ],
)
def test_accepted_forms(client: Client, queue: LocalQueue, body, ctype, headers) -> None:  # type: ignore[no-untyped-def]
    resp = post(client, body, ctype, **headers)
    assert resp.status_code == 202, resp.body
    assert resp.json_body == {"accepted": 3, "messages": 1}
    assert queued_events(queue) == EVENTS


def test_single_event(client: Client, queue: LocalQueue) -> None:
    resp = post(client, json.dumps(EVENTS[0]))
    assert resp.status_code == 202 and resp.json_body["accepted"] == 1
    assert queued_events(queue) == [EVENTS[0]]


def test_sample_data_is_accepted_as_it_is(client: Client, queue: LocalQueue) -> None:
    sample = (ROOT / "sample-data.json").read_bytes()
    resp = post(client, sample)
    assert resp.status_code == 202
    assert resp.json_body["accepted"] == len(json.loads(sample)["events"]) >= 90


@pytest.mark.parametrize(
    "body, ctype, headers, status, reason",
    [
        ("{not json", "application/json", {}, 400, "invalid JSON at line 1"),
        ("", "application/json", {}, 400, "body is empty"),
        ("[]", "application/json", {}, 400, "no events"),
        ('{"events": []}', "application/json", {}, 400, "no events"),
        (json.dumps([EVENTS[0], {"tune_event_id": "x"}]), "application/json", {}, 400, "event 1 has no 'action'"),
        (json.dumps([EVENTS[0], "str"]), "application/json", {}, 400, "event 1 must be a JSON object"),
        ('{"a": 1}\nnope\n', "application/x-ndjson", {}, 400, "line 2: invalid JSON"),
        ("<xml/>", "application/xml", {}, 415, "unsupported content type 'application/xml'"),
        (json.dumps(EVENTS), "application/json", {"Content-Encoding": "br"}, 415, "unsupported content encoding"),
        (gzip.compress(b"[")[:-4], "application/json", {"Content-Encoding": "gzip"}, 400, "gzip data is"),
        (gzip.compress(b"[" + b" " * 40_000_000 + b"]"), "application/gzip", {}, 413, "exceeds the limit"),
        (b"\x1e" + json.dumps(EVENTS[0]).encode() + b"\n\x1e{nope\n", "application/json-seq", {}, 400, "record 2"),
        (SURROGATE, "application/json", {}, 400, "event 1 holds a lone UTF-16 surrogate at /x/0"),
        (SURROGATE_KEY, "application/json", {}, 400, "event 1 holds a lone UTF-16 surrogate in a key at /"),
        (b'{"action":"click"}\n' + SURROGATE_EVENT, "application/x-ndjson", {}, 400, "event 1 holds a lone UTF-16"),
        (b"\x1e" + SURROGATE_EVENT, "application/json-seq", {}, 400, "event 0 holds a lone UTF-16 surrogate"),
        (nested_event(967), "application/json", {}, 400, "event 1 nests objects or lists more than 100 levels"),
        (b'{"action":"click"}\n{"action":"click","x":' + deep(101) + b"}", NDJSON, {}, 400, "event 1 nests"),
        (b'{"exceeds the limit":1,"exceeds the limit":2}', "application/json", {}, 400, "duplicate key"),
    ],
    ids=[
        "bad-json",
        "empty",
        "empty-list",
        "empty-envelope",
        "no-action",
        "not-object",
        "bad-ndjson",
        "xml",
        "brotli",
        "truncated-gzip",
        "gzip-bomb",
        "json-seq-bad-record",
        "surrogate-in-a-value",
        "surrogate-in-a-key",
        "surrogate-ndjson",
        "surrogate-json-seq",
        "nested-967-deep",
        "nested-101-deep",
        "error-text-is-not-the-status",
    ],
)
def test_errors_are_json_and_enqueue_nothing(client, queue, body, ctype, headers, status, reason) -> None:  # type: ignore[no-untyped-def]
    resp = post(client, body, ctype, **headers)
    assert resp.status_code == status, resp.body
    assert set(resp.json_body) == {"error"} and reason in resp.json_body["error"]
    assert queued_events(queue) == []


def test_body_over_the_limit_is_413(queue: LocalQueue) -> None:
    use(queue, MAX_BODY_BYTES="1000")
    with Client(app_module.app) as c:
        resp = post(c, json.dumps([{"action": "click", "pad": "x" * 2000}]))
    assert resp.status_code == 413 and "over the 1000 byte limit" in resp.json_body["error"]
    assert queued_events(queue) == []


@pytest.mark.parametrize(
    "auth, status",
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Basic s3cret-token", 401),
        ("Bearer s3cret-token", 202),
        ("bearer s3cret-token", 202),
    ],
)
def test_token(queue: LocalQueue, auth: str | None, status: int) -> None:
    use(queue, FIREHOSE_TOKEN="s3cret-token")
    with Client(app_module.app) as c:
        headers = {"Authorization": auth} if auth else {}
        resp = post(c, json.dumps(EVENTS), **headers)
    assert resp.status_code == status
    if status == 401:
        assert "s3cret" not in resp.body.decode() and queued_events(queue) == []


def noise(seed: int, length: int) -> str:
    """Text that gzip cannot shrink much, so packing has to split."""
    import random

    rng = random.Random(seed)
    return "".join(rng.choice("0123456789abcdef") for _ in range(length))


class RefusingQueue(LocalQueue):
    """A queue that refuses the second message of every send."""

    def send_all(self, bodies: list[str]) -> SendResult:
        result = super().send_all(bodies[:1])
        result.failed.extend((i, "ServiceUnavailable") for i in range(1, len(bodies)))
        return result


def test_partial_queue_failure_is_503_with_what_was_queued(tmp_path: Path) -> None:
    queue = RefusingQueue(tmp_path / "q.db", max_message_bytes=2000)
    use(queue)
    with Client(app_module.app) as c:
        events = [{"action": "click", "tune_event_id": f"{i}", "pad": noise(i, 400)} for i in range(60)]
        resp = post(c, json.dumps(events))
    assert resp.status_code == 503
    body = resp.json_body
    assert "retry" in body["error"] and 0 < body["queued_events"] < 60


def test_events_split_across_messages_when_over_the_size(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "q.db", max_message_bytes=3000)
    use(queue)
    events = [{"action": "click", "tune_event_id": f"id{i}", "pad": noise(i, 300)} for i in range(200)]
    with Client(app_module.app) as c:
        resp = post(c, json.dumps(events))
    assert resp.status_code == 202 and resp.json_body["messages"] > 1
    assert queued_events(queue) == events


# -- issue 12: what got a 202 is what the worker stores ---------------------------------------------------


def test_events_that_inflate_when_rewritten_are_all_stored(tmp_path: Path, client: Client, queue: LocalQueue) -> None:
    """Finding 4: 40 events of 50,000 x 1e15, gzip'd (10 MB decoded), got 202; re-written as
    1000000000000000.0 they made one message of 38 MB, past the worker's 32 MiB, and all 40 were rejected."""
    values = ",".join(["1e15"] * 50_000)
    events = [f'{{"action":"click","tune_event_id":"big{i}","v":[{values}]}}' for i in range(40)]
    body = gzip.compress(("[" + ",".join(events) + "]").encode())
    resp = post(client, body, "application/json", **{"Content-Encoding": "gzip"})
    assert resp.status_code == 202, resp.body
    assert resp.json_body["accepted"] == 40
    db = tmp_path / "firehose.db"
    drain(queue, db)
    stored = rows(db, "SELECT tune_event_id FROM events ORDER BY tune_event_id")
    assert stored == sorted((f"big{i}",) for i in range(40))
    assert rows(db, "SELECT reason FROM rejects") == []


def test_an_event_at_the_depth_limit_is_accepted_and_stored(tmp_path: Path, client: Client, queue: LocalQueue) -> None:
    body = b'[{"action":"click","tune_event_id":"deep99","x":' + deep(99) + b"}]"  # 100 levels with the event
    assert post(client, body).status_code == 202
    db = tmp_path / "firehose.db"
    drain(queue, db)
    assert rows(db, "SELECT tune_event_id, length(raw_json) FROM events") == [("deep99", len(body) - 2)]


# -- never a 500 ----------------------------------------------------------------------------------------


def test_an_unexpected_error_is_logged_and_answered_503(
    client: Client, queue: LocalQueue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug this input finds (simulated here: packing raises TypeError) is not the sender's fault:
    503 (retry), a JSON error, and one ERROR line naming the exception and where, never the body."""

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("simulated bug")

    monkeypatch.setattr(ingest, "pack_events", broken)
    caplog.set_level(logging.INFO, logger="tune_firehose.endpoint")
    secret_ish = "body-text-that-must-not-be-logged"
    resp = post(client, json.dumps([{"action": "click", "note": secret_ish}]))
    assert resp.status_code == 503
    assert resp.json_body == {
        "error": "internal error (TypeError) while reading the request; nothing was queued; retry later",
        "queued_events": 0,
    }
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    logged = json.loads(error.getMessage())
    assert logged["unexpected"] == "TypeError" and logged["where"][-1].endswith(" broken")
    assert secret_ish not in caplog.text
    assert queued_events(queue) == []


def test_a_queue_that_cannot_be_opened_is_503(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = load_settings({"QUEUE_URL": f"local:{blocker}/queue.db"}, dotenv_path=None)
    app_module.runtime.reset(settings=settings)
    try:
        with Client(app_module.app) as c:
            resp = post(c, json.dumps(EVENTS))
    finally:
        app_module.runtime.reset()
    assert resp.status_code == 503 and resp.json_body["queued_events"] == 0


# -- `chalice local` as Chalice users type it -----------------------------------------------------------


def test_plain_chalice_local_posts_into_the_local_queue(tmp_path: Path) -> None:
    """`chalice local` with no --stage runs stage dev: on a fresh clone it must use the local queue
    (it used to send to the placeholder SQS URL in .chalice/config.json and answer 503).

    So stage dev ships without QUEUE_URL. A fork that puts its dev queue there to deploy it
    (docs/deploying.md) has chosen that plain `chalice local` sends to that queue, and this test
    then says so by failing."""
    queue_path = tmp_path / "queue.db"
    env = {"QUEUE_URL": f"local:{queue_path}", "FIREHOSE_TOKEN": ""}  # the token as a fresh clone has it
    with local_stack(env, tmp_path / "logs", with_worker=False, stage=None) as stack:
        assert "--stage" not in stack.endpoint.args
        status, reply = stack.post(json.dumps(EVENTS).encode())
    assert (status, reply) == (202, {"accepted": 3, "messages": 1})
    queue = LocalQueue(queue_path)
    try:
        assert queued_events(queue) == EVENTS
    finally:
        queue.close()


def test_money_keeps_every_digit_through_the_endpoint(tmp_path: Path, client: Client, queue: LocalQueue) -> None:
    """The worker rounds money from its decimal text; re-written as a float on the way through the
    queue (0.1234565), this payout, just above half a micro-unit, would round down to even."""
    body = b'{"events":[{"action":"conversion","tune_event_id":"exact","payout":0.12345650000000000000001}]}'
    assert post(client, body).status_code == 202
    db = tmp_path / "firehose.db"
    drain(queue, db)
    assert rows(db, "SELECT payout_micros FROM events") == [(123_457,)]


def test_the_per_request_line_is_logged_where_the_root_logger_passes_only_warnings() -> None:
    """On Lambda the root logger stands at WARNING; the endpoint's one INFO line per request must
    still get through, so the app sets its own loggers' level (docs/operating.md, Logs)."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    try:
        assert app_module.app is not None
        assert logging.getLogger("tune_firehose.endpoint").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(before)
