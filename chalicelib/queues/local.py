"""The embedded local queue: a SQLite file with SQS's semantics.

Receive takes messages whose visibility time has passed, hides them for the visibility
timeout and hands out a fresh receipt handle; only the newest receipt can delete. A message
received more than `max_receives` times moves to `dead_letters` instead of being delivered.
Every receive runs in a `BEGIN IMMEDIATE` transaction, so processes sharing the file never
get the same message inside its visibility window.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from .base import SQS_LEGACY_MAX_MESSAGE_BYTES, Depth, Message, QueueUnavailable, SendResult

DEFAULT_MAX_RECEIVES = 5
POLL_INTERVAL_SECONDS = 0.05

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
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_receives = max_receives
        self._max_message_bytes = max_message_bytes
        self._lock = threading.Lock()  # the worker's heartbeat thread shares this connection
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a send that returned has reached the disk, which is what a 202 promises. Receives,
        # deletes and visibility changes commit with NORMAL (no fsync of their own; the next FULL
        # commit or checkpoint syncs them): one lost to a power cut only means a redelivery, which
        # at-least-once already allows. This removes two fsyncs per receive/delete round trip.
        self._db.execute("PRAGMA synchronous=FULL")
        self._synchronous = "FULL"
        self._db.execute("PRAGMA busy_timeout=60000")
        with self._lock:
            self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"LocalQueue({str(self.path)!r})"

    def max_message_bytes(self) -> int:
        return self._max_message_bytes

    def _transaction(self, fn, durable: bool = False):  # type: ignore[no-untyped-def]
        with self._lock:
            try:
                synchronous = "FULL" if durable else "NORMAL"
                if synchronous != self._synchronous:
                    self._db.execute(f"PRAGMA synchronous={synchronous}")
                    self._synchronous = synchronous
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
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
            visible, in_flight, oldest = self._db.execute(
                "SELECT coalesce(sum(visible_at <= ?), 0), coalesce(sum(visible_at > ?), 0), min(sent_at) "
                "FROM messages",
                (now, now),
            ).fetchone()
            (dead,) = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()
        return Depth(visible, in_flight, dead, None if oldest is None else max(0.0, now - oldest))

    def redrive(self) -> int:
        """Move every dead letter back to the queue with a fresh receive count."""

        def run(db: sqlite3.Connection) -> int:
            now = time.time()
            moved = db.execute(
                "INSERT INTO messages (message_id, body, md5_of_body, sent_at, visible_at) "
                "SELECT message_id, body, md5_of_body, sent_at, ? FROM dead_letters",
                (now,),
            ).rowcount
            db.execute("DELETE FROM dead_letters")
            return moved

        return self._transaction(run, durable=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()
