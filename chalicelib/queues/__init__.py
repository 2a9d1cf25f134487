"""Queue backends: pick one from the settings."""

from __future__ import annotations

from ..errors import NotAQueue
from ..settings import Settings, SettingsError
from .base import Depth, Message, Queue, Redriven, SendResult

__all__ = ["Depth", "Message", "Queue", "Redriven", "SendResult", "open_queue"]


def open_queue(settings: Settings, readonly: bool = False) -> Queue:
    """The configured queue. `readonly`: only `depth()` will be asked for, so a local queue file is
    opened for reading and left exactly as it is (SQS is only read by `depth()` anyway)."""
    if settings.queue_backend == "sqs":
        from .sqs import SqsQueue

        assert settings.queue_url is not None
        return SqsQueue.from_settings(settings)
    from .local import LocalQueue

    try:
        return LocalQueue(settings.local_queue_path, readonly=readonly)
    except NotAQueue as exc:
        named = (
            f"QUEUE_URL={settings.queue_url}"
            if settings.queue_url
            else "QUEUE_URL is not set, so the default local queue is used"
        )
        raise SettingsError(f"{named}: {exc}") from exc
