"""`python read_queue.py [run]`: the worker, until SIGINT/SIGTERM or, with --until-empty, a drained queue."""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass

from chalicelib.queues import open_queue
from chalicelib.settings import Settings
from db.errors import StoppedWhileWaiting
from db.stores import describe, open_store, uses_postgres
from worker import logs
from worker.decoders import make_decoder
from worker.loop import Limits, Observer, Worker
from worker.rows import build_empty_as_none

EXIT_USAGE = 2


@dataclass(frozen=True)
class RunOptions:
    until_empty: bool = False
    wait_seconds: float = 20
    visibility_timeout: int = 60
    decode: str = "auto"
    quiet: bool = False
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    allow_network_fs: bool = False


def run_worker(options: RunOptions, settings: Settings) -> int:
    # A stop asked for while starting up is remembered, so it still ends in a clean exit 0.
    early_stops: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: early_stops.append(number))
    observers: list[Observer] = []
    if options.log_format == "json":
        observers.append(logs.BatchLog())
    metrics = None
    if options.metrics_port is not None:
        from worker.metrics import Metrics  # prometheus_client is needed only with --metrics-port

        metrics = Metrics()
        try:
            metrics.serve(options.metrics_port, options.metrics_addr)
        except OSError as exc:
            print(
                f"read_queue.py: cannot serve metrics on {options.metrics_addr}:{options.metrics_port}: {exc}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        observers.append(metrics)
    try:  # DATABASE_URL selects PostgreSQL, else SQLite at DB_PATH; a stop ends a wait for a lock or a server
        store = open_store(settings, give_up=lambda: bool(early_stops), allow_network_fs=options.allow_network_fs)
    except StoppedWhileWaiting as exc:
        print(f"read_queue.py: {exc}; nothing was read", file=sys.stderr)
        return 0
    queue = open_queue(settings)
    if metrics is not None:  # the lag starts from the newest event already stored, on either store
        metrics.seed(store)
    limits = Limits(
        wait_seconds=options.wait_seconds,
        visibility_timeout=options.visibility_timeout,
        max_decoded_bytes=settings.max_decoded_bytes,
    )
    # In JSON mode stderr carries only JSON lines; progress travels in the batch records.
    quiet = options.quiet or options.log_format == "json"
    if uses_postgres(settings):  # before the decoder starts its helper, which builds rows alike
        build_empty_as_none()
    decoder = make_decoder(options.decode)
    worker = Worker(queue, store, limits, out=None if quiet else sys.stderr, observers=observers, decoder=decoder)
    worker.install_signal_handlers()
    worker.stopping = bool(early_stops)
    logging.getLogger("tune_firehose.worker").info(
        "worker started: queue=%r db=%s",
        queue,
        describe(settings),
        extra={"data": {"queue": repr(queue), "db": describe(settings)}},
    )
    try:
        return worker.run(until_empty=options.until_empty)
    finally:
        decoder.close()
        if metrics is not None:
            metrics.close()
        store.close()
        queue.close()
