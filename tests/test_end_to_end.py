"""Real processes: `chalice local` over HTTP, the worker, the local queue, and the SQLite file."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from pathlib import Path

from scripts.local_stack import ROOT, local_stack


def wait_for(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


def count(db: Path, sql: str) -> int:
    if not db.exists():
        return -1
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return -1
    finally:
        conn.close()


def test_post_sample_data_over_http_lands_in_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "firehose.db"
    env = {"QUEUE_URL": f"local:{tmp_path / 'queue.db'}", "DB_PATH": str(db), "FIREHOSE_TOKEN": "e2e-token"}
    sample = (ROOT / "sample-data.json").read_bytes()
    events = json.loads(sample)["events"]
    is_update = [str(e.get("adjust_action", "")).strip().lower() in ("2", "update") for e in events]
    unique_events = {e["tune_event_id"] for e, update in zip(events, is_update, strict=True) if not update}
    unique_updates = {e["adjustment_sequence_id"] for e, update in zip(events, is_update, strict=True) if update}
    auth = {"Authorization": "Bearer e2e-token"}
    with local_stack(env, tmp_path / "logs") as stack:
        assert stack.post(sample, {})[0] == 401
        status, body = stack.post(sample, auth)
        assert (status, body) == (202, {"accepted": len(events), "messages": 1})
        # chalice local does not inflate Content-Encoding: gzip; the handler does.
        status, _ = stack.post(gzip.compress(sample), {**auth, "Content-Encoding": "gzip"})
        assert status == 202
        wait_for(lambda: count(db, "SELECT count(*) FROM envelopes") == 2)
        assert stack.stop_worker() == 0
    assert count(db, "SELECT count(*) FROM events") == len(unique_events)
    assert count(db, "SELECT count(*) FROM adjustments") == len(unique_updates) >= 4
    assert count(db, "SELECT count(*) FROM rejects") == 0
    log = (tmp_path / "logs" / "chalice-local.log").read_text()
    assert "e2e-token" not in log
