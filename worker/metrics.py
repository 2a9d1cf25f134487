"""Prometheus metrics for the worker (`read_queue.py --metrics-port N`).

Each `Metrics` has its own registry, so several workers in one process (tests) never share
counters. The worker feeds it as an observer: after every committed batch, and with a queue
depth sample about once a second.

The lag is now minus the newest event time stored, never negative. Event times are the sender's
clock, so one dated more than FUTURE_SKEW_SECONDS ahead of now when it is stored is left out:
otherwise a single hostile or mis-clocked event would hold the lag at zero (or below) for years,
and an alert on it could never fire.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from db.batch import EVENT_COLUMNS
from db.errors import DatabaseFault
from db.store import FUTURE_SKEW_SECONDS

if TYPE_CHECKING:
    from chalicelib.queues import Depth, Message
    from db.batch import Rows
    from db.store import WriteStats
    from db.stores import WritableStore
    from worker.loop import Totals

log = logging.getLogger("tune_firehose.metrics")

_EVENT_TIME = EVENT_COLUMNS.index("event_time")
# Commits of one SQLite transaction: milliseconds normally, seconds when waiting out a lock.
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            # The standard process (CPU, memory, files) and runtime metrics operators expect.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = r = registry
        self.messages = Counter("tune_firehose_messages", "Queue messages committed and deleted", registry=r)
        self.events = Counter("tune_firehose_events", "New events stored", registry=r)
        self.duplicates = Counter(
            "tune_firehose_duplicates",
            "Events and updates already stored (redeliveries, re-sends)",
            ["kind"],
            registry=r,
        )
        self.adjustments = Counter("tune_firehose_adjustments", "New adjustment updates stored", registry=r)
        self.rejects = Counter("tune_firehose_rejects", "New rejects (undecodable messages or events)", registry=r)
        self.commit_seconds = Histogram(
            "tune_firehose_batch_commit_seconds",
            "Time to write one batch transaction",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.queue_messages = Gauge(
            "tune_firehose_queue_messages", "Queue depth by state (approximate on SQS)", ["state"], registry=r
        )
        self.queue_oldest_age = Gauge(
            "tune_firehose_queue_oldest_message_age_seconds",
            "Age of the oldest queued message (local queue)",
            registry=r,
        )
        self.newest_event_time = Gauge(
            "tune_firehose_newest_event_timestamp_seconds", "Event time (epoch) of the newest event stored", registry=r
        )
        self.ingest_lag = Gauge(
            "tune_firehose_ingest_lag_seconds",
            "Now minus the event time of the newest event stored (future-dated events left out), never negative",
            registry=r,
        )
        self._newest: float | None = None
        self._lock = threading.Lock()
        # Evaluated at scrape time, so the lag keeps growing while nothing arrives.
        self.ingest_lag.set_function(self._lag)
        self.queue_oldest_age.set(math.nan)
        self.newest_event_time.set(math.nan)
        self._server: Any = None

    def _lag(self) -> float:
        with self._lock:
            return math.nan if self._newest is None else max(0.0, time.time() - self._newest)

    def _saw_event_times(self, times: list[int]) -> None:
        horizon = time.time() + FUTURE_SKEW_SECONDS
        plausible = [t for t in times if t <= horizon]
        if not plausible:
            return
        when = max(plausible)
        with self._lock:
            if self._newest is None or when > self._newest:
                self._newest = when
                self.newest_event_time.set(when)

    def seed(self, store: WritableStore) -> None:
        """Start the lag from what the database already holds (an index makes this cheap), on
        either store, by the rule of db/store.newest_event_time."""
        try:
            newest = store.newest_event_time(time.time())
        except DatabaseFault as exc:
            log.warning("could not read the newest event time: %s", exc)
            return
        self._saw_event_times([] if newest is None else [newest])

    # -- worker observer ---------------------------------------------------------------------

    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None:
        self.messages.inc(len(messages))
        self.events.inc(stats.events)
        self.duplicates.labels("event").inc(stats.duplicates)
        self.duplicates.labels("adjustment").inc(stats.duplicate_adjustments)
        self.adjustments.inc(stats.adjustments)
        self.rejects.inc(stats.rejects)
        self.commit_seconds.observe(commit_seconds)
        # An empty event_time is None, or worker.rows.NULL (a NaN) in rows built for binding.
        self._saw_event_times([t for row in batch.events if type(t := row[_EVENT_TIME]) is int])

    def sampled(self, totals: Totals, depth: Depth | None, final: bool = False) -> None:
        if depth is None:
            return
        self.queue_messages.labels("visible").set(depth.visible)
        self.queue_messages.labels("in_flight").set(depth.in_flight)
        if depth.dead is not None:
            self.queue_messages.labels("dead").set(depth.dead)
        self.queue_oldest_age.set(math.nan if depth.oldest_age_seconds is None else depth.oldest_age_seconds)

    # -- endpoint ----------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on a daemon thread; return the port (useful when `port` is 0)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", addr, bound, extra={"data": {"metrics_port": bound}})
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
