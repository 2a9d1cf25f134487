"""The queue interface: the few verbs the endpoint and the worker need, nothing more.

Both backends (SQS and the embedded local queue) implement it and pass the same contract
tests, so code above this line never asks which one it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

SQS_LEGACY_MAX_MESSAGE_BYTES = 256 * 1024
MAX_BATCH_ENTRIES = 10


@dataclass(frozen=True)
class Message:
    message_id: str
    receipt: str
    body: str
    receive_count: int
    sent_at: float | None = None


@dataclass
class SendResult:
    message_ids: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index in the request, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Depth:
    visible: int
    in_flight: int
    dead: int | None = None
    oldest_age_seconds: float | None = None


@dataclass
class Redriven:
    moved: int = 0
    failed: int = 0  # dead letters the main queue did not accept: they stay in the dead-letter queue


class Queue(Protocol):
    backend: str  # "local" or "sqs"

    def max_message_bytes(self) -> int: ...

    def send_all(self, bodies: list[str]) -> SendResult:
        """Send every body; report each one that the queue did not accept."""
        ...

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        """Long-poll for up to `max_messages`; they stay hidden for `visibility_timeout` seconds."""
        ...

    def delete(self, receipts: list[str]) -> list[str]:
        """Delete received messages; return the receipts that were not deleted."""
        ...

    def change_visibility(self, receipts: list[str], timeout: int) -> list[str]:
        """Hide received messages for `timeout` more seconds; return receipts that failed."""
        ...

    def depth(self) -> Depth: ...

    def redrive(self, limit: int | None = None, on_moved: Callable[[int], None] | None = None) -> Redriven:
        """Move up to `limit` dead letters (default: all) back to the queue, where they arrive with a
        fresh receive count; `on_moved(n)` after each step. A message leaves the dead-letter queue
        only once the queue holds it again, so a failure never loses one."""
        ...

    def close(self) -> None: ...
