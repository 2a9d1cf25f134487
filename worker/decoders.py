"""Turn received messages into rows, one part per message: here, or in a helper process.

Decoding (base64, gzip, JSON, typed rows) is Python work that holds the GIL, and so is most of
what SQLite's `executemany` costs through Python, so threads cannot overlap them (bench/RESULTS.md
measured it). A helper process can: while the worker writes one transaction, the helper decodes
the next. The helper holds no state and touches neither the queue nor the database. Nothing a
message holds makes decoding raise (`Batch.add_message` turns it into a reject), so no message
can end the helper; if it dies all the same (killed, out of memory), the rest of its messages
are decoded here and a new helper is started.

The helper is a plain child process talking over its stdin and stdout: length-prefixed `marshal`
data (both ends are the same interpreter; it loads rows faster than pickle). One request per group
of received messages goes in; back come, for each message in order, its rows in frames of about
`CHUNK_BYTES` each, then an empty frame ends the group. Each frame ends with a trailer giving the
message's size (rows, decoded bytes), so the worker can cut its transactions before it loads a
message's rows. The worker holds at most `READ_AHEAD_BYTES` of frames it has not taken; beyond that
the pipe fills and the helper waits, so large messages never pile up in memory.

A large message (one read event by event, `codec.EventStream`) is never held whole in either
process: its rows are spilled to a temporary file chunk by chunk as they are built, sent from there
once the message is decoded to its end, and handed to the store as a `Streamed` part whose chunks
are loaded one at a time as they are written. A write retried reads them again (from the file, or
by decoding the message again): `decode_message` is a function of the message and `now` alone.
It needs no multiprocessing machinery (no resource tracker process, nothing that outlives the
worker): when the worker dies, the helper reads end-of-file and exits.
"""

from __future__ import annotations

import ctypes
import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import IO, Protocol

from db.batch import Part, Rows, Streamed, chunks_of
from worker import rows as row_format
from worker.errors import HelperDied
from worker.rows import Batch

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]  # no fcntl on Windows: pipes keep their default size

log = logging.getLogger("tune_firehose.decoders")

# (message_id, body, receive_count): what decoding needs from a received message.
Item = tuple[str, str, int | None]
_ROOT = Path(__file__).resolve().parent.parent
_HEADER = 8
# After a frame's marshalled rows: the message's rows and decoded bytes, and what follows.
_TRAILER = struct.Struct(">QQB")
_MORE, _LAST, _ABANDONED = 0, 1, 2  # _ABANDONED: the helper failed mid-message; decode it here
# Rows per frame, by decoded bytes: a large message crosses the pipe, and is loaded, piece by piece.
CHUNK_BYTES = 1024 * 1024
# Frames the worker holds before it takes them: enough for the helper to decode ahead while a
# transaction is written, few enough to bound memory whatever the messages.
READ_AHEAD_BYTES = 8 * 1024 * 1024


class _Spill:
    """A large message's rows, put aside in a temporary file chunk by chunk as they are built (each
    chunk as the helper sends it: marshalled), so neither process holds them all. The file is made
    only when a first chunk comes, and goes when this is closed or dropped."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self.chunks = 0

    def put(self, rows: Rows) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="firehose-rows-")
        _write_frame(self._file, marshal.dumps((rows.events, rows.adjustments, rows.envelopes, rows.rejects, 0)))
        self.chunks += 1

    def reset(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
        self.chunks = 0

    def payloads(self) -> Iterator[bytes]:
        """Each chunk, marshalled, in order (again from the start on each call; each call reads
        from its own place, so one left half-way does not disturb the next)."""
        stream = self._file
        if stream is None:
            return
        stream.flush()
        at = 0
        for _ in range(self.chunks):
            stream.seek(at)
            payload = _read_frame(stream)
            if payload is None:
                raise OSError("a spilled chunk of rows was cut short")
            at = stream.tell()
            yield payload

    def rows(self) -> Iterator[Rows]:
        for payload in self.payloads():
            events, adjustments, envelopes, rejects, _ = marshal.loads(payload)  # noqa: S302 - our own file
            yield Rows(events, adjustments, envelopes, rejects)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Spilled(Streamed):
    """A message whose rows were spilled while it was decoded: its chunks come from the file."""

    def __init__(self, size: int, decoded_bytes: int, spill: _Spill) -> None:
        super().__init__(size, decoded_bytes, spill.rows(), spill.rows)
        self.spill = spill


def decode_message(item: Item, max_decoded_bytes: int, now: int) -> Batch | Streamed:
    """One message's rows: a `Batch`, or, for a message read event by event whose rows outgrow
    CHUNK_BYTES of decoded text, a `Streamed` whose chunks were spilled as they were built (so no
    process holds them all). Never raises: what cannot be decoded or stored becomes a reject."""
    message_id, body, receive_count = item
    batch, spill = Batch(), _Spill()
    batch.spill_to(spill, CHUNK_BYTES)
    batch.add_message(message_id, body, receive_count, max_decoded_bytes, now)
    if not spill.chunks:
        spill.close()
        return batch
    spill.put(batch)  # the rest, the envelope row among it
    return _Spilled(batch.spilled_size + batch.size, batch.decoded_bytes, spill)


def decode_batch(items: Sequence[Item], max_decoded_bytes: int, now: int) -> Batch:
    """The rows of all of `items` together (the worker itself takes them part by part: `Decoder`)."""
    batch = Batch()
    for message_id, body, receive_count in items:
        batch.add_message(message_id, body, receive_count, max_decoded_bytes, now)
    return batch


class Parts(Protocol):
    """The rows of submitted messages, one part per message, in order: a `Rows`, or for a large
    message a `Streamed` whose chunks are loaded only as they are written."""

    def __iter__(self) -> Iterator[Part]: ...

    def __next__(self) -> Part: ...

    def peek(self) -> tuple[int, int] | None:
        """The next part's `size` and `decoded_bytes`, before its rows are loaded; None at the end."""
        ...

    def close(self) -> None:
        """Give up the parts not taken (the worker stopped before writing them)."""
        ...


class Decoder(Protocol):
    # True when decoding runs beside the caller, so the caller can write meanwhile.
    overlaps: bool

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Parts: ...

    def close(self) -> None: ...


class _InlineParts:
    """Decodes each message here, when its part (or its size) is first asked for."""

    def __init__(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> None:
        self._items, self._max, self._now = deque(items), max_decoded_bytes, now
        self._ahead: Batch | Streamed | None = None

    def __iter__(self) -> Iterator[Part]:
        return self

    def peek(self) -> tuple[int, int] | None:
        if self._ahead is None and self._items:
            self._ahead = decode_message(self._items.popleft(), self._max, self._now)
        return None if self._ahead is None else (self._ahead.size, self._ahead.decoded_bytes)

    def __next__(self) -> Part:
        if self.peek() is None:
            raise StopIteration
        part, self._ahead = self._ahead, None
        assert part is not None
        return part

    def close(self) -> None:
        self._items.clear()
        self._ahead = None


class InlineDecoder:
    """Decodes in the calling thread, each message as its part is taken."""

    overlaps = False

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Parts:
        return _InlineParts(items, max_decoded_bytes, now)

    def close(self) -> None:
        pass


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(len(payload).to_bytes(_HEADER, "big"))
    stream.write(payload)  # not joined to its header: that would copy a large frame once more


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame, or None at end of file (or a frame cut short by it)."""
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        return None
    size = int.from_bytes(header, "big")
    payload = stream.read(size) if size else b""
    return payload if len(payload) == size else None


def _chunks(batch: Rows) -> Iterator[Rows]:
    """The message's rows in pieces of about CHUNK_BYTES of decoded text (a row is never split)."""
    chunk, held = Rows(), 0
    # (table, where its rows hold their decoded text)
    for table, text_at in (("envelopes", 3), ("rejects", 4), ("adjustments", -3), ("events", -3)):
        for row in getattr(batch, table):
            getattr(chunk, table).append(row)
            held += len(row[text_at] or "")
            if held >= CHUNK_BYTES:
                yield chunk
                chunk, held = Rows(), 0
    if held or chunk.envelopes or chunk.size:
        yield chunk


def _payloads(part: Batch | Streamed) -> Iterator[bytes]:
    """A message's rows marshalled in chunks: read back from its spill, or cut here."""
    if isinstance(part, _Spilled):
        yield from part.spill.payloads()
        return
    chunks = list(_chunks(part.whole() if isinstance(part, Streamed) else part)) or [Rows()]
    del part
    for index, chunk in enumerate(chunks):
        chunks[index] = Rows()  # sent: let it go
        yield marshal.dumps((chunk.events, chunk.adjustments, chunk.envelopes, chunk.rejects, 0))


def _frames(item: Item, max_decoded_bytes: int, now: int) -> Iterator[bytes]:
    """One message's frames. No message can make this raise (and so end the helper): if decoding
    or sending it fails here all the same (out of memory; a value marshal cannot write), the
    message is abandoned to the worker, which decodes it itself, exactly as `--decode inline` would.
    The message's rows are all built (or spilled) before its first frame goes: then its size is
    known, and so is that it is not rejected whole after all."""
    part: Batch | Streamed | None = None
    try:
        part = decode_message(item, max_decoded_bytes, now)
        size, decoded_bytes = part.size, part.decoded_bytes
        payloads = _payloads(part)
        # Each frame is sent once the next is read, so the last one is known to be the last.
        ahead = next(payloads)
        for payload in payloads:
            yield ahead + _TRAILER.pack(size, decoded_bytes, _MORE)
            ahead = payload
        yield ahead + _TRAILER.pack(size, decoded_bytes, _LAST)
    except Exception as exc:
        log.error("the decoding helper could not decode message %s (%r); the worker decodes it", item[0], exc)
        yield _ABANDON
    finally:
        if isinstance(part, _Spilled):
            part.spill.close()


# The last frame of a message the helper gave up: empty rows, the worker decodes the message itself.
_ABANDON = marshal.dumps(([], [], [], [], 0)) + _TRAILER.pack(0, 0, _ABANDONED)


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The helper's loop: decode each request one message at a time, so it never holds more than
    one message's rows, and send each message's rows as soon as they are built."""
    _write_frame(stdout, b"")  # ready
    stdout.flush()
    while (request := _read_frame(stdin)) is not None:
        items, max_decoded_bytes, now = marshal.loads(request)  # noqa: S302 - from the worker that started us
        for item in items:
            for frame in _frames(item, max_decoded_bytes, now):
                _write_frame(stdout, frame)
            stdout.flush()
        _write_frame(stdout, b"")
        stdout.flush()


def _keep_large_blocks_out_of_the_heap() -> None:
    """glibc raises its mmap threshold each time a large block is freed, so later large blocks (a
    message's JSON, its text) come from the heap, which rarely shrinks: the helper would keep the
    peak of its largest messages for good. A fixed threshold (which mallopt sets) returns them to
    the system when freed (bench/memory.py: with 1 MiB events, the helper's peak went from 155 to
    54 MB). Other C libraries have no such threshold, or no mallopt: nothing to do there."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


_EMPTY_AS_NONE = "--empty-as-none"


def helper_main() -> None:
    """The helper process (started by `_Helper`)."""
    if _EMPTY_AS_NONE in sys.argv[1:]:
        row_format.build_empty_as_none()
    _keep_large_blocks_out_of_the_heap()
    # Ctrl-C reaches the whole process group; the worker decides when to stop, and then closes the
    # helper's stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the worker is gone: nobody wants the rest
        os._exit(0)


class _Window:
    """Bytes of frames read from the helper and not yet taken by the worker, held under a limit.

    One frame larger than the limit alone still passes (a message larger than the limits is still
    decoded, alone). Once closed, nothing waits."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held, self.closed = limit, 0, False
        self._cond = threading.Condition()

    def admit(self, size: int) -> None:
        with self._cond:
            while not self.closed and self.held and self.held + size > self.limit:
                self._cond.wait()
            self.held += size

    def release(self, size: int) -> None:
        with self._cond:
            self.held -= size
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class _Reply:
    """The frames of one request, handed over by the reader thread as they arrive."""

    def __init__(self, window: _Window) -> None:
        self.window = window
        self.frames: SimpleQueue[bytes | None] = SimpleQueue()  # None: the end
        self.failed = False
        self.discarded = False
        self._lock = threading.Lock()

    def put(self, frame: bytes) -> None:
        """From the reader thread: waits while the worker holds READ_AHEAD_BYTES it has not taken."""
        self.window.admit(len(frame))
        with self._lock:
            if self.discarded:
                self.window.release(len(frame))
            else:
                self.frames.put(frame)

    def end(self, failed: bool = False) -> None:
        self.failed = failed
        self.frames.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while (frame := self.frames.get()) is not None:
            self.window.release(len(frame))
            yield frame
        if self.failed:
            raise HelperDied("the decoding helper process exited")

    def discard(self) -> None:
        """Nobody will take the rest: drop what is here and what comes, so the helper goes on."""
        with self._lock:
            self.discarded = True
            while True:
                try:
                    frame = self.frames.get_nowait()
                except Empty:
                    break
                if frame is None:
                    self.frames.put(None)  # the end stays the end
                    break
                self.window.release(len(frame))


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
    def __init__(self, read_ahead_bytes: int) -> None:
        self.proc = subprocess.Popen(
            # The helper builds its rows as this process would (worker/rows.py `NULL`).
            [sys.executable, "-m", "worker.decoders", *([_EMPTY_AS_NONE] if row_format.NULL is None else [])],
            cwd=_ROOT,  # where `worker` is importable from, whatever the worker's own directory
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        _widen_pipe(self.proc.stdout)
        self.window = _Window(read_ahead_bytes)
        self.ready = _Reply(self.window)
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
                self.replies[0].put(frame)
            else:
                with self._lock:
                    self.replies.popleft().end()
        with self._lock:
            self.alive = False
            while self.replies:
                self.replies.popleft().end(failed=True)

    def send(self, items: list[Item], max_decoded_bytes: int, now: int) -> _Reply:
        reply = _Reply(self.window)
        with self._lock:  # the reader matches replies to requests in order
            if not self.alive:
                reply.end(failed=True)
                return reply
            self.replies.append(reply)
            self._requests.put(marshal.dumps((items, max_decoded_bytes, now)))
        return reply

    def close(self) -> None:
        self.window.close()  # the reader no longer waits for the worker to take frames
        self._requests.put(None)
        self._writer.join(timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()  # the reader is done with it


class _Stream:
    """Where the worker is in a message the helper sends in several frames (see `_HelperParts`)."""

    def __init__(self, first: bytes) -> None:
        self.frame: bytes | None = first  # the next frame to load, once read
        self.flag = first[-1]  # the flag of the last frame read
        self.started = False
        self.detached = False  # the reader moved on to the next message: its frames are gone


class _HelperParts:
    """The parts of one request, as the helper sends them; decoded here instead if it dies.

    A message that crosses in one frame is loaded at once. One in several frames is a `Streamed`
    part that loads each frame only when the store asks for the next chunk, so the worker holds
    about a frame of it at a time. If the next part is asked for before a `Streamed` part's frames
    were all read, they are passed over and that part decodes its message here when read."""

    def __init__(self, reply: _Reply, items: list[Item], max_decoded_bytes: int, now: int) -> None:
        self._reply, self._max, self._now = reply, max_decoded_bytes, now
        self._items = deque(items)  # not yet taken, in order
        self._frames: Iterator[bytes] | None = iter(reply)
        self._ahead: bytes | Batch | Streamed | None = None  # the next part: its first frame, or its rows
        self._open: _Stream | None = None  # the Streamed part handed out whose frames are still coming

    def __iter__(self) -> Iterator[Part]:
        return self

    def peek(self) -> tuple[int, int] | None:
        self._detach()
        if self._ahead is None and self._items:
            self._ahead = self._frame()
            if self._ahead is None:  # the helper is gone
                self._ahead = decode_message(self._items[0], self._max, self._now)
        if isinstance(self._ahead, (Batch, Streamed)):
            return self._ahead.size, self._ahead.decoded_bytes
        if self._ahead is None:
            return None
        size, decoded_bytes, _flag = _TRAILER.unpack_from(self._ahead, len(self._ahead) - _TRAILER.size)
        return size, decoded_bytes

    def __next__(self) -> Part:
        if self.peek() is None:
            raise StopIteration
        first, self._ahead = self._ahead, None
        item = self._items.popleft()
        if isinstance(first, (Batch, Streamed)):
            return first
        assert first is not None
        if first[-1] == _MORE:
            size, decoded_bytes, _flag = _TRAILER.unpack_from(first, len(first) - _TRAILER.size)
            self._open = stream = _Stream(first)
            return Streamed(size, decoded_bytes, self._stream(stream, item), lambda: self._decode_again(item))
        part = self._load(first, item)
        return part if part is not None else decode_message(item, self._max, self._now)

    def _decode_again(self, item: Item) -> Iterator[Rows]:
        return chunks_of(decode_message(item, self._max, self._now))

    def _stream(self, stream: _Stream, item: Item) -> Iterator[Rows]:
        """A message's chunks, each loaded from its frame when asked for. A failure half-way (the
        helper died or gave up, a frame cut wrong) raises: the store's transaction is then rolled
        back, and the worker writes the message again alone, decoding it here."""
        if stream.detached:  # its frames were passed over before any was read: decode it here
            yield from self._decode_again(item)
            return
        stream.started = True
        while (frame := stream.frame) is not None:
            stream.frame = None
            if frame[-1] == _ABANDONED:
                raise HelperDied(f"the decoding helper gave up message {item[0]} half-way")
            events, adjustments, envelopes, rejects, _ = marshal.loads(frame)  # noqa: S302 - our own helper's output
            del frame
            yield Rows(events, adjustments, envelopes, rejects)
            del events, adjustments, envelopes, rejects
            if stream.flag != _MORE:
                break
            if stream.detached:
                raise HelperDied(f"the rest of message {item[0]} was passed over before it was read")
            stream.frame = self._frame()
            if stream.frame is None:
                raise HelperDied(f"the decoding helper stopped half-way through message {item[0]}")
            stream.flag = stream.frame[-1]
        if self._open is stream:
            self._open = None

    def _detach(self) -> None:
        """Pass over what is left of the open Streamed part's frames (the next part is wanted)."""
        stream, self._open = self._open, None
        if stream is not None and stream.flag == _MORE:
            stream.detached = True
            stream.frame = None
            self._skip(stream.flag)

    def _frame(self) -> bytes | None:
        if self._frames is None:
            return None
        try:
            return next(self._frames)
        except (HelperDied, StopIteration):
            log.error("the decoding helper died mid-batch; decoding its other %d messages here", len(self._items))
            self._frames = None
            return None

    def _load(self, frame: bytes | None, item: Item) -> Batch | None:
        """A message's rows from its frames, the first one given; None: decode it here instead."""
        part = Batch()
        while frame is not None:
            flag = frame[-1]
            if flag == _ABANDONED:
                return None
            try:
                events, adjustments, envelopes, rejects, _ = marshal.loads(frame)  # noqa: S302 - our own helper's output
                _size, decoded_bytes, _flag = _TRAILER.unpack_from(frame, len(frame) - _TRAILER.size)
            except Exception as exc:  # a frame cut wrong: decode this one message here
                log.error(
                    "a frame from the decoding helper cannot be read (%r); decoding message %s here", exc, item[0]
                )
                self._skip(flag)
                return None
            part.extend(Rows(events, adjustments, envelopes, rejects))
            part.decoded_bytes = decoded_bytes
            if flag == _LAST:
                return part
            frame = self._frame()
        return None

    def _skip(self, flag: int) -> None:
        """Pass over the rest of a message's frames."""
        while flag == _MORE and (frame := self._frame()) is not None:
            flag = frame[-1]

    def close(self) -> None:
        self._detach()
        if self._items:
            self._items.clear()
            self._ahead = None
            self._reply.discard()


class ProcessDecoder:
    """Decodes in one helper process, started now and again whenever it has died."""

    overlaps = True

    def __init__(self, read_ahead_bytes: int = READ_AHEAD_BYTES) -> None:
        self._helper: _Helper | None = None
        self.read_ahead_bytes = read_ahead_bytes

    def _running(self) -> _Helper:
        if self._helper is None or not self._helper.alive:
            if self._helper is not None:
                log.error("the decoding helper process exited (%s); starting a new one", self._helper.proc.poll())
                self._helper.close()
            self._helper = _Helper(self.read_ahead_bytes)
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

    def submit(self, items: Sequence[Item], max_decoded_bytes: int, now: int) -> Parts:
        items = list(items)
        return _HelperParts(self._running().send(items, max_decoded_bytes, now), items, max_decoded_bytes, now)

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
        choice = "process" if usable_cpus() > 1 else "inline"
    return ProcessDecoder().start() if choice == "process" else InlineDecoder()


def usable_cpus() -> int:
    """The CPUs this process may run on: a container's cpuset or `taskset` counts, not the machine's.
    On one CPU a helper only adds the cost of sending its rows across the pipe."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS or Windows
        return os.cpu_count() or 1


if __name__ == "__main__":
    helper_main()
