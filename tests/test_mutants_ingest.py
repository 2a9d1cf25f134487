"""What the endpoint says it queued is what is in the queue, where `make mutation` found no test
to say so (docs/mutation.md).

A sender retries on 503 and relies on `queued_events` to know what already reached the queue, so
that number must be the count of events actually queued: all of them on a 202, exactly those of
the messages the queue took on a partial refusal, none when the queue is unreachable, and absent
(unknown) when a send broke off half-way. Each reply is checked against the queue's content.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.codec import decode_body
from chalicelib.errors import QueueUnavailable
from chalicelib.ingest import accept
from chalicelib.queues.base import SendResult
from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings

HEADERS = {"Content-Type": "application/json"}
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
