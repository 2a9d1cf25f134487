"""Every exception chalicelib raises on purpose, in one module.

Callers choose what to do by class, never by reading the message: an endpoint answers 413 for a
`TooLarge` and 400 for any other `CodecError`; the worker turns any `CodecError` into a reject.
The messages are for people: each says what is wrong and where.
"""

from __future__ import annotations


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


class CodecError(ValueError):
    """A body or an event that cannot be decoded or serialised (HTTP 400 at the endpoint)."""


class TooLarge(CodecError):
    """Input over a size limit (HTTP 413 at the endpoint)."""


class BodyTooLarge(TooLarge):
    """A body that inflates, or decodes, to more than the decoded-size limit."""


class EventTooLarge(TooLarge):
    """One event over the per-event limit, or too big for a queue message on its own."""


class Rejected(Exception):
    """A request the endpoint refuses: its HTTP status and the reason sent back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class QueueUnavailable(Exception):
    """The queue could not be reached or refused the call; retrying later may succeed."""


class NotAQueue(ValueError):
    """The configured queue is not one (a local queue path that holds no SQLite file); retrying will not help."""
