"""Logging for the worker and the commands: human text (default) or one JSON object a line.

Every logger is named `tune_firehose.<part>` (endpoint, sqs, store, postgres, netfs, worker,
decoders, batches, metrics, merge, reprocess), never after its module: the names are what an operator
filters and alerts on, so moving a file does not rename them. `configure` below is the one logging
set-up of the worker and the commands.

Structured fields travel in `extra={"data": {...}}`; the JSON formatter lifts them to the top
level. Only identifiers and counts go there: never message bodies, events or settings, which
may hold personal data or secrets.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from chalicelib.queues import Depth, Message
    from db.batch import Rows
    from db.store import WriteStats
    from worker.loop import Totals

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Per-batch records duplicate the text progress line, so only JSON logs carry them.
BATCH_LOGGER = "tune_firehose.batches"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data = getattr(record, "data", None)
        if isinstance(data, dict):
            doc.update({k: v for k, v in data.items() if k not in doc})
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """(Re)configure the root logger; safe to call after logging.basicConfig."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level)
    logging.getLogger(BATCH_LOGGER).setLevel(logging.INFO if fmt == "json" else logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


class BatchLog:
    """Worker observer: one structured record per committed batch, and a periodic summary."""

    def __init__(self, every_seconds: float = 60.0) -> None:
        self.log = logging.getLogger(BATCH_LOGGER)
        self.every_seconds = every_seconds
        self._last = time.monotonic()

    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None:
        self.log.info(
            "batch committed",
            extra={
                "data": {
                    "messages": len(messages),
                    "message_ids": [m.message_id for m in messages],
                    "redelivered": sum(1 for m in messages if m.receive_count > 1),
                    "events": stats.events,
                    "duplicates": stats.duplicates + stats.duplicate_adjustments,
                    "adjustments": stats.adjustments,
                    "rejects": stats.rejects,
                    "commit_ms": round(commit_seconds * 1000, 2),
                }
            },
        )

    def sampled(self, totals: Totals, depth: Depth | None, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.every_seconds:
            return
        self._last = now
        self.log.info("done" if final else "progress", extra={"data": summary(totals, depth)})


def summary(totals: Totals, depth: Depth | None) -> dict[str, Any]:
    w = totals.written
    out: dict[str, Any] = {
        "messages": totals.messages,
        "events": w.events,
        "duplicates": w.duplicates + w.duplicate_adjustments,
        "adjustments": w.adjustments,
        "rejects": w.rejects,
    }
    if depth is not None:
        out.update(queue_visible=depth.visible, queue_in_flight=depth.in_flight)
        if depth.dead is not None:
            out["queue_dead"] = depth.dead
        if depth.oldest_age_seconds is not None:
            out["queue_oldest_age_s"] = round(depth.oldest_age_seconds, 1)
    return out


class ProgressLine:
    """Worker observer: the human progress line on stderr, at most once a second, and a last one."""

    def __init__(self, out: TextIO, clock: Callable[[], float]) -> None:
        self.out, self.clock = out, clock

    def batch_written(self, messages: list[Message], batch: Rows, stats: WriteStats, commit_seconds: float) -> None:
        pass

    def sampled(self, totals: Totals, depth: Depth | None, final: bool = False) -> None:
        w = totals.written
        elapsed = max(self.clock() - totals.started, 1e-9)
        line = (
            f"{'done' if final else 'progress'}: {w.events / elapsed:,.0f} events/s | messages {totals.messages:,} | "
            f"events {w.events:,} | duplicates {w.duplicates + w.duplicate_adjustments:,} | "
            f"adjustments {w.adjustments:,} | rejects {w.rejects:,}{_depth_text(depth)}"
        )
        print(line, file=self.out, flush=True)


def _depth_text(depth: Depth | None) -> str:
    if depth is None:
        return ""
    text = f" | queue {depth.visible:,} visible, {depth.in_flight:,} in flight"
    if depth.dead:
        text += f", {depth.dead:,} dead"
    if depth.oldest_age_seconds is not None:
        text += f", oldest {depth.oldest_age_seconds:,.0f} s"
    return text
