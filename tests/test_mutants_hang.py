"""A worker that can never drain fails its test at once instead of hanging it.

`run(until_empty=True)` returns only when the queue is empty. When every write is refused, or a bug
is met on every batch, the worker logs it and goes on (as it must in production): the messages come
back after their visibility timeout, for ever. In tests, tests/conftest.py turns those log records
into a failure naming the message or the error, so a regression (or a mutant under `make mutation`)
fails in about a second rather than waiting out a timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.queues import Message
from chalicelib.queues.local import LocalQueue
from db.batch import Rows
from db.store import Store, WriteStats
from tests.kit import tune_message
from worker.loop import Limits, Worker

# The visibility timeout is far longer than the guard needs: only the guard can end these runs in time.
LIMITS = Limits(wait_seconds=0, visibility_timeout=600)


class _RefusesAll(Store):
    def _insert(self, batch: Rows) -> WriteStats:
        raise ValueError("sabotaged write")


class _BuggyObserver:
    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None:
        raise RuntimeError("a bug met on every batch")

    def sampled(self, *args: object, **kwargs: object) -> None:
        pass


def _sent(queue: LocalQueue) -> set[str]:
    result = queue.send_all([tune_message([{"id": "a"}]), tune_message([{"id": "b"}])])
    assert result.ok
    return set(result.message_ids)


@pytest.mark.timeout(120)  # without the guard this run never ends: fail rather than hang
def test_a_store_refusing_every_write_fails_the_drain_naming_the_message(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    store = _RefusesAll.open(tmp_path / "firehose.db")
    try:
        sent = _sent(queue)
        with pytest.raises(BaseException, match="the worker cannot drain") as stuck:
            Worker(queue, store, LIMITS, out=None).run(until_empty=True)
    finally:
        store.close()
        queue.close()
    assert type(stuck.value).__name__ == "WorkerStuck"
    assert any(f"message {m} cannot be written" in str(stuck.value) for m in sent), stuck.value


@pytest.mark.timeout(120)
def test_a_bug_on_every_batch_fails_the_drain_naming_the_error(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "queue.db")
    store = Store.open(tmp_path / "firehose.db")
    try:
        _sent(queue)
        worker = Worker(queue, store, LIMITS, out=None, observers=[_BuggyObserver()])
        with pytest.raises(BaseException, match="the worker cannot drain: unexpected error") as stuck:
            worker.run(until_empty=True)
    finally:
        store.close()
        queue.close()
    assert type(stuck.value).__name__ == "WorkerStuck"
