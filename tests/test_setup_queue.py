"""`read_queue.py setup NAME` against moto over HTTP: queue, DLQ, redrive and policy; idempotent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from commands.cli import main
from commands.setup_queue import TUNE_SENDER_ARN, Options, setup_queue


@pytest.fixture()
def env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # As an operator would run it: settings from the environment, SQS endpoint overridden.
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_server)
    monkeypatch.delenv("AWS_REGION", raising=False)


def attributes(sqs_client: Any, name: str) -> dict[str, str]:
    url = sqs_client.get_queue_url(QueueName=name)["QueueUrl"]
    return sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_setup_creates_queue_dlq_redrive_and_send_only_policy(
    env: None, sqs_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["setup", "firehose-a", "--region", "us-east-1"]) == 0
    out = capsys.readouterr().out
    queue, dlq = attributes(sqs_client, "firehose-a"), attributes(sqs_client, "firehose-a-dlq")

    assert json.loads(queue["RedrivePolicy"]) == {"deadLetterTargetArn": dlq["QueueArn"], "maxReceiveCount": 5}
    assert queue["ReceiveMessageWaitTimeSeconds"] == "20"
    assert queue["VisibilityTimeout"] == "60"
    assert queue["MessageRetentionPeriod"] == dlq["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    [statement] = json.loads(queue["Policy"])["Statement"]
    assert statement == {
        "Sid": "TuneFirehoseSendOnly",
        "Effect": "Allow",
        "Principal": {"AWS": TUNE_SENDER_ARN},
        "Action": "sqs:SendMessage",
        "Resource": queue["QueueArn"],
    }
    url = sqs_client.get_queue_url(QueueName="firehose-a")["QueueUrl"]
    assert f"\nQUEUE_URL={url}\n" in out
    assert queue["QueueArn"] in out


def test_second_run_changes_nothing(env: None, sqs_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["setup", "firehose-b", "--region", "us-east-1"]) == 0
    first_out = capsys.readouterr().out
    before = {n: attributes(sqs_client, n) for n in ("firehose-b", "firehose-b-dlq")}
    queues_before = sorted(sqs_client.list_queues(QueueNamePrefix="firehose-b")["QueueUrls"])

    assert main(["setup", "firehose-b", "--region", "us-east-1"]) == 0
    second_out = capsys.readouterr().out
    assert "nothing changed" in second_out
    assert "created queue" not in second_out and ": set " not in second_out
    assert "created queue firehose-b" in first_out
    # Byte for byte, including LastModifiedTimestamp: no attribute was written again.
    assert {n: attributes(sqs_client, n) for n in ("firehose-b", "firehose-b-dlq")} == before
    assert sorted(sqs_client.list_queues(QueueNamePrefix="firehose-b")["QueueUrls"]) == queues_before
    assert first_out.splitlines()[-1] == second_out.splitlines()[-1]


def test_setup_repairs_a_queue_made_by_hand(env: None, sqs_client: Any, moto_server: str) -> None:
    url = sqs_client.create_queue(QueueName="firehose-c", Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    arn = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    too_broad = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": TUNE_SENDER_ARN}, "Action": "sqs:*", "Resource": arn}],
    }
    sqs_client.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(too_broad)})

    result = setup_queue(sqs_client, "firehose-c", Options(max_receive_count=7))

    queue = attributes(sqs_client, "firehose-c")
    assert result.queue_url == url
    assert queue["VisibilityTimeout"] == "60"
    assert json.loads(queue["RedrivePolicy"])["maxReceiveCount"] == 7
    assert [s["Action"] for s in json.loads(queue["Policy"])["Statement"]] == ["sqs:SendMessage"]
    assert "firehose-c: set Policy" in result.changes
    assert "created queue firehose-c-dlq" in result.changes
    assert setup_queue(sqs_client, "firehose-c", Options(max_receive_count=7)).changes == []


def test_setup_worker_sees_the_dead_letter_queue(env: None, sqs_client: Any, moto_server: str) -> None:
    from chalicelib.queues.sqs import SqsQueue
    from chalicelib.settings import load_settings

    result = setup_queue(sqs_client, "firehose-d")
    settings = load_settings(
        {"QUEUE_URL": result.queue_url, "AWS_ENDPOINT_URL_SQS": moto_server, "AWS_REGION": "us-east-1"},
        dotenv_path=None,
    )
    queue = SqsQueue.from_settings(settings)
    try:
        assert queue.depth().dead == 0
    finally:
        queue.close()


def test_setup_without_a_region_says_so(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert main(["setup", "firehose-e"]) == 2
    assert "--region" in capsys.readouterr().err


def test_second_run_changes_nothing_when_sqs_reformats_what_it_stored(env: None, sqs_client: Any) -> None:
    # Real SQS echoes policies back re-serialised (compact JSON, maxReceiveCount as a number);
    # moto echoes them verbatim, so do what SQS does on the way back.
    def reformat(parsed: dict[str, Any], **_: Any) -> None:
        for name in ("Policy", "RedrivePolicy"):
            if name in parsed.get("Attributes", {}):
                doc = json.loads(parsed["Attributes"][name])
                if "maxReceiveCount" in doc:
                    doc["maxReceiveCount"] = int(doc["maxReceiveCount"])
                parsed["Attributes"][name] = json.dumps(doc, separators=(",", ":"), sort_keys=True)

    sqs_client.meta.events.register("after-call.sqs.GetQueueAttributes", reformat)
    setup_queue(sqs_client, "firehose-f")
    assert setup_queue(sqs_client, "firehose-f").changes == []
