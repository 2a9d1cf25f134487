"""Turn received messages into the rows of one transaction: here, or in a helper process.

Decoding (base64, gzip, JSON, typed rows) is Python work that holds the GIL, and so is most of
what SQLite's `executemany` costs through Python, so threads cannot overlap them (bench/RESULTS.md
measured it). A helper process can: while the worker writes one batch, the helper decodes the
next. The helper holds no state and touches neither the queue nor the database; if it dies, the
batch is decoded here instead (so a message that crashes decoding fails in the worker, with its
traceback) and a new helper is started.

The helper is a plain child process talking over its stdin and stdout: length-prefixed `marshal`
data (both ends are the same interpreter; it loads rows faster than pickle), one request per batch
in, one frame per decoded message back and an empty frame to end the batch.
It needs no multiprocessing machinery (no resource tracker process, nothing that outlives the
worker): when the worker dies, the helper reads end-of-file and exits.
"""

from __future__ import annotations

import logging
import marshal
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Protocol

from db.batch import Incoming
from worker.rows import Batch

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# (message_id, body, receive_count): what decoding needs from a received message.
Item = tuple[str, str, int | None]
_ROOT = Path(__file__).resolve().parent.parent
_HEADER = 8


def decode_batch(items: Sequence[Item], max_decoded_bytes: int, now: int) -> Batch:
    """The rows of `items`, built to be bound as they are (`Batch.bound`)."""
    batch = Batch(bound=True)
    for message_id, body, receive_count in items:
        batch.add_message(message_id, body, receive_count, max_decoded_bytes, now)
    return batch


class Decoder(Protocol):
    # True when `submit` returns before decoding is done, so the caller can write meanwhile.
    overlaps: bool

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Incoming: ...

    def close(self) -> None: ...


class InlineDecoder:
    """Decodes in the calling thread, before `submit` returns."""

    overlaps = False

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Incoming:
        return Incoming([decode_batch(items, max_decoded_bytes, now)])

    def close(self) -> None:
        pass


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(len(payload).to_bytes(_HEADER, "big") + payload)


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame, or None at end of file (or a frame cut short by it)."""
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        return None
    size = int.from_bytes(header, "big")
    payload = stream.read(size) if size else b""
    return payload if len(payload) == size else None


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The helper's loop: decode each request one message at a time, so it never holds more than
    one message's rows, and send each message's rows as soon as they are built."""
    _write_frame(stdout, b"")  # ready
    stdout.flush()
    while (request := _read_frame(stdin)) is not None:
        items, max_decoded_bytes, now = marshal.loads(request)  # noqa: S302 - from the worker that started us
        for item in items:
            batch = decode_batch([item], max_decoded_bytes, now)
            _write_frame(stdout, marshal.dumps((batch.events, batch.adjustments, batch.envelopes, batch.rejects)))
            stdout.flush()
        _write_frame(stdout, b"")
        stdout.flush()


def helper_main() -> None:
    """The helper process (started by `_Helper`)."""
    # Ctrl-C reaches the whole process group; the worker decides when to stop, and then closes the
    # helper's stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the worker is gone: nobody wants the rest
        os._exit(0)


class HelperDied(RuntimeError):
    pass


class _Reply:
    """The frames of one request, handed over by the reader thread as they arrive."""

    def __init__(self) -> None:
        self.frames: SimpleQueue[bytes | None] = SimpleQueue()  # None: the end
        self.failed = False

    def end(self, failed: bool = False) -> None:
        self.failed = failed
        self.frames.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while (frame := self.frames.get()) is not None:
            yield frame
        if self.failed:
            raise HelperDied("the decoding helper process exited")


def _widen_pipe(stream: IO[bytes] | None) -> None:
    """Let the helper run ahead by about a megabyte of rows (Linux pipes hold 64 KiB, less than one
    message's rows), so it keeps decoding while the worker is busy inside SQLite."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl else None
    if stream is not None and set_size is not None:
        try:
            fcntl.fcntl(stream.fileno(), set_size, 1 << 20)
        except OSError:  # above /proc/sys/fs/pipe-max-size for an unprivileged user: keep the default
            pass


class _Helper:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.decoders"],
            cwd=_ROOT,  # where `worker` is importable from, whatever the worker's own directory
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        _widen_pipe(self.proc.stdout)
        self.ready = _Reply()
        self.replies: deque[_Reply] = deque([self.ready])
        self.alive = True
        self._lock = threading.Lock()
        # Requests go out through a thread of their own: the helper reads the next request only when
        # it has decoded the one before, and the worker must not wait for that to hand it over.
        self._requests: SimpleQueue[bytes | None] = SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="decoder-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="decoder-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while (request := self._requests.get()) is not None:
                _write_frame(stdin, request)
                stdin.flush()
        except OSError as exc:  # the helper is gone; the reader ends its replies as failed
            log.debug("cannot write to the decoding helper: %r", exc)
        finally:
            try:
                stdin.close()  # end of file: the helper exits
            except OSError:
                pass

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while (frame := _read_frame(self.proc.stdout)) is not None:
            if frame:
                self.replies[0].frames.put(frame)
            else:
                self.replies.popleft().end()
        with self._lock:
            self.alive = False
            while self.replies:
                self.replies.popleft().end(failed=True)

    def send(self, items: list[Item], max_decoded_bytes: int, now: int) -> _Reply:
        reply = _Reply()
        with self._lock:  # the reader matches replies to requests in order
            if not self.alive:
                reply.end(failed=True)
                return reply
            self.replies.append(reply)
            self._requests.put(marshal.dumps((items, max_decoded_bytes, now)))
        return reply

    def close(self) -> None:
        self._requests.put(None)
        self._writer.join(timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)


class ProcessDecoder:
    """Decodes in one helper process, started now and again whenever it has died."""

    overlaps = True

    def __init__(self) -> None:
        self._helper: _Helper | None = None

    def _running(self) -> _Helper:
        if self._helper is None or not self._helper.alive:
            if self._helper is not None:
                log.error("the decoding helper process exited (%s); starting a new one", self._helper.proc.poll())
                self._helper.close()
            self._helper = _Helper()
        return self._helper

    @property
    def pid(self) -> int:
        return self._running().proc.pid

    def start(self) -> ProcessDecoder:
        """Start the helper and wait until it is ready (about 0.2 s)."""
        try:
            for _ in self._running().ready:
                pass
        except HelperDied:
            log.error("the decoding helper process did not start; batches are decoded here until one does")
        return self

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Incoming:
        items = list(items)
        reply = self._running().send(items, max_decoded_bytes, now)

        def parts() -> Iterator[Batch]:
            done = 0  # one frame per message, in order
            try:
                for frame in reply:
                    yield Batch(*marshal.loads(frame), bound=True)  # noqa: S302 - our own helper's output, never outside input
                    done += 1
            except HelperDied:
                log.error("the decoding helper died mid-batch; decoding its other %d messages here", len(items) - done)
                yield decode_batch(items[done:], max_decoded_bytes, now)

        return Incoming(parts())

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None

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


if __name__ == "__main__":
    helper_main()
