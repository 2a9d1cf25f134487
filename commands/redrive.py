"""`read_queue.py redrive`: move dead letters back to the main queue, after a fix.

Local queue: one transaction moves every dead letter back with a fresh receive count.

SQS: the dead-letter queue is the one the main queue's RedrivePolicy names. Messages are
received from it, sent to the main queue, and deleted from it only once the send succeeded,
so a failure leaves a message where it was (at worst a message is in both queues for a
moment, and the database keys absorb the duplicate). This works on any SQS-compatible
server; AWS's StartMessageMoveTask would do the same server-side, but not everywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.queues import QueueUnavailable, open_queue
from chalicelib.queues.base import MAX_BATCH_ENTRIES
from chalicelib.queues.local import LocalQueue
from chalicelib.settings import Settings

log = logging.getLogger("tune_firehose.redrive")

NAME = "redrive"
HELP = "move dead-letter messages back to the main queue (SQS or local)"
EPILOG = """examples:
  python read_queue.py redrive                       # every dead letter
  python read_queue.py redrive --queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/firehose --max 1000

Fix the cause first (see `status` for the reasons), or the messages come straight back."""

# Long enough that a message we failed to send does not reappear during this run.
DLQ_VISIBILITY_SECONDS = 300


@dataclass
class RedriveResult:
    moved: int = 0
    failed: int = 0


def add_arguments(p: argparse.ArgumentParser, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    add_common(p)
    p.add_argument("--max", type=_positive, metavar="N", help="move at most N messages (default: all)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def dead_letter_url(client: Any, queue_url: str) -> str:
    """The URL of the queue the main queue's RedrivePolicy sends dead letters to."""
    try:
        attrs = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
        attrs = attrs.get("Attributes", {})
    except (BotoCoreError, ClientError) as exc:
        raise QueueUnavailable(f"cannot read the RedrivePolicy of {queue_url}: {exc}") from exc
    policy = attrs.get("RedrivePolicy")
    if not policy:
        raise QueueUnavailable(f"{queue_url} has no RedrivePolicy, so it has no dead-letter queue")
    arn = json.loads(policy).get("deadLetterTargetArn", "")
    parts = arn.split(":")
    if len(parts) < 6:
        raise QueueUnavailable(f"RedrivePolicy of {queue_url} names no valid deadLetterTargetArn: {arn!r}")
    try:
        return str(client.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"])
    except (BotoCoreError, ClientError) as exc:
        raise QueueUnavailable(f"cannot find the dead-letter queue {arn}: {exc}") from exc


def _approximate_depth(client: Any, url: str) -> int | None:
    try:
        attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])
    except (BotoCoreError, ClientError, KeyError, ValueError):
        return None


def redrive_sqs(queue: Any, limit: int | None = None, show_progress: bool | None = None) -> RedriveResult:
    from tqdm import tqdm

    client = queue.client
    dlq = dead_letter_url(client, queue.url)
    result = RedriveResult()
    failed_ids: set[str] = set()
    empty_polls = 0
    total = _approximate_depth(client, dlq)
    if limit is not None and total is not None:
        total = min(total, limit)
    with tqdm(total=total, unit="msg", desc="redrive", disable=True if show_progress is False else None) as bar:
        while limit is None or result.moved < limit:
            want = MAX_BATCH_ENTRIES if limit is None else max(1, min(MAX_BATCH_ENTRIES, limit - result.moved))
            try:
                got = client.receive_message(
                    QueueUrl=dlq,
                    MaxNumberOfMessages=want,
                    WaitTimeSeconds=1,
                    VisibilityTimeout=DLQ_VISIBILITY_SECONDS,
                )
            except (BotoCoreError, ClientError) as exc:
                raise QueueUnavailable(f"cannot receive from the dead-letter queue {dlq}: {exc}") from exc
            messages = [m for m in got.get("Messages", []) if m["MessageId"] not in failed_ids]
            if not messages:
                # An empty short answer can miss messages on other SQS servers: ask twice.
                empty_polls += 1
                if empty_polls >= 2:
                    break
                continue
            empty_polls = 0
            sent = queue.send_all([m["Body"] for m in messages])
            bad = {index for index, _reason in sent.failed}
            for index, reason in sent.failed:
                failed_ids.add(messages[index]["MessageId"])
                log.warning(
                    "could not send dead letter %s back: %s",
                    messages[index]["MessageId"],
                    reason,
                    extra={"data": {"message_id": messages[index]["MessageId"]}},
                )
            done = [m for i, m in enumerate(messages) if i not in bad]
            if done:
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)]
                try:
                    resp = client.delete_message_batch(QueueUrl=dlq, Entries=entries)
                    for miss in resp.get("Failed", []):
                        log.warning(
                            "sent dead letter %s back but could not delete it from the dead-letter queue "
                            "(the duplicate is harmless): %s",
                            done[int(miss["Id"])]["MessageId"],
                            miss.get("Message", miss.get("Code")),
                        )
                except (BotoCoreError, ClientError) as exc:
                    log.warning("sent %d dead letters back but could not delete them (harmless): %s", len(done), exc)
            result.moved += len(done)
            result.failed += len(bad)
            bar.update(len(messages))
    return result


def run(args: argparse.Namespace, settings: Settings) -> int:
    queue = open_queue(settings)
    try:
        if isinstance(queue, LocalQueue):
            if args.max is not None:
                print(
                    "redrive: --max applies to SQS only; the local queue moves every dead letter at once",
                    file=sys.stderr,
                )
            moved = queue.redrive()
            result = RedriveResult(moved=moved)
        else:
            result = redrive_sqs(queue, args.max)
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
