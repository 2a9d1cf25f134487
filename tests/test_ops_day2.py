"""Day-2 commands: backup, redrive and reprocess-rejects, against real files and moto's SQS."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import worker.rows as rows
from chalicelib.codec import CodecError, Decoded
from chalicelib.queues.local import LocalQueue
from chalicelib.queues.sqs import SqsQueue
from chalicelib.settings import Settings
from commands.backup import backup
from commands.cli import main
from db.store import Store
from tests.kit import drain, send, sqs_depth
from tests.ops_kit import bodies, count, domain
from worker.rows import Batch

# -- backup ------------------------------------------------------------------------------------


def _envelope_batch(n: int, size: int) -> Batch:
    """One message's rows: `size` new events and the envelope that counts them."""
    batch = Batch()
    events = [{"action": "click", "tune_event_id": f"w{n}-{i}", "datetime": 1790000000 + i} for i in range(size)]
    body = base64.b64encode(gzip.compress(json.dumps({"events": events}).encode())).decode()
    batch.add_message(f"writer-{n}", body, 1)
    return batch


def test_backup_is_consistent_while_a_worker_writes(tmp_path: Path) -> None:
    source, dest = tmp_path / "live.db", tmp_path / "backups" / "copy.db"
    store = Store.open(source)
    for n in range(40):
        store.write(_envelope_batch(n, 50))
    before = domain(source)
    worker = Store.open(source)  # another connection, as a worker process would have
    written: list[int] = []

    def commit_between_steps(remaining: int, total: int) -> None:
        if remaining:
            worker.write(_envelope_batch(1000 + len(written), 20))
            written.append(remaining)

    # One page per step, and a commit by another connection after each: without the held
    # snapshot the copy would restart after every step.
    result = backup(source, dest, step_pages=1, show_progress=False, on_step=commit_between_steps)
    worker.close()

    assert len(written) > 20 and result.pages > 20 and dest.stat().st_size == result.bytes
    copy = sqlite3.connect(dest)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copy.close()
    assert domain(dest) == before  # exactly the database as it was when the backup began
    assert count(source, "events") == 2000 + 20 * len(written)  # while the workers went on
    store.close()
    assert not list(dest.parent.glob("*.partial*"))


def test_backup_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, dest = tmp_path / "firehose.db", tmp_path / "copy.db"
    queue = LocalQueue(tmp_path / "q.db")
    send(queue, bodies(seed=1, events=200))
    drain(queue, source)
    queue.close()

    assert main(["backup", "--db", str(source), str(dest)]) == 0
    assert "backed up" in capsys.readouterr().out
    assert domain(dest) == domain(source)
    assert main(["backup", "--db", str(source), str(dest)]) == 3
    assert "--force" in capsys.readouterr().err
    assert main(["backup", "--db", str(source), str(dest), "--force"]) == 0
    assert main(["backup", "--db", str(tmp_path / "missing.db"), str(tmp_path / "x.db")]) == 3
    assert "no database" in capsys.readouterr().err


# -- redrive -----------------------------------------------------------------------------------


def test_redrive_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queue_path = tmp_path / "queue.db"
    queue = LocalQueue(queue_path)
    messages = bodies(seed=2, events=100)
    send(queue, messages)
    for _ in range(queue.max_receives + 1):  # a worker that keeps failing: all go dead
        queue.receive(10, 0, visibility_timeout=0)
    assert queue.depth().dead == len(messages) and queue.depth().visible == 0

    assert main(["redrive", "--queue-url", f"local:{queue_path}"]) == 0
    assert f"moved {len(messages)} message(s)" in capsys.readouterr().out
    depth = queue.depth()
    assert (depth.visible, depth.dead) == (len(messages), 0)
    drain(queue, tmp_path / "db.sqlite")  # a fresh receive count: the worker takes them
    queue.close()
    assert count(tmp_path / "db.sqlite", "envelopes") == len(messages)


def test_redrive_sqs(tmp_path: Path, sqs_settings: Settings, sqs_client: Any, cli_sqs_queue: tuple[str, str]) -> None:
    url, dlq = cli_sqs_queue
    messages = bodies(seed=3, events=400, per_message_bytes=3000)
    for body in messages:
        sqs_client.send_message(QueueUrl=dlq, MessageBody=body)
    assert len(messages) > 10  # more than one receive's worth

    assert main(["redrive", "--queue-url", url]) == 0
    assert sqs_depth(sqs_client, dlq) == (0, 0)
    assert sqs_depth(sqs_client, url) == (len(messages), 0)

    queue = SqsQueue.from_settings(sqs_settings)
    drain(queue, tmp_path / "db.sqlite")
    queue.close()
    # Every message arrived once, with its content intact.
    reference = tmp_path / "reference.db"
    local = LocalQueue(tmp_path / "q.db")
    send(local, messages)
    drain(local, reference)
    local.close()
    assert domain(tmp_path / "db.sqlite") == domain(reference)


def test_redrive_sqs_keeps_what_it_could_not_send(
    sqs_client: Any, cli_sqs_queue: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, dlq = cli_sqs_queue
    sqs_client.set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1024"})
    sqs_client.send_message(QueueUrl=dlq, MessageBody="x" * 2000)  # too big for the main queue now
    sqs_client.send_message(QueueUrl=dlq, MessageBody="small")

    assert main(["redrive", "--queue-url", url]) == 1
    assert "1 failed" in capsys.readouterr().out
    assert sum(sqs_depth(sqs_client, dlq)) == 1  # still in the dead-letter queue, not lost
    assert sqs_depth(sqs_client, url) == (1, 0)


def test_redrive_without_dead_letter_queue(
    sqs_client: Any, moto_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_server)
    url = sqs_client.create_queue(QueueName="no-dlq-here")["QueueUrl"]
    assert main(["redrive", "--queue-url", url]) == 1
    assert "no RedrivePolicy" in capsys.readouterr().err


# -- reprocess-rejects -------------------------------------------------------------------------

OLD_FORMAT = "legacy-v0"


def _old_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder with two 'bugs': it cannot read one envelope format, nor conversions."""
    real_decode, real_problem = rows.read_body, rows.event_problem

    def decode(body: str | bytes, *args: Any) -> Any:
        decoded = real_decode(body, *args)  # the test's messages are small: a Decoded, never a stream
        if isinstance(decoded, Decoded) and decoded.control.get("format") == OLD_FORMAT:
            raise CodecError(f"unknown envelope format {OLD_FORMAT}")
        return decoded

    def problem(event: Any) -> str | None:
        if isinstance(event, dict) and event.get("action") == "conversion" and "adjust_action" not in event:
            return "conversions are not supported yet"
        return real_problem(event)

    monkeypatch.setattr(rows, "read_body", decode)
    monkeypatch.setattr(rows, "event_problem", problem)


def test_reprocess_rejects_after_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.generate import Generator
    from chalicelib.codec import pack_events

    messages = bodies(seed=4, events=300)
    messages += [p.body for p in pack_events(Generator(99).events(40), 100_000, {"format": OLD_FORMAT})]
    db, reference = tmp_path / "db.sqlite", tmp_path / "reference.db"
    for path, fixed in ((reference, True), (db, False)):
        queue = LocalQueue(tmp_path / f"{path.stem}-queue.db")
        send(queue, messages)
        with monkeypatch.context() as m:
            if not fixed:
                _old_decoder(m)
            drain(queue, path)
        queue.close()
    assert count(db, "rejects") > count(reference, "rejects") + 5

    assert main(["reprocess-rejects", "--db", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "still rejected 3" in out
    assert count(db, "rejects") > count(reference, "rejects") + 5

    assert main(["reprocess-rejects", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "still rejected 3" in out and "new events" in out
    # Exactly what the fixed decoder would have stored in the first place, and the three
    # inputs that are really bad are still there.
    assert domain(db) == domain(reference)
    assert count(db, "rejects") == 3

    assert main(["reprocess-rejects", "--db", str(db)]) == 0
    assert "retried 3, succeeded 0, still rejected 3" in capsys.readouterr().out
    assert domain(db) == domain(reference)
