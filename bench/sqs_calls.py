"""Billable SQS requests per million events, counted (never timed) against moto's SQS server.

SQS bills every API call as one request per started 64 KiB of payload. botocore's event hooks see
every call the real code makes (endpoint `accept()` -> `SqsQueue.send_all`; the worker's
receive, delete, visibility heartbeat and depth checks); each is billed as
max(1, ceil(payload bytes / 65,536)), the payload being the request body for sends and the
response body for receives. moto is used here only because it answers like SQS; it slows down
as its queue grows, so nothing about it is timed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from chalicelib.ingest import accept
from chalicelib.queues.sqs import SqsQueue
from chalicelib.settings import load_settings
from db.store import Store
from worker.loop import Limits, Worker

from .endpoint import bodies_of

CHUNK = 64 * 1024
SIZED_BY_REQUEST = {"SendMessage", "SendMessageBatch"}
SIZED_BY_RESPONSE = {"ReceiveMessage"}


class Meter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.billable: Counter[str] = Counter()
        self._request_bytes = 0

    def before(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        body = params.get("body") or b""
        self._request_bytes = len(body)

    def after(self, model: Any, http_response: Any, **_: Any) -> None:
        name = model.name
        size = 0
        if name in SIZED_BY_REQUEST:
            size = self._request_bytes
        elif name in SIZED_BY_RESPONSE:
            size = len(http_response.content or b"")
        self.calls[name] += 1
        self.billable[name] += max(1, math.ceil(size / CHUNK))

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.sqs", self.before)
        client.meta.events.register("after-call.sqs", self.after)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_sqs_calls(events: list[dict[str, Any]], per_post: int, workdir: Path, posts_per_drain: int = 10) -> dict:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per call otherwise
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint_url = f"http://127.0.0.1:{port}"
        env = {"AWS_ENDPOINT_URL_SQS": endpoint_url, "AWS_REGION": "us-east-1", "AWS_KEY": "x", "AWS_SECRET": "x"}
        setup = SqsQueue.from_settings(load_settings({**env, "QUEUE_URL": endpoint_url + "/q"}, dotenv_path=None))
        url = setup.client.create_queue(QueueName=f"bench-{per_post}")["QueueUrl"]
        settings = load_settings({**env, "QUEUE_URL": url}, dotenv_path=None)
        sender, receiver = SqsQueue.from_settings(settings), SqsQueue.from_settings(settings)
        meter = Meter()
        meter.attach(sender.client)
        meter.attach(receiver.client)
        store = Store.open(workdir / f"sqs-{per_post}.db")
        worker = Worker(receiver, store, dataclasses.replace(Limits(), wait_seconds=0.0), out=None)
        bodies = bodies_of(events, per_post)
        headers = {"Content-Type": "application/json"}
        accepted = 0
        for start in range(0, len(bodies), posts_per_drain):
            for body in bodies[start : start + posts_per_drain]:
                reply = accept(headers, body, settings, sender)
                assert reply.status == 202, reply.body
                accepted += reply.body["accepted"]
            worker.run(until_empty=True)  # moto slows as its queue grows: keep it shallow
        stored = store.counts()
        store.close()
        total = sum(meter.billable.values())
        return {
            "events": accepted,
            "per_post": per_post,
            "calls": dict(meter.calls),
            "billable": dict(meter.billable),
            "billable_total": total,
            "per_million": total * 1_000_000 / accepted,
            "stored": stored,
        }
    finally:
        server.stop()
