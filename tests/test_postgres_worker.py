"""The worker on PostgreSQL (issue 14): DATABASE_URL or `--db postgresql://...` selects the store;
an unreachable server is waited for until a stop; a refused URL is exit 2 naming the setting
without its password; a server that refuses writes is exit 3. Each runs `read_queue.py` as a real
process on a local queue file, as an operator would."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from chalicelib.queues.local import LocalQueue
from chalicelib.settings import load_settings
from commands.cli import settings_for
from db.postgres.store import PostgresStore
from db.stores import describe, open_store, uses_postgres
from tests.faultkit import free_port, wait_for
from tests.kit import send, tune_message
from tests.ops_kit import read_queue, worker_env

SEPT = 1_790_000_000  # 2026-09-21


def clicks(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {"action": "click", "tune_event_id": f"{prefix}-{i}", "datetime": SEPT + i, "offer_id": 1, "payout": 0.05}
        for i in range(n)
    ]


def queued(tmp_path: Path, *messages: list[dict[str, Any]]) -> str:
    queue = LocalQueue(tmp_path / "queue.db")
    try:
        send(queue, [tune_message(m) for m in messages])
    finally:
        queue.close()
    return f"local:{tmp_path / 'queue.db'}"


def count(url: str, table: str = "events") -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]  # a constant


def drain(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = read_queue("--until-empty", "--quiet", "--wait-seconds", "0", *args, env=env, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def test_database_url_selects_postgresql_and_nothing_is_written_to_db_path(tmp_path: Path, pg_url: str) -> None:
    queue = queued(tmp_path, clicks("a", 30), clicks("b", 20))
    sqlite_path = tmp_path / "never.db"
    done = drain("--queue-url", queue, env=worker_env(DATABASE_URL=pg_url, DB_PATH=str(sqlite_path)))
    assert done.returncode == 0, done.stderr
    assert count(pg_url) == 50 and count(pg_url, "envelopes") == 2
    assert not sqlite_path.exists()


def test_db_option_with_a_url_selects_postgresql_and_with_a_path_sqlite(tmp_path: Path, pg_url: str) -> None:
    queue = queued(tmp_path, clicks("c", 10))
    done = drain("--db", pg_url, "--queue-url", queue, env=worker_env())
    assert done.returncode == 0, done.stderr
    assert count(pg_url) == 10
    # A path given on the command line wins over a DATABASE_URL in the environment.
    (tmp_path / "second").mkdir()
    queue = queued(tmp_path / "second", clicks("d", 7))
    sqlite_path = tmp_path / "chosen.db"
    done = drain("--db", str(sqlite_path), "--queue-url", queue, env=worker_env(DATABASE_URL=pg_url))
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(sqlite_path) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (7,)
    assert count(pg_url) == 10


def test_the_choice_is_made_in_one_place_and_printed_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://fh:s3cret@db.example:5432/firehose?sslmode=require"
    chosen = settings_for(url)
    assert uses_postgres(chosen) and chosen.database_url == url
    assert describe(chosen) == "postgresql://fh:***@db.example:5432/firehose?sslmode=require"
    path = str(tmp_path / "f.db")
    assert not uses_postgres(settings_for(path)) and describe(settings_for(path)) == path
    sqlite = load_settings({"DB_PATH": path}, dotenv_path=None)
    store = open_store(sqlite)
    try:
        assert not isinstance(store, PostgresStore) and Path(path).exists()
    finally:
        store.close()


def test_a_wrong_password_or_database_exits_2_naming_the_setting_without_the_password(
    tmp_path: Path, pg_cluster: Any
) -> None:
    pg_cluster.require_password("firehose_cli", "right-secret")
    queue = queued(tmp_path, clicks("e", 3))
    wrong = f"postgresql://firehose_cli:wrong-secret@127.0.0.1:{pg_cluster.port}/postgres"
    for url in (wrong, pg_cluster.url("no_such_database")):
        done = drain("--queue-url", queue, env=worker_env(DATABASE_URL=url))
        assert done.returncode == 2, done.stderr
        assert "DATABASE_URL" in done.stderr and "Traceback" not in done.stderr
        assert "wrong-secret" not in done.stderr
    assert "firehose_cli:***@" in drain("--queue-url", queue, env=worker_env(DATABASE_URL=wrong)).stderr


def test_an_unreachable_server_is_waited_for_until_a_stop_then_a_clean_exit(tmp_path: Path) -> None:
    queue = queued(tmp_path, clicks("f", 3))
    nowhere = f"postgresql://fh:hidden@127.0.0.1:{free_port()}/firehose"
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = read_queue("--queue-url", queue, env=worker_env(DATABASE_URL=nowhere), stdout=out, stderr=out)
    try:
        # Waiting, not crashing: the second retry is logged while the process still runs.
        wait_for(lambda: log.read_text().count("is unreachable, retrying") >= 2, 60, "two retries logged")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "stopped while waiting for PostgreSQL" in output and "Traceback" not in output
    assert "hidden" not in output and "fh:***@" in output
    with sqlite3.connect(tmp_path / "queue.db") as db:  # nothing was received, so nothing is in flight
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)


def test_a_server_that_refuses_writes_stops_the_worker_with_exit_3_deleting_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    PostgresStore.open(pg_url).close()  # migrated, and this month's partitions made, while writable
    read_only = pg_url + "%20-cdefault_transaction_read_only%3Don"  # as a read-only replica would answer
    queue = queued(tmp_path, clicks("g", 5))
    done = drain("--queue-url", queue, env=worker_env(DATABASE_URL=read_only))
    assert done.returncode == 3, done.stderr
    assert "read-only" in done.stderr
    assert count(pg_url) == 0
    with sqlite3.connect(tmp_path / "queue.db") as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
