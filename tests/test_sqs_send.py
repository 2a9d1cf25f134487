"""The endpoint's sends on SQS (moto over HTTP): packing, SendMessageBatch limits, entry retries,
and the promise that a 202 is never given for events SQS did not accept.

Faults are injected with botocore event hooks on the client the queue really uses, so the
request still travels to moto and only the entries chosen to fail are withheld from it.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from chalice.test import Client

import app as app_module
from bench.generate import Generator
from chalicelib.codec import decode_body, pack_events
from chalicelib.queues import sqs as sqs_module
from chalicelib.queues.base import MAX_BATCH_ENTRIES, SQS_LEGACY_MAX_MESSAGE_BYTES
from chalicelib.queues.sqs import SqsQueue, make_client
from chalicelib.settings import Settings
from tests.faultkit import Expected, assert_exactly_once
from tests.kit import drain

BILLING_CHUNK = 64 * 1024


def events(n: int, seed: int = 1) -> list[dict[str, Any]]:
    # Unique keys make "how many events are in the queue" countable without ambiguity.
    out = Generator(seed).events(n, duplicate_share=0.0)
    for i, e in enumerate(out):
        e["tune_event_id"] = f"{seed}-{i}"
    return out


def make_queue(sqs_client: Any, settings: Settings, name: str, max_message_bytes: int | None = None) -> SqsQueue:
    attrs = {"MaximumMessageSize": str(max_message_bytes)} if max_message_bytes else {}
    url = sqs_client.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    return SqsQueue(url, make_client(replace(settings, queue_url=url)))


def drain_bodies(sqs_client: Any, url: str) -> list[str]:
    """Every message body in the queue (received with a long hide, so each message is read once)."""
    out: list[str] = []
    while True:
        got = sqs_client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300)
        if not got.get("Messages"):
            return out
        out.extend(m["Body"] for m in got["Messages"])


def events_of(bodies: list[str]) -> list[dict[str, Any]]:
    return [e for body in bodies for e in decode_body(body).events]


@dataclass
class CallLog:
    """Counts the SQS API calls a client makes and the payload of each SendMessageBatch."""

    calls: dict[str, int] = field(default_factory=dict)
    batches: list[list[int]] = field(default_factory=list)  # body sizes of each SendMessageBatch

    def attach(self, client: Any) -> CallLog:
        client.meta.events.register("provide-client-params.sqs.*", self._count)
        return self

    def _count(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls[model.name] = self.calls.get(model.name, 0) + 1
        if model.name == "SendMessageBatch":
            self.batches.append([len(e["MessageBody"].encode()) for e in params["Entries"]])


class RefuseEntries:
    """Makes SQS refuse chosen SendMessageBatch entries, as SQS reports a partial failure.

    `refuse(call_number, body)` picks the entries; they are cut out of the request before it
    is sent (so they are really not queued) and added to the response's `Failed` list.
    """

    def __init__(self, client: Any, refuse: Callable[[int, str], bool], sender_fault: bool = False) -> None:
        self.refuse = refuse
        self.sender_fault = sender_fault
        self.calls = 0
        self.refused = 0
        self._cut: list[dict[str, Any]] = []
        client.meta.events.register("before-call.sqs.SendMessageBatch", self._before)
        client.meta.events.register("after-call.sqs.SendMessageBatch", self._after)

    def _before(self, params: dict[str, Any], **_: Any) -> Any:
        self.calls += 1
        request = json.loads(params["body"])
        keep, self._cut = [], []
        for entry in request["Entries"]:
            (self._cut if self.refuse(self.calls, entry["MessageBody"]) else keep).append(entry)
        self.refused += len(self._cut)
        if not keep:  # SQS refuses an empty batch, so answer for it
            return SimpleNamespace(status_code=200, headers={}), {"Successful": [], "Failed": []}
        request["Entries"] = keep
        params["body"] = json.dumps(request).encode()
        params["headers"].pop("Content-Length", None)
        return None

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("Failed", []).extend(
            {"Id": e["Id"], "SenderFault": self.sender_fault, "Code": "InternalError", "Message": "injected"}
            for e in self._cut
        )


@pytest.fixture()
def endpoint() -> Iterator[Callable[[Settings, SqsQueue], Client]]:
    def use(settings: Settings, queue: SqsQueue) -> Client:
        app_module.runtime.reset(settings=replace(settings, queue_url=queue.url), queue=queue)
        return Client(app_module.app)

    yield use
    app_module.runtime.reset()


@pytest.fixture()
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqs_module, "RETRY_BASE_SECONDS", 0.01)


def post_gzip(client: Client, evs: list[dict[str, Any]]) -> Any:
    body = gzip.compress(json.dumps({"events": evs}).encode())
    resp = client.http.post(
        "/events", body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    return resp.status_code, json.loads(resp.body)


def billed_requests(payload_bytes: int) -> int:
    return max(1, math.ceil(payload_bytes / BILLING_CHUNK))


# -- packing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [SQS_LEGACY_MAX_MESSAGE_BYTES, 1024 * 1024])
def test_10000_events_pack_within_the_size_rules(
    sqs_client: Any, sqs_settings: Settings, endpoint: Any, tmp_path: Path, limit: int
) -> None:
    queue = make_queue(sqs_client, sqs_settings, f"pack-{limit}", limit)
    sent = CallLog().attach(queue.client)
    evs = events(10_000)
    with endpoint(sqs_settings, queue) as client:
        status, reply = post_gzip(client, evs)
    assert status == 202, reply
    assert reply["accepted"] == 10_000

    # SQS's rules: each message and each call's total within MaximumMessageSize, 10 entries a call.
    assert sent.calls["GetQueueAttributes"] == 1
    assert sent.batches and all(len(b) <= MAX_BATCH_ENTRIES for b in sent.batches)
    assert all(sum(b) <= limit for b in sent.batches)
    sizes = [s for b in sent.batches for s in b]
    assert len(sizes) == reply["messages"]
    # Packed for cost: no more messages than the bytes need, give or take one for the split.
    assert len(sizes) <= math.ceil(sum(sizes) / limit) + 1

    worker_calls = CallLog().attach(queue.client)
    drain(queue, tmp_path / "f.db")
    # Every event is valid: each must be stored once, none rejected (a reject would be a lost event).
    assert_exactly_once(tmp_path / "f.db", Expected.of(evs), rejects=0)
    print(
        f"\n[packing] 10,000 events (~{sum(len(json.dumps(e)) for e in evs) // 10_000} B JSON each), "
        f"MaximumMessageSize {limit}: {len(sizes)} messages of {min(sizes):,}-{max(sizes):,} B, "
        f"{len(sent.batches)} SendMessageBatch call(s) billed as {sum(billed_requests(sum(b)) for b in sent.batches)} "
        f"requests; worker calls {dict(sorted(worker_calls.calls.items()))}"
    )


def test_max_message_size_is_read_once_per_queue(sqs_client: Any, sqs_settings: Settings) -> None:
    queue = make_queue(sqs_client, sqs_settings, "read-once", 1024 * 1024)
    log = CallLog().attach(queue.client)
    for _ in range(3):
        assert queue.send_all([p.body for p in pack_events(events(20), queue.max_message_bytes())]).ok
    assert queue.max_message_bytes() == 1024 * 1024
    assert log.calls["GetQueueAttributes"] == 1
    assert log.calls["SendMessageBatch"] == 3


def test_max_message_size_falls_back_to_256_kib_when_unreadable(sqs_client: Any, sqs_settings: Settings) -> None:
    queue = make_queue(sqs_client, sqs_settings, "no-attrs", 1024 * 1024)

    def deny(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "GetQueueAttributes")

    queue.client.meta.events.register("before-call.sqs.GetQueueAttributes", deny)
    assert queue.max_message_bytes() == SQS_LEGACY_MAX_MESSAGE_BYTES
    assert queue.send_all(["x" * 1000]).ok


def test_batches_respect_entries_and_total_size(sqs_client: Any, sqs_settings: Settings) -> None:
    queue = make_queue(sqs_client, sqs_settings, "batching", 4096)
    log = CallLog().attach(queue.client)
    bodies = [f"{i:04d}" + "x" * (1000 + 37 * i) for i in range(12)] + ["s"] * 25
    result = queue.send_all(bodies)
    assert result.ok and len(result.message_ids) == len(bodies)
    assert all(len(b) <= MAX_BATCH_ENTRIES and sum(b) <= 4096 for b in log.batches)
    assert sorted(s for b in log.batches for s in b) == sorted(len(b) for b in bodies)


# -- partial failures --------------------------------------------------------------------------


def _refuse_nth_entry_once(n: int) -> Callable[[int, str], bool]:
    seen: list[str] = []

    def refuse(call: int, body: str) -> bool:
        seen.append(body)
        return len(seen) == n

    return refuse


FAULTS: dict[str, tuple[Callable[[int, str], bool], bool]] = {
    # name: (which entries SQS refuses, whether the endpoint can still answer 202)
    "one entry once": (_refuse_nth_entry_once(3), True),
    "first call entirely": (lambda call, body: call == 1, True),
    "one body in four always": (lambda call, body: zlib.crc32(body.encode()) % 4 == 0, False),
    "every entry always": (lambda call, body: True, False),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_partial_failure_never_gives_202_for_events_not_queued(
    sqs_client: Any, sqs_settings: Settings, endpoint: Any, fast_retries: None, fault: str
) -> None:
    refuse, can_succeed = FAULTS[fault]
    queue = make_queue(sqs_client, sqs_settings, f"partial-{list(FAULTS).index(fault)}", 1024)
    injected = RefuseEntries(queue.client, refuse)
    evs = events(150)
    with endpoint(sqs_settings, queue) as client:
        status, reply = post_gzip(client, evs)
    assert injected.refused > 0
    bodies = drain_bodies(sqs_client, queue.url)
    in_queue = events_of(bodies)
    sent_ids = sorted(e["tune_event_id"] for e in evs)
    if status == 202:
        assert can_succeed
        assert reply == {"accepted": len(evs), "messages": len(bodies)}
        assert sorted(e["tune_event_id"] for e in in_queue) == sent_ids
    else:
        assert status == 503 and not can_succeed
        assert reply["queued_events"] == len(in_queue) < len(evs)
        assert set(e["tune_event_id"] for e in in_queue) <= set(sent_ids)
        assert "retry" in reply["error"]


def test_failed_entries_are_retried_a_bounded_number_of_times(
    sqs_client: Any, sqs_settings: Settings, fast_retries: None
) -> None:
    queue = make_queue(sqs_client, sqs_settings, "bounded")
    injected = RefuseEntries(queue.client, lambda call, body: body == "bad")
    result = queue.send_all(["good-1", "bad", "good-2"])
    assert [i for i, _ in result.failed] == [1]
    assert injected.calls == 1 + sqs_module.ENTRY_RETRIES
    assert sorted(
        m["Body"] for m in sqs_client.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10)["Messages"]
    ) == [
        "good-1",
        "good-2",
    ]


def test_sender_fault_entries_are_not_retried(sqs_client: Any, sqs_settings: Settings, fast_retries: None) -> None:
    queue = make_queue(sqs_client, sqs_settings, "sender-fault")
    injected = RefuseEntries(queue.client, lambda call, body: body == "bad", sender_fault=True)
    result = queue.send_all(["good", "bad"])
    assert [i for i, _ in result.failed] == [1]
    assert injected.calls == 1


def test_unreachable_queue_is_503_with_nothing_queued(sqs_settings: Settings, endpoint: Any) -> None:
    from tests.conftest import free_port

    dead = replace(sqs_settings, aws_endpoint_url=f"http://127.0.0.1:{free_port()}")
    queue = SqsQueue(sqs_settings.queue_url or "", make_client(dead, max_attempts=2))
    with endpoint(dead, queue) as client:
        status, reply = post_gzip(client, events(5))
    assert status == 503
    assert reply["queued_events"] == 0


def test_sender_retry_after_503_is_absorbed_by_the_keys(
    sqs_client: Any, sqs_settings: Settings, endpoint: Any, fast_retries: None, tmp_path: Path
) -> None:
    queue = make_queue(sqs_client, sqs_settings, "resend", 1024)
    outage = {"on": True}
    RefuseEntries(queue.client, lambda call, body: outage["on"] and zlib.crc32(body.encode()) % 2 == 0)
    evs = events(60)
    with endpoint(sqs_settings, queue) as client:
        first, reply = post_gzip(client, evs)
        assert first == 503 and 0 < reply["queued_events"] < len(evs)
        outage["on"] = False
        second, _ = post_gzip(client, evs)
    assert second == 202
    drain(queue, tmp_path / "f.db")
    # The events queued by the first attempt arrive twice; the keys absorb them, and nothing valid is
    # rejected.
    assert_exactly_once(tmp_path / "f.db", Expected.of(evs), rejects=0)
