"""Queue backends: pick one from the settings."""

from __future__ import annotations

from ..settings import Settings
from .base import Depth, Message, Queue, QueueUnavailable, SendResult

__all__ = ["Depth", "Message", "Queue", "QueueUnavailable", "SendResult", "open_queue"]


def open_queue(settings: Settings) -> Queue:
    if settings.queue_backend == "sqs":
        from .sqs import SqsQueue

        assert settings.queue_url is not None
        return SqsQueue.from_settings(settings)
    from .local import LocalQueue

    return LocalQueue(settings.local_queue_path)
