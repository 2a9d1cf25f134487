"""The worker on SQS (moto over HTTP): TUNE's own messages, the dead-letter queue, the visibility
heartbeat, failed deletes, redelivery, an unreachable queue, and how batches are accumulated.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chalicelib.queues.base import Message
from chalicelib.queues.sqs import SqsQueue, make_client
from chalicelib.settings import Settings
from db.errors import DatabaseFault
from db.store import Store, WriteStats
from tests.conftest import free_port
from tests.kit import one, rows, tune_message
from worker.loop import EXIT_DB_FAULT, Limits, Worker
from worker.rows import Batch


def ev(i: int, **extra: Any) -> dict[str, Any]:
    return {"action": "click", "tune_event_id": f"id-{i}", "offer_id": i % 3, **extra}


def count_calls(client: Any) -> dict[str, int]:
    calls: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    client.meta.events.register("provide-client-params.sqs.*", count)
    return calls


def run_worker(queue: SqsQueue, db: Path, **limits: Any) -> Worker:
    store = Store.open(db)
    try:
        worker = Worker(queue, store, Limits(**{"wait_seconds": 1, **limits}), out=None)
        assert worker.run(until_empty=True) == 0
        return worker
    finally:
        store.close()


def dlq_bodies(sqs_client: Any, queue_url: str) -> list[str]:
    dlq_url = queue_url + "-dlq"
    got = sqs_client.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [m["Body"] for m in got.get("Messages", [])]


class SlowStore:
    """A real store whose writes take `seconds` longer than they need (a huge batch, a slow disk)."""

    def __init__(self, store: Store, seconds: float) -> None:
        self.store, self.seconds = store, seconds

    def write(self, batch: Batch, give_up: Any = lambda: False) -> WriteStats:
        time.sleep(self.seconds)
        return self.store.write(batch, give_up)


def test_tune_messages_sent_straight_into_the_queue_land_in_sqlite(
    sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path
) -> None:
    # As TUNE delivers: one SendMessage per envelope, no endpoint in between.
    for n in range(3):
        body = tune_message([ev(n * 10 + i) for i in range(10)], network_id="demo", sent_at=1790000000 + n)
        sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=body)
    run_worker(sqs_queue, tmp_path / "f.db")
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 30
    assert one(tmp_path / "f.db", "SELECT count(*) FROM envelopes") == 3
    depth = sqs_queue.depth()
    assert (depth.visible, depth.in_flight, depth.dead) == (0, 0, 0)


class PoisonedStore:
    """A real store that fails, with an error the worker does not expect, on any batch holding
    event `poison` (say, a value the driver cannot bind). Any message like that is poison."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, batch: Batch, give_up: Any = lambda: False) -> WriteStats:
        if any(row[0] == "poison" for row in batch.events):
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return self.store.write(batch, give_up)


@pytest.mark.worker_errors_expected  # the poison is logged as an error on each receive, until the DLQ takes it
def test_poison_message_reaches_the_dlq_and_never_blocks_the_messages_behind_it(
    sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path
) -> None:
    poison = tune_message([{"action": "click", "tune_event_id": "poison"}])
    sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=tune_message([ev(1), ev(2)]))
    sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=poison)
    sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=tune_message([ev(3)]))

    store = Store.open(tmp_path / "f.db")
    try:
        worker = Worker(sqs_queue, PoisonedStore(store), Limits(wait_seconds=1, visibility_timeout=1), out=None)  # type: ignore[arg-type]
        assert worker.run(until_empty=True) == 0
    finally:
        store.close()

    assert sorted(r[0] for r in rows(tmp_path / "f.db", "SELECT tune_event_id FROM events")) == ["id-1", "id-2", "id-3"]
    # The good messages were written on their first delivery, not held back by the poison.
    assert {r[0] for r in rows(tmp_path / "f.db", "SELECT receive_count FROM envelopes")} == {1}
    assert dlq_bodies(sqs_client, sqs_queue.url) == [poison]
    assert sqs_queue.depth().visible == 0


def test_heartbeat_keeps_a_slow_batch_from_a_second_worker(
    sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path
) -> None:
    sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=tune_message([ev(1)]))
    store = Store.open(tmp_path / "f.db")
    worker = Worker(sqs_queue, SlowStore(store, 5), Limits(wait_seconds=1, visibility_timeout=2), out=None)  # type: ignore[arg-type]
    calls = count_calls(sqs_queue.client)
    [message] = sqs_queue.receive(10, 1, 2)

    stolen: list[Message] = []
    done = threading.Event()
    second = SqsQueue(sqs_queue.url, make_client(replace_settings(sqs_queue)))

    def poll() -> None:
        while not done.is_set():
            stolen.extend(second.receive(10, 1, 30))

    thief = threading.Thread(target=poll)
    thief.start()
    try:
        worker.process([message])
    finally:
        done.set()
        thief.join()
        store.close()
    assert stolen == []
    assert calls.get("ChangeMessageVisibilityBatch", 0) >= 2
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 1
    assert sqs_queue.depth().in_flight == 0


def replace_settings(queue: SqsQueue) -> Settings:
    endpoint = queue.client.meta.endpoint_url
    return Settings(queue_url=queue.url, aws_endpoint_url=endpoint, aws_region="us-east-1")


def fail_deletes(client: Any, times: int) -> list[int]:
    """SQS reports every DeleteMessageBatch entry as failed (a server fault) for the first `times` calls."""
    seen: list[int] = []
    entries: list[str] = []

    def before(params: dict[str, Any], **_: Any) -> Any:
        import json
        from types import SimpleNamespace

        seen.append(1)
        if len(seen) > times:
            return None
        entries[:] = [e["Id"] for e in json.loads(params["body"])["Entries"]]
        failed = [{"Id": i, "SenderFault": False, "Code": "InternalError", "Message": "injected"} for i in entries]
        return SimpleNamespace(status_code=200, headers={}), {"Successful": [], "Failed": failed}

    client.meta.events.register("before-call.sqs.DeleteMessageBatch", before)
    return seen


def test_failed_delete_entries_are_retried(sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path) -> None:
    for i in range(3):
        sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=tune_message([ev(i)]))
    deletes = fail_deletes(sqs_queue.client, times=1)
    worker = run_worker(sqs_queue, tmp_path / "f.db", visibility_timeout=1)
    assert len(deletes) >= 2  # the failed call and its retry
    assert worker.totals.written.duplicates == 0  # deleted by the retry, so never redelivered
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 3
    depth = sqs_queue.depth()
    assert (depth.visible, depth.in_flight) == (0, 0)


def test_a_delete_that_keeps_failing_is_redelivered_and_changes_nothing(
    sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=tune_message([ev(1), ev(2)]))
    fail_deletes(sqs_queue.client, times=1 + 3)  # the call and all of SqsQueue's entry retries
    caplog.set_level(logging.INFO, logger="tune_firehose.worker")
    first = run_worker(sqs_queue, tmp_path / "f.db", visibility_timeout=1)
    assert first.totals.written.events == 2
    assert first.totals.written.duplicates == 2  # the redelivery, after the failed delete
    assert one(tmp_path / "f.db", "SELECT count(*) FROM events") == 2
    assert any("redelivered (receive count 2)" in r.getMessage() for r in caplog.records)
    assert sqs_queue.depth().in_flight == 0


def test_receive_count_is_requested_and_logged_on_redelivery(
    sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=tune_message([ev(1)]))
    assert sqs_queue.receive(10, 1, 1)[0].receive_count == 1  # a worker that died mid-batch
    time.sleep(1.1)
    [again] = sqs_queue.receive(10, 2, 30)
    assert again.receive_count == 2
    caplog.set_level(logging.INFO, logger="tune_firehose.worker")
    store = Store.open(tmp_path / "f.db")
    try:
        Worker(sqs_queue, store, Limits(), out=None).process([again])
    finally:
        store.close()
    assert any(f"message {again.message_id} redelivered (receive count 2)" in r.getMessage() for r in caplog.records)


def test_database_fault_deletes_nothing(sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path) -> None:
    class BrokenStore:
        def write(self, batch: Batch, give_up: Any = None) -> WriteStats:
            raise DatabaseFault("disk full")

    sqs_client.send_message(QueueUrl=sqs_queue.url, MessageBody=tune_message([ev(1)]))
    worker = Worker(sqs_queue, BrokenStore(), Limits(wait_seconds=1, visibility_timeout=1), out=None)  # type: ignore[arg-type]
    assert worker.run() == EXIT_DB_FAULT
    [back] = sqs_queue.receive(10, 3, 30)
    assert back.receive_count == 2


def test_unreachable_sqs_is_logged_clearly_and_the_worker_keeps_trying(
    sqs_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = replace(sqs_settings, aws_endpoint_url=f"http://127.0.0.1:{free_port()}")
    queue = SqsQueue(sqs_settings.queue_url or "", make_client(dead, max_attempts=1))
    store = Store.open(tmp_path / "f.db")
    worker = Worker(queue, store, Limits(wait_seconds=1), out=None)
    caplog.set_level(logging.ERROR, logger="tune_firehose.worker")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            lines = [r.getMessage() for r in caplog.records if "queue unreachable" in r.getMessage()]
            if len(lines) >= 2:
                break
            time.sleep(0.05)
    finally:
        worker.stopping = True
        thread.join(10)
        store.close()
    assert len(lines) >= 2, lines
    assert "nothing is deleted" in lines[0] and "Could not connect" in lines[0]


# -- accumulation across receives -------------------------------------------------------------


class TickingClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _send_small(sqs_client: Any, url: str, n: int) -> None:
    for start in range(0, n, 10):
        sqs_client.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": tune_message([ev(i)])} for i in range(start, min(n, start + 10))],
        )


def test_small_messages_are_accumulated_across_receives(sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path) -> None:
    _send_small(sqs_client, sqs_queue.url, 45)
    calls = count_calls(sqs_queue.client)
    written: list[int] = []

    class Recording:
        def __init__(self, store: Store) -> None:
            self.store = store

        def write(self, batch: Batch, give_up: Any = lambda: False) -> WriteStats:
            written.append(len(batch.events))
            return self.store.write(batch, give_up)

    store = Store.open(tmp_path / "f.db")
    try:
        worker = Worker(sqs_queue, Recording(store), Limits(wait_seconds=1), out=None)  # type: ignore[arg-type]
        assert worker.run(until_empty=True) == 0
    finally:
        store.close()
    assert sum(written) == 45
    assert written[0] == 45  # one transaction, though SQS hands out at most 10 messages a call
    assert calls["DeleteMessageBatch"] >= 5


@pytest.mark.parametrize(
    ("limits", "clock_step", "most"),
    [
        ({"max_batch_events": 2_000}, 0.0, 20),  # ~100 events assumed per envelope
        ({"max_batch_bytes": 1}, 0.0, 10),
        ({"max_batch_seconds": 1.0}, 0.4, 30),  # three receives inside the second
    ],
)
def test_accumulation_is_bounded(
    sqs_queue: SqsQueue, sqs_client: Any, tmp_path: Path, limits: dict[str, Any], clock_step: float, most: int
) -> None:
    _send_small(sqs_client, sqs_queue.url, 60)
    store = Store.open(tmp_path / "f.db")
    try:
        worker = Worker(sqs_queue, store, Limits(wait_seconds=1, **limits), out=None, clock=TickingClock(clock_step))
        got = worker._collect(until_empty=False)
    finally:
        store.close()
    assert 0 < len(got) <= most
