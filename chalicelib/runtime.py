"""Per-container state of the Lambda: settings and the queue, made once and reused."""

from __future__ import annotations

import threading

from .queues import Queue, open_queue
from .settings import Settings, load_settings


class Runtime:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._queue: Queue | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def queue(self) -> Queue:
        with self._lock:
            if self._queue is None:
                self._queue = open_queue(self.settings)
            return self._queue

    def reset(self, settings: Settings | None = None, queue: Queue | None = None) -> None:
        """Swap in new settings or a queue (tests; a changed environment)."""
        with self._lock:
            self._settings = settings
            self._queue = queue
