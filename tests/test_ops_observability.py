"""Watching the pipeline: the progress line, JSON logs, Prometheus metrics and `status`."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from chalicelib.queues.local import LocalQueue
from chalicelib.queues.sqs import SqsQueue
from chalicelib.settings import Settings
from commands.cli import main
from db.store import Store, WriteStats
from tests.conftest import free_port
from tests.kit import drain, send, tune_message
from tests.ops_kit import bodies, read_queue
from worker.decoders import decode_batch
from worker.loop import Limits, Worker
from worker.metrics import Metrics
from worker.rows import Batch

DEADLINE_SECONDS = 60


# -- progress line -----------------------------------------------------------------------------


def test_progress_line_shows_local_depth_and_oldest_age(tmp_path: Path, local_queue: LocalQueue) -> None:
    messages = bodies(seed=1, events=100)
    send(local_queue, messages)
    out = io.StringIO()
    store = Store.open(tmp_path / "db.sqlite")
    worker = Worker(local_queue, store, Limits(wait_seconds=0), out=out)
    worker._progress(final=True)  # before anything is processed: the messages are waiting
    assert worker.run(until_empty=True) == 0
    store.close()
    before, *_, done = out.getvalue().splitlines()
    assert f"queue {len(messages)} visible, 0 in flight, oldest " in before
    assert done.startswith("done: ") and f"messages {len(messages)} " in done and "rejects 3" in done
    assert "queue 0 visible, 0 in flight" in done and "oldest" not in done


def test_progress_line_shows_sqs_depth(tmp_path: Path, sqs_queue: SqsQueue) -> None:
    messages = bodies(seed=2, events=60)
    send(sqs_queue, messages)
    out = io.StringIO()
    store = Store.open(tmp_path / "db.sqlite")
    worker = Worker(sqs_queue, store, Limits(wait_seconds=0), out=out)
    worker._progress(final=True)
    assert worker.run(until_empty=True) == 0
    store.close()
    before, *_, done = out.getvalue().splitlines()
    assert f"queue {len(messages)} visible, 0 in flight" in before
    assert "queue 0 visible, 0 in flight" in done


# -- structured logs ---------------------------------------------------------------------------


def test_json_logs_carry_ids_and_counts_never_bodies(tmp_path: Path) -> None:
    queue_path = tmp_path / "queue.db"
    queue = LocalQueue(queue_path)
    messages = bodies(seed=3, events=200)
    send(queue, messages)
    queue.close()
    args = ["--until-empty", "--wait-seconds", "0", "--log-format", "json"]
    args += ["--db", str(tmp_path / "db.sqlite"), "--queue-url", f"local:{queue_path}"]
    proc = read_queue(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=DEADLINE_SECONDS)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    batches = [r for r in records if r["msg"] == "batch committed"]
    assert batches and all(r["level"] == "info" and "ts" in r for r in records)
    assert sum(r["messages"] for r in batches) == len(messages)
    assert all(len(r["message_ids"]) == r["messages"] for r in batches)
    assert sum(r["rejects"] for r in batches) == 3
    done = records[-1]
    assert done["msg"] == "done" and done["queue_visible"] == 0 and done["events"] > 0
    for body in messages:
        assert body[:40] not in err
    assert "tune_event_id" not in err and "203.0." not in err  # no event content, no IPs


# -- metrics -----------------------------------------------------------------------------------


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _wait_scrape(port: int, proc: subprocess.Popen[str], ready: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        assert proc.poll() is None, "the worker exited"
        try:
            samples = _scrape(port)
            if ready(samples):
                return samples
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError("metrics never showed the expected values")
        time.sleep(0.1)


def test_newest_event_time_skips_events_without_one() -> None:
    """An event without a time must not hide the others' times, whether its empty event_time is None
    or, in rows built for binding (the worker's), worker.rows.NULL, a NaN."""
    body = tune_message([{"action": "click"}, {"action": "click", "datetime": "2026-11-28 04:00:00"}])
    plain = Batch()
    plain.add_message("m1", body, 1)
    plain.events = [tuple(None if v != v else v for v in row) for row in plain.events]  # empty columns as None
    bound = decode_batch([("m1", body, 1)], 1 << 20, 1_800_000_000)
    assert any(v != v for row in bound.events for v in row) and not any(v != v for row in plain.events for v in row)
    for batch in (plain, bound):
        registry = CollectorRegistry()
        Metrics(registry).batch_written([], batch, WriteStats(), 0.01)
        assert registry.get_sample_value("tune_firehose_newest_event_timestamp_seconds") == 1_795_838_400


def test_metrics_endpoint_counters_move(tmp_path: Path) -> None:
    queue_path = tmp_path / "queue.db"
    LocalQueue(queue_path).close()
    port = free_port()
    args = ["--wait-seconds", "1", "--quiet", "--metrics-port", str(port)]
    args += ["--db", str(tmp_path / "db.sqlite"), "--queue-url", f"local:{queue_path}"]
    proc = read_queue(*args, stderr=subprocess.PIPE)
    try:
        before = _wait_scrape(port, proc, lambda s: 'tune_firehose_queue_messages{state="visible"}' in s)
        assert before["tune_firehose_messages_total"] == 0
        assert before["tune_firehose_events_total"] == 0

        queue = LocalQueue(queue_path)
        messages = bodies(seed=4, events=300)
        send(queue, messages)
        queue.close()
        after = _wait_scrape(port, proc, lambda s: s["tune_firehose_messages_total"] == len(messages))
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=DEADLINE_SECONDS)
    assert proc.returncode == 0, err
    assert after["tune_firehose_events_total"] > 250
    assert after["tune_firehose_rejects_total"] == 3
    assert after["tune_firehose_adjustments_total"] > 0
    assert after['tune_firehose_duplicates_total{kind="event"}'] > 0
    assert after["tune_firehose_batch_commit_seconds_count"] >= 1
    assert after["tune_firehose_batch_commit_seconds_sum"] > 0
    assert after["tune_firehose_newest_event_timestamp_seconds"] > 1_700_000_000
    lag = after["tune_firehose_ingest_lag_seconds"]
    assert lag == lag  # a number, not NaN: there is a newest event
    assert 'tune_firehose_queue_messages{state="in_flight"}' in after


# -- status ------------------------------------------------------------------------------------


def test_status_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queue_path, db = tmp_path / "queue.db", tmp_path / "db.sqlite"
    common = ["--db", str(db), "--queue-url", f"local:{queue_path}"]
    assert main(["status", *common]) == 1  # nothing exists yet, and it says so
    out = capsys.readouterr().out
    assert "no local queue file yet" in out and "no database file yet" in out
    assert not queue_path.exists()  # status only looks

    queue = LocalQueue(queue_path)
    send(queue, bodies(seed=5, events=100))
    drain(queue, db)
    send(queue, ["poison"])  # received until the queue dead-letters it
    for _ in range(queue.max_receives + 1):
        queue.receive(10, 0, visibility_timeout=0)
    send(queue, bodies(seed=6, events=10)[:1])
    queue.close()

    assert main(["status", *common]) == 0
    out = capsys.readouterr().out
    assert "visible 1 | in flight 0 | dead letters 1 | oldest message" in out
    assert "events 9" in out and "rejects 3" in out and "adjustments pending" in out
    assert "newest event 2026-09-21T" in out and "(lag " in out
    assert "message undecodable" in out and "has no 'action'" in out and "adjustment_sequence_id" in out

    assert main(["status", *common, "--json", "--rejects", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queue"]["dead"] == 1 and report["queue"]["visible"] == 1
    assert report["database"]["rows"]["rejects"] == 3 and len(report["database"]["last_rejects"]) == 1
    assert isinstance(report["database"]["lag_seconds"], int)
    assert "raw" not in report["database"]["last_rejects"][0]


def test_status_sqs(
    tmp_path: Path,
    sqs_settings: Settings,
    sqs_client: Any,
    cli_sqs_queue: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, dlq = cli_sqs_queue
    sqs_client.send_message(QueueUrl=dlq, MessageBody="dead one")
    sqs_client.send_message(QueueUrl=dlq, MessageBody="dead two")
    queue = SqsQueue.from_settings(sqs_settings)
    send(queue, bodies(seed=7, events=30))
    db = tmp_path / "db.sqlite"
    drain(queue, db)
    send(queue, ["waiting"])
    queue.receive(1, 0, visibility_timeout=60)
    send(queue, ["also waiting"])
    queue.close()

    assert main(["status", "--db", str(db), "--queue-url", url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queue"]["backend"] == "sqs"
    assert (report["queue"]["visible"], report["queue"]["in_flight"], report["queue"]["dead"]) == (1, 1, 2)
    assert report["database"]["rows"]["envelopes"] == 3

    assert main(["status", "--db", str(db), "--queue-url", url]) == 0
    assert "visible 1 | in flight 1 | dead letters 2" in capsys.readouterr().out


# -- endpoint ----------------------------------------------------------------------------------


def test_endpoint_logs_one_structured_line_per_request(
    local_queue: LocalQueue, caplog: pytest.LogCaptureFixture
) -> None:
    from chalicelib.ingest import accept
    from chalicelib.settings import load_settings

    settings = load_settings({"QUEUE_URL": f"local:{local_queue.path}", "FIREHOSE_TOKEN": "s3cret"}, dotenv_path=None)
    body = json.dumps({"events": [{"action": "click", "tune_event_id": "e1", "ip": "198.51.100.7"}]}).encode()
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
    caplog.set_level("INFO", logger="tune_firehose.endpoint")
    assert accept(auth, body, settings, local_queue).status == 202
    assert accept({**auth, "Authorization": "Bearer wrong"}, body, settings, local_queue).status == 401
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tune_firehose.endpoint"]
    assert [(r["status"], r["events"], r["messages"]) for r in records] == [(202, 1, 1), (401, 0, 0)]
    assert all(isinstance(r["ms"], float | int) for r in records)
    assert "s3cret" not in caplog.text and "198.51.100.7" not in caplog.text
