"""POST /events through chalice.test.Client: every accepted form, every error, nothing enqueued on error."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from chalice.test import Client

import app as app_module
from chalicelib.codec import decode_body
from chalicelib.queues.base import SendResult
from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
EVENTS = [
    {"action": "click", "tune_event_id": "e1", "offer_id": 3},
    {"action": "impression", "tune_event_id": "e2"},
    {"action": "conversion", "tune_event_id": "e3", "payout": 2.5},
]


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
    ],
    ids=["envelope", "list", "ndjson", "content-encoding-gzip", "tune-base64-gzip", "base64-text", "gzip-type"],
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
