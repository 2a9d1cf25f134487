"""Amazon SQS through boto3 (or any SQS-compatible server named by AWS_ENDPOINT_URL_SQS)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import QueueUnavailable
from ..settings import Settings
from .base import MAX_BATCH_ENTRIES, SQS_LEGACY_MAX_MESSAGE_BYTES, Depth, Message, Redriven, SendResult

log = logging.getLogger("tune_firehose.sqs")

ENTRY_RETRIES = 3
RETRY_BASE_SECONDS = 0.1
# Redrive: dead letters in hand stay hidden this long, so one that could not be sent back does not
# come round again in the same run.
DLQ_VISIBILITY_SECONDS = 300


def region_from_url(url: str) -> str | None:
    """`https://sqs.eu-west-1.amazonaws.com/123/q` -> `eu-west-1`."""
    host = url.split("//", 1)[-1].split("/", 1)[0]
    parts = host.split(".")
    if len(parts) >= 4 and parts[0] == "sqs" and parts[2] == "amazonaws":
        return parts[1]
    return None


def make_client(settings: Settings, max_attempts: int = 5) -> Any:
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=5,
        read_timeout=30,  # longer than the 20 s long poll
    )
    kwargs: dict[str, Any] = {
        "region_name": settings.aws_region or region_from_url(settings.queue_url or "") or "us-east-1",
        "config": config,
    }
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    if settings.aws_key and settings.aws_secret:
        kwargs["aws_access_key_id"] = settings.aws_key
        kwargs["aws_secret_access_key"] = settings.aws_secret
    return boto3.client("sqs", **kwargs)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Failure:
    reason: str
    retryable: bool


def _failures(resp: dict[str, Any]) -> dict[int, _Failure]:
    """The `Failed` entries of a batch response, by request index."""
    return {
        int(bad["Id"]): _Failure(f"{bad.get('Code')}: {bad.get('Message', '')}", retryable=not bad.get("SenderFault"))
        for bad in resp.get("Failed", [])
    }


class SqsQueue:
    backend = "sqs"

    def __init__(self, url: str, client: Any) -> None:
        self.url = url
        self.client = client
        self._max_message_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SqsQueue:
        assert settings.queue_url
        return cls(settings.queue_url, make_client(settings))

    def __repr__(self) -> str:
        return f"SqsQueue({self.url!r})"

    def _call(self, name: str, url: str | None = None, **kwargs: Any) -> dict[str, Any]:
        url = url or self.url
        try:
            response: dict[str, Any] = getattr(self.client, name)(QueueUrl=url, **kwargs)
            return response
        except (BotoCoreError, ClientError) as exc:
            raise QueueUnavailable(f"SQS {name} failed for {url}: {_describe(exc)}") from exc

    def max_message_bytes(self) -> int:
        """The queue's MaximumMessageSize, read once; 256 KiB when it cannot be read."""
        if self._max_message_bytes is None:
            try:
                attrs = self._call("get_queue_attributes", AttributeNames=["MaximumMessageSize"])
                self._max_message_bytes = int(attrs["Attributes"]["MaximumMessageSize"])
            except (QueueUnavailable, KeyError, ValueError) as exc:
                log.warning(
                    "could not read MaximumMessageSize, assuming %d bytes: %s", SQS_LEGACY_MAX_MESSAGE_BYTES, exc
                )
                self._max_message_bytes = SQS_LEGACY_MAX_MESSAGE_BYTES
        return self._max_message_bytes

    def _batches(self, sizes: list[int], indexes: list[int]) -> Iterator[list[int]]:
        """Group entries so each call has at most 10 entries and at most the size limit in total."""
        limit = self.max_message_bytes()
        batch: list[int] = []
        total = 0
        for i in indexes:
            if batch and (len(batch) == MAX_BATCH_ENTRIES or total + sizes[i] > limit):
                yield batch
                batch, total = [], 0
            batch.append(i)
            total += sizes[i]
        if batch:
            yield batch

    def _with_entry_retries(
        self, indexes: list[int], call: Callable[[list[int]], dict[int, _Failure]]
    ) -> dict[int, str]:
        """Run `call` on entries, retrying failed ones with backoff; return what still failed.

        Only entries SQS reports as failed on its side are retried here: a whole call that
        raised has already been retried by botocore's standard mode, and an entry the sender
        got wrong (SenderFault) fails the same way every time.
        """
        pending = list(indexes)
        final: dict[int, str] = {}
        for attempt in range(ENTRY_RETRIES + 1):
            if attempt:
                time.sleep(RETRY_BASE_SECONDS * 2 ** (attempt - 1))
            failed = call(pending)
            retry = sorted(i for i, f in failed.items() if f.retryable)
            final.update({i: f.reason for i, f in failed.items() if not f.retryable})
            if retry and attempt == ENTRY_RETRIES:
                final.update({i: failed[i].reason for i in retry})
            pending = retry
            if not pending:
                break
        return final

    def send_all(self, bodies: list[str]) -> SendResult:
        sizes = [len(b.encode("utf-8")) for b in bodies]
        ids: dict[int, str] = {}

        def send(indexes: list[int]) -> dict[int, _Failure]:
            failed: dict[int, _Failure] = {}
            for batch in self._batches(sizes, indexes):
                try:
                    resp = self._call(
                        "send_message_batch",
                        Entries=[{"Id": str(i), "MessageBody": bodies[i]} for i in batch],
                    )
                except QueueUnavailable as exc:
                    failed.update({i: _Failure(str(exc), retryable=False) for i in batch})
                    continue
                for ok in resp.get("Successful", []):
                    ids[int(ok["Id"])] = ok["MessageId"]
                failed.update(_failures(resp))
            return failed

        failed = self._with_entry_retries(list(range(len(bodies))), send)
        return SendResult(
            message_ids=[ids[i] for i in sorted(ids)],
            failed=sorted(failed.items()),
        )

    def receive(self, max_messages: int = 10, wait_seconds: float = 20, visibility_timeout: int = 30) -> list[Message]:
        resp = self._call(
            "receive_message",
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=int(wait_seconds),
            VisibilityTimeout=visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        out = []
        for m in resp.get("Messages", []):
            attrs = m.get("Attributes", {})
            sent = attrs.get("SentTimestamp")
            out.append(
                Message(
                    message_id=m["MessageId"],
                    receipt=m["ReceiptHandle"],
                    body=m["Body"],
                    receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
                    sent_at=int(sent) / 1000 if sent else None,
                )
            )
        return out

    def _receipt_batch_call(self, method: str, receipts: list[str], **extra: Any) -> list[str]:
        def run(indexes: list[int]) -> dict[int, _Failure]:
            failed: dict[int, _Failure] = {}
            for start in range(0, len(indexes), MAX_BATCH_ENTRIES):
                batch = indexes[start : start + MAX_BATCH_ENTRIES]
                try:
                    resp = self._call(
                        method, Entries=[{"Id": str(i), "ReceiptHandle": receipts[i], **extra} for i in batch]
                    )
                except QueueUnavailable as exc:
                    # botocore has retried this call already: the queue is unreachable, so the other
                    # chunks are not tried either (a message not deleted is redelivered and changes
                    # nothing; a visibility not extended is tried again by the next heartbeat).
                    failed.update({i: _Failure(str(exc), retryable=False) for i in indexes[start:]})
                    break
                failed.update(_failures(resp))
            return failed

        failed = self._with_entry_retries(list(range(len(receipts))), run)
        for _i, reason in sorted(failed.items()):
            log.warning("%s failed for a message: %s", method, reason)
        return [receipts[i] for i in sorted(failed)]

    def delete(self, receipts: list[str]) -> list[str]:
        return self._receipt_batch_call("delete_message_batch", receipts) if receipts else []

    def change_visibility(self, receipts: list[str], timeout: int) -> list[str]:
        if not receipts:
            return []
        return self._receipt_batch_call("change_message_visibility_batch", receipts, VisibilityTimeout=timeout)

    def depth(self) -> Depth:
        attrs = self._call(
            "get_queue_attributes",
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "RedrivePolicy"],
        )["Attributes"]
        dead = None
        if attrs.get("RedrivePolicy"):
            try:
                dead = self._visible(self._dead_letter_url(attrs.get("RedrivePolicy")))
            except QueueUnavailable:
                dead = None
        return Depth(
            int(attrs.get("ApproximateNumberOfMessages", 0)),
            int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            dead,
        )

    # -- dead letters ------------------------------------------------------------------------

    def _dead_letter_url(self, policy: str | None) -> str:
        """The URL of the queue the main queue's RedrivePolicy sends dead letters to."""
        if not policy:
            raise QueueUnavailable(f"{self.url} has no RedrivePolicy, so it has no dead-letter queue")
        try:
            arn = str(json.loads(policy).get("deadLetterTargetArn", ""))
        except (ValueError, AttributeError):
            arn = ""
        parts = arn.split(":")
        if len(parts) < 6:
            raise QueueUnavailable(f"RedrivePolicy of {self.url} names no valid deadLetterTargetArn: {arn!r}")
        try:
            return str(self.client.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"])
        except (BotoCoreError, ClientError, KeyError) as exc:
            raise QueueUnavailable(f"cannot find the dead-letter queue {arn}: {exc}") from exc

    def _visible(self, url: str) -> int:
        attrs = self._call("get_queue_attributes", url, AttributeNames=["ApproximateNumberOfMessages"])
        try:
            return int(attrs["Attributes"]["ApproximateNumberOfMessages"])
        except (KeyError, ValueError) as exc:
            raise QueueUnavailable(f"{url} reported no ApproximateNumberOfMessages") from exc

    def redrive(self, limit: int | None = None, on_moved: Callable[[int], None] | None = None) -> Redriven:
        """Receive from the dead-letter queue, send to this queue, and delete from the dead-letter
        queue only what was sent. At worst a message is in both queues for a moment, and the
        database keys absorb the duplicate. Works on SQS-compatible servers without
        StartMessageMoveTask."""
        attrs = self._call("get_queue_attributes", AttributeNames=["RedrivePolicy"]).get("Attributes", {})
        dlq = self._dead_letter_url(attrs.get("RedrivePolicy"))
        result = Redriven()
        failed_ids: set[str] = set()
        empty_polls = 0
        while limit is None or result.moved < limit:
            want = MAX_BATCH_ENTRIES if limit is None else max(1, min(MAX_BATCH_ENTRIES, limit - result.moved))
            got = self._call(
                "receive_message",
                dlq,
                MaxNumberOfMessages=want,
                WaitTimeSeconds=1,
                VisibilityTimeout=DLQ_VISIBILITY_SECONDS,
            )
            messages = [m for m in got.get("Messages", []) if m["MessageId"] not in failed_ids]
            if not messages:
                # An empty short answer can miss messages on other SQS servers: ask twice.
                empty_polls += 1
                if empty_polls >= 2:
                    break
                continue
            empty_polls = 0
            sent = self.send_all([m["Body"] for m in messages])
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
            self._forget_dead(dlq, done)
            result.moved += len(done)
            result.failed += len(bad)
            if on_moved is not None:
                on_moved(len(messages))
        return result

    def _forget_dead(self, dlq: str, sent: list[dict[str, Any]]) -> None:
        """Delete dead letters that are back on the queue; a failure only leaves a harmless duplicate."""
        if not sent:
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(sent)]
        try:
            resp = self._call("delete_message_batch", dlq, Entries=entries)
        except QueueUnavailable as exc:
            log.warning("sent %d dead letters back but could not delete them (harmless): %s", len(sent), exc)
            return
        for miss in resp.get("Failed", []):
            log.warning(
                "sent dead letter %s back but could not delete it from the dead-letter queue "
                "(the duplicate is harmless): %s",
                sent[int(miss["Id"])]["MessageId"],
                miss.get("Message", miss.get("Code")),
            )

    def close(self) -> None:
        self.client.close()
