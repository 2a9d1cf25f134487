"""Every command knows the store (issue 14): `status`, `reprocess-rejects`, `backup` and the lag
metric on PostgreSQL. Data lands through the real worker; the commands run through the command
line (`main`, or `read_queue.py` as a process), against the throwaway server of tests/pg.py."""

from __future__ import annotations

import calendar
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chalicelib.queues.local import LocalQueue
from commands.cli import main
from db.postgres import report as pg_report
from db.postgres.store import PostgresStore
from tests.conftest import free_port
from tests.faultkit import wait_for
from tests.kit import drain, send, tune_message
from tests.ops_kit import INGEST_COLUMNS, bodies, read_queue, worker_env
from tests.test_ops_day2 import OLD_FORMAT, _old_decoder
from worker.loop import Limits, Worker

SECRET = "pa55-W0rd-status"


def drain_pg(queue_path: Path, url: str) -> None:
    """The real worker (in this process, so a patched decoder applies) from a local queue into PostgreSQL."""
    queue, store = LocalQueue(queue_path), PostgresStore.open(url)
    try:
        assert Worker(queue, store, Limits(wait_seconds=0), out=None).run(until_empty=True) == 0
    finally:
        store.close()
        queue.close()


def queued(path: Path, messages: list[str]) -> Path:
    queue = LocalQueue(path)
    try:
        send(queue, messages)
    finally:
        queue.close()
    return path


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]  # test SQL, written here


def domain_pg(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What an analyst sees in PostgreSQL, without ingestion metadata (tests/ops_kit.domain's twin)."""

    def table(name: str, order: str) -> list[tuple[Any, ...]]:
        columns = [
            c
            for (c,) in query(
                url,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = %s AND table_schema = current_schema() ORDER BY ordinal_position",
                name,
            )
            if c not in INGEST_COLUMNS
        ]
        return query(url, f"SELECT {', '.join(columns)} FROM {name} ORDER BY {order}")

    return {
        "events": table("events", "tune_event_id, event_time_utc"),
        "adjustments": table("adjustments", "adjustment_sequence_id"),
        "rejects": query(url, "SELECT reject_key, event_index, reason, raw FROM rejects ORDER BY 1"),
        "envelopes": query(url, "SELECT control_json, event_count FROM envelopes ORDER BY 1, 2"),
        # Sorted here: ORDER BY leaves ties among a view's rows in any order.
        "daily_stats": sorted(query(url, "SELECT * FROM daily_stats"), key=repr),
        "events_reconciled": sorted(query(url, "SELECT * FROM events_reconciled"), key=repr),
    }


def status_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], float, float]:
    before = time.time()
    code = main(["status", *args, "--json"])
    after = time.time()
    return code, json.loads(capsys.readouterr().out), before, after


def with_password(url: str, user: str, password: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://{user}:{password}@", 1)


def iso_epoch(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


# -- status ------------------------------------------------------------------------------------


def mixed_input(now: float) -> list[str]:
    """The ops tests' stream (duplicates, adjustments, three bad inputs), plus a recent event (the
    newest) and two dated beyond the clock skew ahead (left out of the lag, and counted)."""
    future = [
        {"action": "click", "tune_event_id": "recent", "datetime": int(now - 100)},
        {"action": "click", "tune_event_id": "far-1", "datetime": int(now + 86_400)},
        {"action": "click", "tune_event_id": "far-2", "datetime": int(now + 10 * 86_400)},
    ]
    return [*bodies(seed=11, events=400), tune_message(future)]


def test_status_on_postgresql_reports_what_status_on_sqlite_reports_for_the_same_input(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = mixed_input(time.time())
    sqlite_path = tmp_path / "firehose.db"
    sqlite_queue = LocalQueue(queued(tmp_path / "q1.db", messages))
    drain(sqlite_queue, sqlite_path)
    sqlite_queue.close()
    drain_pg(queued(tmp_path / "q2.db", messages), pg_url)
    empty = f"local:{queued(tmp_path / 'empty.db', [])}"

    code, lite, _, _ = status_json(capsys, "--db", str(sqlite_path), "--queue-url", empty, "--rejects", "50")
    assert code == 0, lite
    code, pg, before, after = status_json(capsys, "--db", pg_url, "--queue-url", empty, "--rejects", "50")
    assert code == 0, pg
    lite_db, pg_db = lite["database"], pg["database"]
    assert pg_db["path"] == pg_url  # no password in it to hide
    assert pg_db["schema_version"] == query(pg_url, "SELECT max(version) FROM firehose_migrations")[0][0]
    assert pg_db["rows"] == lite_db["rows"] and sum(pg_db["rows"].values()) > 400
    assert pg_db["future_events"] == lite_db["future_events"] == 2
    assert pg_db["newest_event_time"] == lite_db["newest_event_time"]
    newest = iso_epoch(pg_db["newest_event_time"])
    assert round(before - newest) <= pg_db["lag_seconds"] <= round(after - newest)
    assert pg_db["last_ingested"] is not None
    # Ingestion times and message ids are the host's own; what was rejected, and why, is the input's.
    assert len(pg_db["last_rejects"]) == len(lite_db["last_rejects"]) == 3

    def reasons(rejects: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((r["event_index"] is None, r["event_index"] or 0, r["reason"]) for r in rejects)

    assert reasons(pg_db["last_rejects"]) == reasons(lite_db["last_rejects"])
    assert set(pg_db) == set(lite_db)

    # The text report: the same rows line, the future events line, and the rejects.
    assert main(["status", "--db", str(sqlite_path), "--queue-url", empty]) == 0
    lite_text = capsys.readouterr().out.splitlines()
    assert main(["status", "--db", pg_url, "--queue-url", empty]) == 0
    pg_text = capsys.readouterr().out.splitlines()
    assert pg_text[2].startswith(f"database  {pg_url} (schema v")
    assert pg_text[3] == lite_text[3] and pg_text[3].startswith("  events ")
    assert "  2 events dated more than 5 min ahead (left out of the lag)" in pg_text


def test_status_on_postgresql_reads_one_read_only_snapshot_and_creates_nothing(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = f"local:{queued(tmp_path / 'empty.db', [])}"
    code, report, _, _ = status_json(capsys, "--queue-url", empty, "--db", pg_url)
    assert code == 1 and "no tune-firehose schema" in report["database"]["error"]
    assert query(pg_url, "SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace") == [(0,)]

    drain_pg(queued(tmp_path / "q.db", bodies(seed=12, events=50)), pg_url)
    seen: list[tuple[Any, ...]] = []
    real = pg_report._numbers

    def spy(conn: Any, reject_limit: int, now: float) -> Any:
        seen.append(
            conn.execute(
                "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), "
                "pg_current_xact_id_if_assigned()"
            ).fetchone()
        )
        return real(conn, reject_limit, now)

    monkeypatch.setattr(pg_report, "_numbers", spy)
    monkeypatch.setenv("DATABASE_URL", pg_url)  # the environment's choice, as an operator sets it
    code, report, _, _ = status_json(capsys, "--queue-url", empty)
    assert code == 0 and report["database"]["rows"]["events"] > 0
    assert seen == [("repeatable read", "on", None)]  # one snapshot, read-only, nothing written


def test_status_never_shows_the_password_and_an_unreachable_or_refusing_server_is_exit_1(
    tmp_path: Path, pg_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = pg_cluster.create_schema()
    drain_pg(queued(tmp_path / "q.db", bodies(seed=13, events=30)), url)
    user = f"status_{free_port()}"
    pg_cluster.require_password(user, SECRET)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {user} SUPERUSER")  # a made-up name of letters, digits and _
    empty = f"local:{queued(tmp_path / 'empty.db', [])}"
    right = with_password(url, user, SECRET)
    shown = with_password(url, user, "***")

    code, report, _, _ = status_json(capsys, "--db", right, "--queue-url", empty)
    assert code == 0 and report["database"]["path"] == shown and report["database"]["rows"]["events"] > 0
    assert main(["status", "--db", right, "--queue-url", empty]) == 0
    out = capsys.readouterr()
    assert f"database  {shown}" in out.out and SECRET not in out.out + out.err

    nowhere = f"postgresql://{user}:{SECRET}@127.0.0.1:{free_port()}/firehose"
    refused = with_password(url, user, SECRET + "-wrong")
    for bad in (nowhere, refused):
        for args in (["--json"], []):
            done = read_queue(
                "status", "--db", bad, "--queue-url", empty, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            out_text, err_text = done.communicate(timeout=60)
            assert done.returncode == 1, out_text + err_text
            assert SECRET not in out_text + err_text and "Traceback" not in err_text
            assert f"{user}:***@" in out_text
    done = read_queue("status", "--db", nowhere, "--queue-url", empty, "--json", stdout=subprocess.PIPE)
    report = json.loads(done.communicate(timeout=60)[0])
    assert report["database"]["error"].startswith("cannot connect: ") and "refused" in report["database"]["error"]
    done = read_queue("status", "--db", refused, "--queue-url", empty, "--json", stdout=subprocess.PIPE)
    assert "password authentication failed" in json.loads(done.communicate(timeout=60)[0])["database"]["error"]

    # reprocess-rejects writes, so it fails as the worker does: a refused URL is a bad setting
    # (exit 2, naming it), a server that does not answer cannot be used (exit 3); no password shown.
    for bad, code, said in ((refused, 2, "DATABASE_URL"), (nowhere, 3, "cannot reach PostgreSQL")):
        assert main(["reprocess-rejects", "--db", bad]) == code
        out = capsys.readouterr()
        assert said in out.err and f"{user}:***@" in out.err and SECRET not in out.out + out.err


# -- reprocess-rejects ---------------------------------------------------------------------------


def test_reprocess_rejects_on_postgresql_stores_what_a_fix_decodes_and_a_second_run_changes_nothing(
    tmp_path: Path, pg_cluster: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.generate import Generator
    from chalicelib.codec import pack_events

    messages = bodies(seed=4, events=300)
    messages += [p.body for p in pack_events(Generator(99).events(40), 100_000, {"format": OLD_FORMAT})]
    # A message the fix decodes, holding an event that is bad whatever the decoder: its reject is
    # new in this run, decided now, so it is not retried again in the same run (as on SQLite).
    bad_inside = [{"action": "click", "tune_event_id": "fine"}, {"tune_event_id": "still bad", "n": 1}]
    messages.append(tune_message(bad_inside, format=OLD_FORMAT))
    monkeypatch.setattr("commands.reprocess.CHUNK", 1)  # a reject added mid-run sorts after the cursor
    url, reference = pg_cluster.create_schema(), pg_cluster.create_schema()
    drain_pg(queued(tmp_path / "reference.db", messages), reference)
    sqlite_path = tmp_path / "old.db"
    with monkeypatch.context() as m:  # the old decoder, with its two bugs, lands both stores
        _old_decoder(m)
        drain_pg(queued(tmp_path / "old-pg.db", messages), url)
        sqlite_queue = LocalQueue(queued(tmp_path / "old-sqlite.db", messages))
        drain(sqlite_queue, sqlite_path)
        sqlite_queue.close()
    rejects = query(url, "SELECT count(*) FROM rejects")[0][0]
    assert rejects > query(reference, "SELECT count(*) FROM rejects")[0][0] + 5
    before = domain_pg(url)

    assert main(["reprocess-rejects", "--db", url, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert f"retried {rejects}, would succeed {rejects - 3}, still rejected 3" in dry
    assert domain_pg(url) == before  # a dry run writes nothing

    assert main(["reprocess-rejects", "--db", url]) == 0
    done = capsys.readouterr().out
    assert main(["reprocess-rejects", "--db", str(sqlite_path)]) == 0
    assert done == capsys.readouterr().out  # the same summary as on SQLite for the same input
    assert "still rejected 3" in done and "new events" in done
    # Exactly what the fixed decoder would have stored in the first place (envelopes fixed up
    # too), and the three inputs that are really bad are still there.
    assert domain_pg(url) == domain_pg(reference)

    monkeypatch.setenv("DATABASE_URL", url)  # the environment's choice, as an operator sets it
    assert main(["reprocess-rejects"]) == 0
    assert "retried 4, succeeded 0, still rejected 4" in capsys.readouterr().out
    assert domain_pg(url) == domain_pg(reference)


def test_reprocess_rejects_on_postgresql_runs_while_a_worker_writes(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each chunk is one transaction through the store, beside a worker process committing
    batches into the same tables: neither waits for the other for ever, nothing is lost."""
    monkeypatch.setattr("commands.reprocess.CHUNK", 7)  # many transactions, interleaved with the worker's
    conversions = [
        {"action": "conversion", "tune_event_id": f"conv-{i}", "datetime": 1_790_000_000 + i, "payout": 1}
        for i in range(120)
    ]
    with monkeypatch.context() as m:
        _old_decoder(m)
        drain_pg(queued(tmp_path / "old.db", [tune_message(conversions[i : i + 3]) for i in range(0, 120, 3)]), pg_url)
    assert query(pg_url, "SELECT count(*) FROM rejects") == [(120,)]
    # The worker re-sends the same conversions (now decoded) and more, while reprocess runs.
    later = [tune_message(conversions[i : i + 5]) for i in range(0, 120, 5)]
    later += [tune_message([{"action": "click", "tune_event_id": f"c-{i}-{j}"} for j in range(20)]) for i in range(60)]
    queue = queued(tmp_path / "new.db", later)
    worker = read_queue(
        "--until-empty", "--quiet", "--wait-seconds", "0", "--db", pg_url, "--queue-url", f"local:{queue}",
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert main(["reprocess-rejects", "--db", pg_url]) == 0
    finally:
        _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert "retried 120, succeeded 120, still rejected 0" in capsys.readouterr().out
    assert query(pg_url, "SELECT count(*), count(DISTINCT tune_event_id) FROM events") == [(1320, 1320)]
    assert query(pg_url, "SELECT count(*) FROM rejects") == [(0,)]


# -- backup --------------------------------------------------------------------------------------


def test_backup_with_postgresql_selected_says_to_use_pg_dump_and_exits_2(tmp_path: Path, pg_url: str) -> None:
    secret_url = "postgresql://fh:" + SECRET + "@db.internal:5432/firehose?sslmode=require"
    dest = tmp_path / "backups" / "copy.db"
    sqlite_path = tmp_path / "firehose.db"
    send_to = queued(tmp_path / "q.db", bodies(seed=14, events=20))
    sqlite_queue = LocalQueue(send_to)
    drain(sqlite_queue, sqlite_path)
    sqlite_queue.close()
    for args, env in (
        (["--db", secret_url], {}),
        ([], {"DATABASE_URL": secret_url, "DB_PATH": str(sqlite_path)}),
    ):
        done = read_queue(
            "backup", str(dest), *args, env=worker_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = done.communicate(timeout=60)
        assert done.returncode == 2, out + err
        assert (
            "pg_dump --format=custom" in err
            and "'postgresql://fh:***@db.internal:5432/firehose?sslmode=require'" in err
        )
        assert SECRET not in out + err and "Traceback" not in err
        assert not dest.parent.exists()  # nothing written
    # A path given on the command line is SQLite's, whatever DATABASE_URL says.
    done = read_queue(
        "backup", str(dest), "--db", str(sqlite_path), env=worker_env(DATABASE_URL=pg_url), stdout=subprocess.PIPE
    )
    assert done.wait(60) == 0 and dest.exists()


# -- the lag metric ------------------------------------------------------------------------------


def test_the_lag_gauge_is_seeded_from_postgresql_at_start(tmp_path: Path, pg_url: str) -> None:
    now = time.time()
    stored = [
        {"action": "click", "tune_event_id": "old", "datetime": 1_790_000_000},
        {"action": "click", "tune_event_id": "newest", "datetime": int(now - 3600)},
        {"action": "click", "tune_event_id": "mis-clocked", "datetime": int(now + 86_400)},  # left out
    ]
    drain_pg(queued(tmp_path / "first.db", [tune_message(stored)]), pg_url)
    empty = queued(tmp_path / "empty.db", [])
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        proc = read_queue(
            "--wait-seconds", "1", "--quiet", "--metrics-port", str(port), "--queue-url", f"local:{empty}",
            env=worker_env(DATABASE_URL=pg_url), stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        wait_for(lambda: "worker started" in log.read_text() or proc.poll() is not None, 60, "the worker started")
        assert proc.poll() is None, log.read_text()
        samples = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
    assert samples["tune_firehose_messages_total"] == 0  # nothing written yet: the value is the database's
    assert samples["tune_firehose_newest_event_timestamp_seconds"] == int(now - 3600)
    assert samples["tune_firehose_ingest_lag_seconds"] >= 3600


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
