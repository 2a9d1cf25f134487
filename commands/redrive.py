"""`read_queue.py redrive`: move dead letters back to the main queue, after a fix.

The queue backend does the moving (`Queue.redrive`): the local queue in one transaction, SQS by
receiving from the dead-letter queue its RedrivePolicy names, sending to the main queue and only
then deleting from the dead-letter queue, so a failure leaves a message where it was.
"""

from __future__ import annotations

import sys

from chalicelib.errors import QueueUnavailable
from chalicelib.queues import Redriven, open_queue
from chalicelib.settings import Settings

from .progress import progress

NAME = "redrive"
HELP = "move dead-letter messages back to the main queue (SQS or local)"
EPILOG = """examples:
  python read_queue.py redrive                       # every dead letter
  python read_queue.py redrive --queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/firehose --max 1000

Fix the cause first (see `status` for the reasons), or the messages come straight back."""


def run(settings: Settings, *, limit: int | None = None) -> int:
    """Move up to `limit` dead letters (None: all) back; 1 if the queue failed or some could not be moved."""
    queue = open_queue(settings)
    try:
        total = queue.depth().dead
        if limit is not None and total is not None:
            total = min(total, limit)
        with progress("redrive", "msg", total) as bar:
            result: Redriven = queue.redrive(limit, on_moved=bar.advance)
    except QueueUnavailable as exc:
        print(f"read_queue.py redrive: {exc}", file=sys.stderr)
        return 1
    finally:
        queue.close()
    print(
        f"redrive: moved {result.moved:,} message(s) back to the queue"
        + (f", {result.failed:,} failed" if result.failed else "")
    )
    return 1 if result.failed else 0
