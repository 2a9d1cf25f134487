"""Turn received messages into the rows of one transaction: here, or in a helper process.

Decoding (base64, gzip, JSON, typed rows) is Python work that holds the GIL, and so is most of
what SQLite's `executemany` costs through Python, so threads cannot overlap them (bench/RESULTS.md
measured it). A helper process can: while the worker writes one batch, the helper decodes the
next. The helper holds no state and touches neither the queue nor the database; if it dies, the
batch is decoded here instead and a new helper is started.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from .rows import Batch

log = logging.getLogger(__name__)

# (message_id, body, receive_count): what decoding needs from a received message.
Item = tuple[str, str, int | None]
T = TypeVar("T")


def decode_batch(items: Sequence[Item], max_decoded_bytes: int, now: int) -> Batch:
    batch = Batch()
    for message_id, body, receive_count in items:
        batch.add_message(message_id, body, receive_count, max_decoded_bytes, now)
    return batch


def decode_pickled(items: Sequence[Item], max_decoded_bytes: int, now: int) -> list[bytes]:
    """`decode_batch` in the helper: rows travel pickled, one message at a time, so the helper never
    holds a whole batch of row objects and the worker unpickles a batch only when it writes it."""
    return [pickle.dumps(decode_batch([item], max_decoded_bytes, now), pickle.HIGHEST_PROTOCOL) for item in items]


def _unpickle(parts: list[bytes]) -> Batch:
    batch = Batch()
    parts.reverse()
    while parts:  # drop each part once unpickled: the batch is the biggest thing the worker holds
        part = parts.pop()
        batch.extend(pickle.loads(part))  # noqa: S301 - our own helper's output, never outside input
    return batch


class Decoder(Protocol):
    # True when `submit` returns before decoding is done, so the caller can write meanwhile.
    overlaps: bool

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Callable[[], Batch]: ...

    def close(self) -> None: ...


class InlineDecoder:
    """Decodes in the calling thread, before `submit` returns."""

    overlaps = False

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Callable[[], Batch]:
        batch = decode_batch(items, max_decoded_bytes, now)
        return lambda: batch

    def close(self) -> None:
        pass


def _start_helper(worker: int) -> None:
    # Ctrl-C reaches the whole process group; the worker decides when to stop, and then shuts the
    # helper down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A worker killed outright (SIGKILL, OOM) cannot shut the helper down, and the helper's own copy
    # of its task pipe keeps it waiting forever: it leaves when it finds itself orphaned. The worker's
    # pid comes from the worker, since it may be dead already by the time the helper gets here.
    threading.Thread(target=_exit_when_orphaned, args=(worker,), name="orphan-watch", daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


class ProcessDecoder:
    """Decodes in one helper process (started with `spawn`: no locks or threads inherited)."""

    overlaps = True

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_helper,
                initargs=(os.getpid(),),
            )
        return self._pool

    def _restart(self, exc: BaseException) -> None:
        log.error("the decoding helper process failed (%r); decoding here and starting a new one", exc)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Callable[[], Batch]:
        items = list(items)
        try:
            future: Future[list[bytes]] | None = self._executor().submit(decode_pickled, items, max_decoded_bytes, now)
        except (BrokenProcessPool, RuntimeError) as exc:
            self._restart(exc)
            future = None

        def result() -> Batch:
            if future is not None:
                try:
                    return _unpickle(future.result())
                except BrokenProcessPool as exc:
                    self._restart(exc)
            return decode_batch(items, max_decoded_bytes, now)

        return result

    def start(self) -> ProcessDecoder:
        """Start the helper now (about 0.3 s), not when the first batch arrives."""
        self.call(os.getpid)
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the helper (a module-level function): how the bench reads the helper's memory."""
        return self._executor().submit(fn, *args).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ProcessDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


DECODE_CHOICES = ("auto", "process", "inline")


def make_decoder(choice: str = "auto") -> Decoder:
    """auto: a helper process when there is a second CPU for it to run on. A helper is started here."""
    if choice == "auto":
        choice = "process" if (os.cpu_count() or 1) > 1 else "inline"
    return ProcessDecoder().start() if choice == "process" else InlineDecoder()
