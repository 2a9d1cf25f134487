"""Small helpers the pipeline tests share: put TUNE-form messages in a queue, drain it with the worker."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

from chalicelib.queues.base import Queue
from db.store import Store
from db.worker import Limits, Worker


def tune_message(events: list[Any], **control: Any) -> str:
    """A message body exactly as TUNE sends it: base64(gzip(envelope JSON))."""
    envelope = {**control, "events": events}
    return base64.b64encode(gzip.compress(json.dumps(envelope).encode())).decode()


def deliver(queue: Queue, *messages: list[Any]) -> None:
    result = queue.send_all([tune_message(m) for m in messages])
    assert result.ok, result.failed


def drain(queue: Queue, db_path: Path | str, **limits: Any) -> Worker:
    store = Store.open(db_path)
    try:
        worker = Worker(queue, store, Limits(wait_seconds=0, **limits), out=None)
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
