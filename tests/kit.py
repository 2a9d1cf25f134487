"""Small helpers the pipeline tests share: put TUNE-form messages in a queue, drain it with the worker."""

from __future__ import annotations

import base64
import gzip
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from chalicelib.queues.base import Queue
from db.store import Store
from worker.decoders import Decoder
from worker.loop import Limits, Worker


def tune_message(events: list[Any], **control: Any) -> str:
    """A message body exactly as TUNE sends it: base64(gzip(envelope JSON))."""
    envelope = {**control, "events": events}
    return base64.b64encode(gzip.compress(json.dumps(envelope).encode())).decode()


def send(queue: Queue, bodies: list[str]) -> None:
    result = queue.send_all(bodies)
    assert result.ok, result.failed


def deliver(queue: Queue, *messages: list[Any]) -> None:
    send(queue, [tune_message(m) for m in messages])


def drain(queue: Queue, db_path: Path | str, decoder: Decoder | None = None, **limits: Any) -> Worker:
    store = Store.open(db_path)
    try:
        worker = Worker(queue, store, Limits(wait_seconds=0, **limits), out=None, decoder=decoder)
        assert worker.run(until_empty=True) == 0
        return worker
    finally:
        store.close()


def rows(db_path: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def one(db_path: Path | str, sql: str, *params: Any) -> Any:
    [(value,)] = rows(db_path, sql, *params)
    return value


def make_sqs_queue(client: Any, name: str, max_receive_count: int = 5) -> tuple[str, str]:
    """A fresh SQS queue with a dead-letter queue NAME-dlq; returns (queue URL, DLQ URL)."""
    dlq = client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receive_count)})
    url = client.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})["QueueUrl"]
    return url, dlq


def set_max_receive_count(client: Any, url: str, count: int) -> None:
    """The queue at `url` moves a message to its dead-letter queue after `count` receives."""
    arn = client.get_queue_attributes(QueueUrl=dlq_url(client, url), AttributeNames=["QueueArn"])["Attributes"]
    policy = json.dumps({"deadLetterTargetArn": arn["QueueArn"], "maxReceiveCount": str(count)})
    client.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})


def dlq_url(client: Any, url: str) -> str:
    """The URL of NAME-dlq, the dead-letter queue `make_sqs_queue` made for the queue at `url`."""
    return client.get_queue_url(QueueName=url.rsplit("/", 1)[1] + "-dlq")["QueueUrl"]


def sqs_depth(client: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) on an SQS queue."""
    attrs = client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def gzip_b64(document: bytes) -> str:
    """base64(gzip(document)): TUNE's transport around JSON bytes given exactly (compact or not)."""
    return base64.b64encode(gzip.compress(document, mtime=0)).decode("ascii")


def run_worker_cli(
    db: Path, queue_url: str, decode: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`read_queue.py --until-empty --decode DECODE` as a child process; its CompletedProcess.

    The timeout bounds the wait for a hung worker; it is no assertion about speed."""
    root = Path(__file__).resolve().parent.parent
    child = {k: v for k, v in os.environ.items() if k not in ("QUEUE_URL", "DB_PATH", "FIREHOSE_TOKEN")}
    args = [sys.executable, str(root / "read_queue.py"), "--until-empty", "--quiet", "--wait-seconds", "0"]
    args += ["--db", str(db), "--queue-url", queue_url, "--decode", decode]
    env = {**child, **(env or {})}
    return subprocess.run(args, cwd=db.parent, env=env, capture_output=True, text=True, timeout=120)
