"""`python read_queue.py setup NAME`: create or update the SQS queue TUNE sends to, and its DLQ.

Idempotent: it reads what exists, changes only what differs from the wanted state, and says
what it changed. A second run changes nothing. The printed `QUEUE_URL=` line goes in `.env`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.queues.sqs import make_client
from chalicelib.settings import Settings, load_settings

TUNE_SENDER_ARN = "arn:aws:iam::875314598127:user/ho-firehose-prod"
DEFAULT_MAX_RECEIVE_COUNT = 5
DEFAULT_VISIBILITY_TIMEOUT = 60
LONG_POLL_SECONDS = 20
FOURTEEN_DAYS = 14 * 24 * 3600  # SQS's maximum retention: the most time to fix a stopped worker
EXIT_FAILED, EXIT_USAGE = 1, 2


@dataclass(frozen=True)
class Options:
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    retention_seconds: int = FOURTEEN_DAYS
    sender_arn: str = TUNE_SENDER_ARN


@dataclass
class SetupResult:
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    changes: list[str] = field(default_factory=list)


def send_only_policy(queue_arn: str, sender_arn: str) -> dict[str, Any]:
    """The queue policy: TUNE's sender may SendMessage to this queue, and nothing else."""
    return {
        "Version": "2012-10-17",
        "Id": f"{queue_arn}/tune-firehose",
        "Statement": [
            {
                "Sid": "TuneFirehoseSendOnly",
                "Effect": "Allow",
                "Principal": {"AWS": sender_arn},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
            }
        ],
    }


def _normal(name: str, value: str) -> Any:
    """Attribute values as SQS may echo them back (reformatted JSON, numbers as strings)."""
    if name in ("Policy", "RedrivePolicy", "RedriveAllowPolicy"):
        try:
            doc = json.loads(value)
        except ValueError:
            return value
        if name == "RedrivePolicy" and "maxReceiveCount" in doc:
            doc["maxReceiveCount"] = int(doc["maxReceiveCount"])
        return doc
    return value


def _ensure(client: Any, name: str, wanted: dict[str, str], changes: list[str]) -> tuple[str, str]:
    """Create queue `name` with `wanted` attributes, or bring an existing one to them."""
    try:
        url = client.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
        ):
            raise
        url = client.create_queue(QueueName=name, Attributes=wanted)["QueueUrl"]
        changes.append(f"created queue {name}")
    else:
        current = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        differ = {k: v for k, v in wanted.items() if _normal(k, current.get(k, "")) != _normal(k, v)}
        if differ:
            client.set_queue_attributes(QueueUrl=url, Attributes=differ)
            changes.extend(f"{name}: set {k}" for k in sorted(differ))
    arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def setup_queue(client: Any, name: str, options: Options = Options()) -> SetupResult:
    """Create or update queue `name` and its dead-letter queue `name-dlq`."""
    changes: list[str] = []
    base = {"MessageRetentionPeriod": str(options.retention_seconds), "SqsManagedSseEnabled": "true"}
    dlq_url, dlq_arn = _ensure(client, f"{name}-dlq", base, changes)
    # The ARN is known only once the queue exists, so the policy is a second step on creation.
    queue_url, queue_arn = _ensure(client, name, {}, changes)
    wanted = {
        **base,
        "VisibilityTimeout": str(options.visibility_timeout),
        "ReceiveMessageWaitTimeSeconds": str(LONG_POLL_SECONDS),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": options.max_receive_count}),
        "Policy": json.dumps(send_only_policy(queue_arn, options.sender_arn)),
    }
    _ensure(client, name, wanted, changes)
    return SetupResult(queue_url, queue_arn, dlq_url, dlq_arn, changes)


HELP = "create or update the SQS queue and its dead-letter queue (safe to run again)"
DESCRIPTION = (
    "Creates or updates SQS queue NAME and NAME-dlq for TUNE Firehose: redrive to the DLQ after "
    "--max-receive-count receives, 20 s long polling, 14-day retention, SQS-managed encryption, and a "
    "queue policy that lets only TUNE's sender SendMessage. Prints the QUEUE_URL line for .env."
)


def _region(region: str | None, settings: Settings) -> str | None:
    if region:
        return region
    if settings.aws_region:
        return settings.aws_region
    import boto3

    region_name: str | None = boto3.session.Session().region_name  # boto3 ships no types
    return region_name


def cmd_setup(
    name: str,
    region: str | None = None,
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT,
    retention_days: int = 14,
    sender_arn: str = TUNE_SENDER_ARN,
) -> int:
    """The `setup` command (options validated by the command line)."""
    settings = load_settings()
    region = _region(region, settings)
    if not region:
        print("read_queue.py setup: no region: pass --region or set AWS_REGION", file=sys.stderr)
        return EXIT_USAGE
    # Only the region matters here: QUEUE_URL in .env may name another queue.
    client = make_client(replace(settings, aws_region=region, queue_url=None))
    options = Options(
        max_receive_count=max_receive_count,
        visibility_timeout=visibility_timeout,
        retention_seconds=retention_days * 24 * 3600,
        sender_arn=sender_arn,
    )
    try:
        result = setup_queue(client, name, options)
    except (BotoCoreError, ClientError) as exc:
        print(f"read_queue.py setup: SQS refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    for change in result.changes:
        print(f"# {change}")
    if not result.changes:
        print(f"# {name} and {name}-dlq already set up; nothing changed")
    print(f"# queue ARN: {result.queue_arn} (for .chalice/policy-STAGE.json and the worker's IAM policy)")
    print(f"# dead-letter queue: {result.dlq_url}")
    print("# give TUNE this queue URL; put this line in .env and in .chalice/config.json:")
    print(f"QUEUE_URL={result.queue_url}")
    return 0
