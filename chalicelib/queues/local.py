"""The embedded local queue: a SQLite file with SQS's semantics.

Receive takes messages whose visibility time has passed, hides them for the visibility
timeout and hands out a fresh receipt handle; only the newest receipt can delete. A message
received more than `max_receives` times moves to `dead_letters` instead of being delivered.
Every receive runs in a `BEGIN IMMEDIATE` transaction, so processes sharing the file never
get the same message inside its visibility window. `readonly=True` opens the file for looking only
(`status`): nothing is created, and the journal mode stays as it is.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from chalicelib.sqlite import Synchronous, atomic, connect, is_busy, set_synchronous

from ..errors import NotAQueue, QueueUnavailable
from .base import SQS_LEGACY_MAX_MESSAGE_BYTES, Depth, Message, Redriven, SendResult

T = TypeVar("T")

DEFAULT_MAX_RECEIVES = 5
POLL_INTERVAL_SECONDS = 0.05
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    md5_of_body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (visible_at, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    md5_of_body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    receive_count INTEGER NOT NULL,
    moved_at REAL NOT NULL
);
"""


class LocalQueue:
    backend = "local"

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_receives: int = DEFAULT_MAX_RECEIVES,
        max_message_bytes: int = SQS_LEGACY_MAX_MESSAGE_BYTES,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.max_receives = max_receives
        self._max_message_bytes = max_message_bytes
        self._lock = threading.Lock()  # the worker's heartbeat thread shares this connection
        # FULL: a send that returned has reached the disk, which is what a 202 promises. Receives,
        # deletes and visibility changes commit with NORMAL (no fsync of their own; the next FULL
        # commit or checkpoint syncs them): one lost to a power cut only means a redelivery, which
        # at-least-once already allows. This removes two fsyncs per receive/delete round trip.
        self._synchronous: Synchronous = "FULL"
        try:
            self._db = connect(
                self.path,
                readonly=readonly,
                wal=True,
                synchronous=None if readonly else self._synchronous,
                busy_timeout_ms=BUSY_TIMEOUT_MS,
            )
        except sqlite3.Error as exc:
            raise self._refusal(exc) from exc
        try:
            with self._lock:
                if readonly:
                    self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # is it SQLite at all?
                else:
                    self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise self._refusal(exc) from exc

    def _refusal(self, exc: sqlite3.Error) -> Exception:
        if is_busy(exc):
            return QueueUnavailable(f"local queue {self.path}: {exc}")
        # Not a passing condition: the path names something that is not a queue file.
        return NotAQueue(f"{self.path} cannot be a local queue file: {exc}")

    def __repr__(self) -> str:
        return f"LocalQueue({str(self.path)!r})"

    def max_message_bytes(self) -> int:
        return self._max_message_bytes

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], durable: bool = False) -> T:
        with self._lock:
            try:
                synchronous: Synchronous = "FULL" if durable else "NORMAL"
                if synchronous != self._synchronous:
                    set_synchronous(self._db, synchronous)
                    self._synchronous = synchronous
                with atomic(self._db):
                    return fn(self._db)
            except sqlite3.OperationalError as exc:
                raise QueueUnavailable(f"local queue {self.path}: {exc}") from exc

    def send_all(self, bodies: list[str]) -> SendResult:
        result = SendResult()
        rows = []
        now = time.time()
        for index, body in enumerate(bodies):
            size = len(body.encode("utf-8"))
            if size > self._max_message_bytes:
                result.failed.append((index, f"message is {size} bytes, over the {self._max_message_bytes} limit"))
                continue
            if not body:
                result.failed.append((index, "message body is empty"))
                continue
            message_id = str(uuid.uuid4())
            md5 = hashlib.md5(body.encode("utf-8"), usedforsecurity=False).hexdigest()
            rows.append((message_id, body, md5, now, now))
            result.message_ids.append(message_id)
        if rows:
            self._transaction(
                lambda db: db.executemany(
                    "INSERT INTO messages (message_id, body, md5_of_body, sent_at, visible_at) VALUES (?, ?, ?, ?, ?)",
                    rows,
                ),
                durable=True,
            )
        return result

    def _receive_once(self, db: sqlite3.Connection, max_messages: int, visibility_timeout: int) -> list[Message]:
        now = time.time()
        out: list[Message] = []
        while len(out) < max_messages:
            rows = db.execute(
                "SELECT seq, message_id, body, md5_of_body, sent_at, receive_count FROM messages "
                "WHERE visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                (now, max_messages - len(out)),
            ).fetchall()
            if not rows:
                break
            for seq, message_id, body, md5, sent_at, count in rows:
                if count >= self.max_receives:
                    db.execute(
                        "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                        (message_id, body, md5, sent_at, count, now),
                    )
                    db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
                    continue
                receipt = f"{seq}-{uuid.uuid4().hex}"
                db.execute(
                    "UPDATE messages SET receipt = ?, receive_count = ?, visible_at = ? WHERE seq = ?",
                    (receipt, count + 1, now + visibility_timeout, seq),
                )
                out.append(Message(message_id, receipt, body, count + 1, sent_at))
        return out

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        if not 1 <= max_messages <= 10:
            raise ValueError("max_messages must be between 1 and 10, as on SQS")
        deadline = time.monotonic() + wait_seconds
        while True:
            got = self._transaction(lambda db: self._receive_once(db, max_messages, visibility_timeout))
            if got or time.monotonic() >= deadline:
                return got
            time.sleep(min(POLL_INTERVAL_SECONDS, max(0.0, deadline - time.monotonic())))

    def delete(self, receipts: list[str]) -> list[str]:
        if not receipts:
            return []

        def run(db: sqlite3.Connection) -> list[str]:
            failed = []
            for receipt in receipts:
                if db.execute("DELETE FROM messages WHERE receipt = ?", (receipt,)).rowcount != 1:
                    failed.append(receipt)
            return failed

        return self._transaction(run)

    def change_visibility(self, receipts: list[str], timeout: int) -> list[str]:
        if not receipts:
            return []
        visible_at = time.time() + timeout

        def run(db: sqlite3.Connection) -> list[str]:
            failed = []
            for receipt in receipts:
                cur = db.execute("UPDATE messages SET visible_at = ? WHERE receipt = ?", (visible_at, receipt))
                if cur.rowcount != 1:
                    failed.append(receipt)
            return failed

        return self._transaction(run)

    def depth(self) -> Depth:
        now = time.time()
        with self._lock:
            try:
                visible, in_flight, oldest = self._db.execute(
                    "SELECT coalesce(sum(visible_at <= ?), 0), coalesce(sum(visible_at > ?), 0), min(sent_at) "
                    "FROM messages",
                    (now, now),
                ).fetchone()
                (dead,) = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()
            except sqlite3.Error as exc:  # opened read-only: a file without the queue's tables
                raise QueueUnavailable(f"local queue {self.path}: {exc}") from exc
        return Depth(visible, in_flight, dead, None if oldest is None else max(0.0, now - oldest))

    def redrive(self, limit: int | None = None, on_moved: Callable[[int], None] | None = None) -> Redriven:
        """Move the oldest `limit` dead letters (default: all) back in one transaction."""

        def run(db: sqlite3.Connection) -> int:
            now = time.time()
            # Oldest first; LIMIT -1 is SQLite's "no limit".
            chosen = "SELECT rowid FROM dead_letters ORDER BY moved_at, rowid LIMIT ?"
            count = -1 if limit is None else limit
            moved = db.execute(
                "INSERT INTO messages (message_id, body, md5_of_body, sent_at, visible_at) "
                f"SELECT message_id, body, md5_of_body, sent_at, ? FROM dead_letters WHERE rowid IN ({chosen})",
                (now, count),
            ).rowcount
            db.execute(f"DELETE FROM dead_letters WHERE rowid IN ({chosen})", (count,))
            return moved

        moved = self._transaction(run, durable=True)
        if on_moved is not None:
            on_moved(moved)
        return Redriven(moved=moved)

    def close(self) -> None:
        with self._lock:
            self._db.close()
