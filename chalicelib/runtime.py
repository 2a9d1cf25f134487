"""Per-container state of the Lambda: settings and the queue, made once and reused.

The settings are loaded at cold start (app.py), and on Lambda they must be fit to face the
internet: a token (or an explicit ALLOW_ANONYMOUS=true) and an SQS queue. Otherwise the import
fails with a SettingsError that says what to set, and the function serves nothing. `chalice
local` and the tests are not Lambda: there the endpoint stays open unless FIREHOSE_TOKEN is set.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from .errors import SettingsError
from .queues import Queue, open_queue
from .settings import Settings, load_settings

LAMBDA_MARKER = "AWS_LAMBDA_FUNCTION_NAME"  # set by the Lambda runtime, never by chalice local


def check_can_serve(settings: Settings, environ: Mapping[str, str]) -> None:
    """Raise SettingsError when the endpoint runs on Lambda open to anyone, or with no queue a worker reads."""
    function = environ.get(LAMBDA_MARKER)
    if not function:
        return
    if settings.queue_backend != "sqs":
        raise SettingsError(
            f"QUEUE_URL must be an SQS queue URL on Lambda (function {function}), got "
            f"{settings.queue_url or 'nothing'}: set it in .chalice/config.json, "
            "stages.<stage>.environment_variables.QUEUE_URL (see docs/deploying.md)"
        )
    if settings.firehose_token is None and not settings.allow_anonymous:
        raise SettingsError(
            f"FIREHOSE_TOKEN is not set on Lambda (function {function}), so anyone could post events: "
            "the endpoint refuses to start. Deploy with the token (docs/deploying.md), or set "
            "ALLOW_ANONYMOUS=true to accept requests without one"
        )


class Runtime:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._queue: Queue | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            settings = load_settings()
            check_can_serve(settings, os.environ)
            self._settings = settings
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
