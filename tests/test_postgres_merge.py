"""`merge` into PostgreSQL (issue 14, "moving up from SQLite"): hosts' SQLite files, written by the
real worker, load into PostgreSQL as a PostgreSQL worker would have written the same events
(values, NULLs, exact money, times, partitions), once however often and in whatever split they are
merged, incrementally from the high-water marks, beside running workers, and with the worker's
exit codes and redaction when the server refuses."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import Generator
from chalicelib.queues.local import LocalQueue
from commands.cli import main
from commands.merge import merge
from db.batch import ADJUSTMENT_COLUMNS, EVENT_COLUMNS
from db.postgres.store import PostgresStore
from db.store import Store
from tests.faultkit import free_port, wait_for
from tests.kit import drain, one, send, tune_message
from tests.ops_kit import INGEST_COLUMNS, bodies, examples
from tests.test_store_contract import messages_of
from worker.decoders import decode_batch
from worker.loop import Limits, Worker

MAX_DECODED = 32 * 1024 * 1024
T = 1_790_000_000  # 2026-09-21


# -- what an analyst sees in PostgreSQL ---------------------------------------------------------


def pg_rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement).fetchall()  # type: ignore[arg-type]  # test SQL, written here


def _listed(columns: list[str]) -> str:
    return ", ".join(c for c in columns if c not in INGEST_COLUMNS)


# Compared in PostgreSQL's own types (timestamptz, numeric), without ingestion metadata (which
# host or worker stored a row first, and when). `part` is the partition each event landed in.
SNAPSHOT = {
    "events": f"SELECT tableoid::regclass::text AS part, {_listed(EVENT_COLUMNS)} FROM events",
    "adjustments": f"SELECT {_listed(ADJUSTMENT_COLUMNS)} FROM adjustments",
    "envelopes": "SELECT control_json, event_count FROM envelopes",
    "rejects": "SELECT reject_key, event_index, reason, raw FROM rejects",
    "events_reconciled": "SELECT * FROM events_reconciled",
    "daily_stats": "SELECT * FROM daily_stats",
    "daily_totals": "SELECT * FROM daily_totals",
    "totals": "SELECT * FROM totals",
    "adjustments_pending": "SELECT adjustment_sequence_id, tune_event_id, payout, revenue FROM adjustments_pending",
}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: sorted(pg_rows(url, statement), key=repr) for name, statement in SNAPSHOT.items()}


def new_rows_in(url: str) -> dict[str, int]:
    return {t: int(pg_rows(url, f"SELECT count(*) FROM {t}")[0][0]) for t in ("events", "adjustments", "rejects")}


# -- input --------------------------------------------------------------------------------------


def odd_events() -> list[dict[str, Any]]:
    """Events that test the types: no time (events_default), a year before the partitions'
    window, other months, money with fractions of a cent, an empty field, and U+0000 in a typed
    column (SQLite keeps it; PostgreSQL's text cannot, so the worker stores U+FFFD)."""
    return [
        {"action": "click", "tune_event_id": "no-time", "payout": "0.000001"},
        {"action": "click", "tune_event_id": "year-1990", "datetime": 650_000_000, "revenue": 1.1},
        {"action": "conversion", "tune_event_id": "march", "datetime": T - 200 * 86400, "payout": 123456.789012},
        {"action": "conversion", "tune_event_id": "next-month", "datetime": T + 20 * 86400, "currency": "EUR"},
        {"action": "click", "tune_event_id": "nul", "datetime": T, "aff_sub": "a\x00b", "aff_sub2": ""},
        {"action": "conversion", "tune_event_id": "big", "datetime": T, "sale_amount": "1000000000", "num": 7},
    ]


def host_bodies() -> list[str]:
    return [*bodies(seed=21, events=2500, per_message_bytes=2500), tune_message(odd_events())]


def worker_into_postgres(url: str, queue: LocalQueue) -> PostgresStore:
    """The real worker, draining `queue` into PostgreSQL; returns its (closed) store."""
    store = PostgresStore.open(url)
    try:
        assert Worker(queue, store, Limits(wait_seconds=0), out=None).run(until_empty=True) == 0
    finally:
        store.close()
    return store


def reference(pg_cluster: Any, messages: list[str], tmp_path: Path) -> str:
    """A PostgreSQL database a PostgreSQL worker filled from these message bodies."""
    url = str(pg_cluster.create_schema())
    queue = LocalQueue(tmp_path / "reference-queue.db")
    try:
        send(queue, messages)
        worker_into_postgres(url, queue)
    finally:
        queue.close()
    return url


def hosts_from(tmp_path: Path, shares: list[list[str]]) -> list[Path]:
    """One SQLite file per host, each written by the real worker from its share of the messages."""
    paths = []
    for i, share in enumerate(shares):
        queue = LocalQueue(tmp_path / f"queue{i}.db")
        try:
            send(queue, share)
            drain(queue, tmp_path / f"host{i}.db")
        finally:
            queue.close()
        paths.append(tmp_path / f"host{i}.db")
    return paths


def with_password(url: str, password: str) -> str:
    """The same URL with a password (the test server trusts 127.0.0.1, so any password works)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


# -- the same rows as a PostgreSQL worker ------------------------------------------------------


def test_merged_hosts_equal_a_postgres_worker_fed_the_same_events(
    tmp_path: Path, pg_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = host_bodies()
    # Three hosts; TUNE re-sent some envelopes, which reached a second host.
    shares = [messages[0::3], messages[1::3] + messages[0:4], messages[2::3] + messages[5:7]]
    hosts = hosts_from(tmp_path, shares)
    # The worker gets every delivery the hosts got, re-sends included (each is an envelope row).
    expected = snapshot(reference(pg_cluster, [m for share in shares for m in share], tmp_path))

    target = with_password(str(pg_cluster.create_schema()), "hunter2-secret")
    assert main(["merge", target, *map(str, hosts)]) == 0
    out = capsys.readouterr().out
    found = snapshot(target)
    for name in SNAPSHOT:
        assert found[name] == expected[name], name
    parts = {row[0] for row in found["events"]}
    assert {"events_default", "events_2026_09", "events_2026_10", "events_2026_03"} <= parts, parts
    assert ("nul", "a\ufffdb") in {(row[1], row[SNAPSHOT_AFF_SUB]) for row in found["events"]}
    # The summary: per source, then the total, the URL without its password.
    assert "hunter2-secret" not in out and "postgres:***@" in out
    assert out.count(" new (envelopes ") == 3
    assert f"merged 3 source(s) into {target.replace('hunter2-secret', '***')}" in out

    # Merged again: nothing is new, nothing changes.
    assert [r.new for r in merge(target, hosts)] == [0, 0, 0]
    assert snapshot(target) == found


SNAPSHOT_AFF_SUB = 1 + [c for c in EVENT_COLUMNS if c not in INGEST_COLUMNS].index("aff_sub")


# -- incremental --------------------------------------------------------------------------------


def _stamp(path: Path, when: int) -> None:
    """Every row written at `when`, and the events with keys below '8' 1000 s earlier: the
    write times of hours of traffic, fixed so the marks are known."""
    db = sqlite3.connect(path)
    try:
        for table, column in (("events", "ingested_at"), ("adjustments", "ingested_at")):
            db.execute(f"UPDATE {table} SET {column} = ?", (when,))
        db.execute("UPDATE envelopes SET received_at = ?", (when,))
        db.execute("UPDATE rejects SET rejected_at = ?", (when,))
        db.execute("UPDATE events SET ingested_at = ? WHERE tune_event_id < '8'", (when - 1000,))
        db.commit()
    finally:
        db.close()


def test_a_second_merge_reads_only_from_the_mark_minus_the_overlap(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (source,) = hosts_from(tmp_path, [bodies(seed=3, events=300)])
    _stamp(source, T)
    old_events = int(one(source, "SELECT count(*) FROM events WHERE ingested_at < ?", T))

    first = merge(pg_url, [source], overlap=0, show_progress=True)[0]
    assert first.read == first.new > 0 and 0 < old_events < first.tables["events"].read
    assert f"{first.read}/{first.read}" in capsys.readouterr().err  # the progress bar, counted in rows
    marks = dict(pg_rows(pg_url, "SELECT table_name, high_water FROM merge_sources"))
    assert marks == {"events": T, "adjustments": T, "envelopes": T, "rejects": T}

    # A row stamped before the mark is past what an incremental run reads...
    db = sqlite3.connect(source)
    db.execute(
        "INSERT INTO events (tune_event_id, key_source, action, raw_json, ingested_at) "
        "VALUES ('late-row', 'tune_event_id', 'click', '{}', ?)",
        (T - 3600,),
    )
    db.commit()
    db.close()
    again = merge(pg_url, [source], overlap=500)[0]
    assert again.new == 0
    # ...only the rows from the mark minus the overlap are read again (none of the old events)...
    assert again.tables["events"].read == first.tables["events"].read - old_events
    assert {t: r.read for t, r in again.tables.items() if t != "events"} == {
        t: r.read for t, r in first.tables.items() if t != "events"
    }
    # ...and the overlap exists for exactly that: a batch that committed late.
    late = merge(pg_url, [source], overlap=7200)[0]
    assert late.tables["events"].new == 1 and late.new == 1
    assert pg_rows(pg_url, "SELECT rows_copied FROM merge_sources WHERE table_name = 'events'") == [
        (first.tables["events"].new + 1,)
    ]


# -- exactly once, whatever the split and however often -----------------------------------------

UNIVERSE = messages_of(Generator(seed=8).events(240, adjustment_share=0.1, duplicate_share=0.05), 12)
_REFERENCE: dict[str, Any] = {}


def _reference_of_universe(pg_cluster: Any) -> dict[str, list[tuple[Any, ...]]]:
    """What a PostgreSQL worker stores from every message once (made once per session)."""
    if "snapshot" not in _REFERENCE:
        url = str(pg_cluster.create_schema())
        store = PostgresStore.open(url)
        try:
            store.write(decode_batch(UNIVERSE, MAX_DECODED, T))
        finally:
            store.close()
        _REFERENCE["snapshot"] = snapshot(url)
    return dict(_REFERENCE["snapshot"])


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, list[tuple[Any, ...]]]:
    """Hosts, and steps: a host writes a message (every message reaches at least one host, some
    two), time moves on or not, or a merge of some hosts with some overlap."""
    hosts = draw(st.integers(1, 3))
    deliveries = [(i, draw(st.integers(0, hosts - 1))) for i in range(len(UNIVERSE))]
    deliveries += [(i, draw(st.integers(0, hosts - 1))) for i in draw(st.lists(st.sampled_from(range(len(UNIVERSE)))))]
    deliveries = draw(st.permutations(deliveries))
    steps: list[tuple[Any, ...]] = []
    for index, host in deliveries:
        steps.append(("write", host, index, draw(st.sampled_from([0, 0, 1, 7]))))
        if draw(st.integers(0, 4)) == 0:
            merged = draw(st.lists(st.integers(0, hosts - 1), min_size=1, max_size=hosts))
            steps.append(("merge", merged, draw(st.sampled_from([0, 1, 900]))))
    return hosts, steps


@settings(
    max_examples=examples(8, fuzz=200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories())
def test_any_split_merged_any_number_of_times_stores_each_row_once(
    pg_cluster: Any, history: tuple[int, list[tuple[Any, ...]]]
) -> None:
    """Invariant: once every host has been merged after its last write, PostgreSQL holds what one
    PostgreSQL worker stores from every message once, and each row was counted new by exactly one
    merge (write times never go back, so any overlap, 0 included, loses nothing)."""
    hosts, steps = history
    url = str(pg_cluster.create_schema())
    copied: dict[str, int] = {"events": 0, "adjustments": 0, "rejects": 0}
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"host{h}.db" for h in range(hosts)]
        stores = [Store.open(p) for p in paths]
        now = T
        try:
            for step in steps:
                if step[0] == "write":
                    _, host, index, later = step
                    now += later
                    stores[host].write(decode_batch([UNIVERSE[index]], MAX_DECODED, now))
                else:
                    _, merged, overlap = step
                    _tally(copied, merge(url, [paths[h] for h in merged], overlap=overlap, show_progress=False))
            _tally(copied, merge(url, paths, overlap=0, show_progress=False))
        finally:
            for s in stores:
                s.close()
        assert snapshot(url) == _reference_of_universe(pg_cluster)
        assert copied == new_rows_in(url)
        assert sum(r.new for r in merge(url, paths, show_progress=False)) == 0


def _tally(copied: dict[str, int], results: list[Any]) -> None:
    for result in results:
        for table in copied:
            copied[table] += result.tables[table].new if table in result.tables else 0


# -- beside running workers, on both sides ------------------------------------------------------


def test_a_merge_beside_workers_writing_the_source_and_the_target_stores_each_row_once(
    tmp_path: Path, pg_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A SQLite worker fills the host's file while merges read it, and a PostgreSQL worker writes
    the same messages into the target (in reverse order) while merges write there too."""
    messages = bodies(seed=31, events=3000, per_message_bytes=1500)
    # Each message reaches PostgreSQL twice, through the host and through the live worker's queue,
    # and the queues give each delivery its own message id: two envelopes, one of everything else.
    expected = snapshot(reference(pg_cluster, messages + messages, tmp_path))

    target, host = str(pg_cluster.create_schema()), tmp_path / "host.db"
    queues = [LocalQueue(tmp_path / "host-queue.db"), LocalQueue(tmp_path / "live-queue.db")]
    send(queues[0], messages)
    send(queues[1], messages[::-1])
    stores: list[Any] = [Store.open(host), PostgresStore.open(target)]
    limits = Limits(wait_seconds=0, max_batch_events=200, max_batch_seconds=0.05)
    writers = [
        threading.Thread(target=Worker(q, s, limits, out=None).run, kwargs={"until_empty": True})
        for q, s in zip(queues, stores, strict=True)
    ]
    caplog.set_level(logging.WARNING)
    for w in writers:
        w.start()
    try:
        runs = 0
        while any(w.is_alive() for w in writers) or runs == 0:
            # No overlap: one writer's batches commit in the order of their write times, so the
            # marks alone must find every row written while merges read.
            merge(target, [host], overlap=0, chunk=97, show_progress=False)
            runs += 1
    finally:
        for w in writers:
            w.join()
        for s in stores:
            s.close()
        for q in queues:
            q.close()
    merge(target, [host], overlap=0, show_progress=False)
    assert snapshot(target) == expected
    assert "40P01" not in stores[1].retried
    assert not [r for r in caplog.records if "deadlock" in r.getMessage()]


def test_a_server_restarted_mid_merge_is_reconnected_and_the_merge_completes(
    tmp_path: Path, pg_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    messages = bodies(seed=41, events=400)
    (host,) = hosts_from(tmp_path, [messages])
    expected = snapshot(reference(pg_cluster, messages, tmp_path))
    target = str(pg_cluster.create_schema())
    PostgresStore.open(target).close()  # the schema, so the lock below has a table to hold
    # Another session holds merge_sources, so the merge stops at its first mark, mid-run.
    holder = psycopg.connect(target)
    holder.execute("LOCK TABLE merge_sources IN EXCLUSIVE MODE")
    results: list[Any] = []
    merging = threading.Thread(target=lambda: results.extend(merge(target, [host], show_progress=False)))
    merging.start()
    waiting = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO merge_sources%'"
    )
    try:
        wait_for(lambda: pg_rows(target, waiting) == [(1,)], 60, "the merge to wait for its mark")
        pg_cluster.restart("immediate")  # a crash for every client: the holder's and the merge's sessions
    finally:
        holder.close()  # first: a merge still waiting for the lock then goes on
        merging.join()
    assert snapshot(target) == expected
    stored = sum(
        int(pg_rows(target, f"SELECT count(*) FROM {t}")[0][0])
        for t in ("events", "adjustments", "envelopes", "rejects")
    )
    assert [r.new for r in results] == [stored]  # the merge finished, and was the only writer
    assert any("retrying" in r.getMessage() for r in caplog.records)


# -- refused, unreachable, too new --------------------------------------------------------------


def test_a_refused_target_exits_2_an_unreachable_one_3_without_the_password(
    tmp_path: Path, pg_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (source,) = hosts_from(tmp_path, [bodies(seed=4, events=20)])
    pg_cluster.require_password("firehose_merge", "right-secret")
    wrong = f"postgresql://firehose_merge:wrong-secret@127.0.0.1:{pg_cluster.port}/postgres"
    for url in (wrong, pg_cluster.url("no_such_database")):
        assert main(["merge", url, str(source)]) == 2
        err = capsys.readouterr().err
        assert "TARGET" in err and "is refused" in err and "wrong-secret" not in err and "Traceback" not in err
    nowhere = f"postgresql://fh:hidden-secret@127.0.0.1:{free_port()}/firehose"
    assert main(["merge", nowhere, str(source)]) == 3
    err = capsys.readouterr().err
    assert "cannot reach PostgreSQL" in err and "fh:***@" in err and "hidden-secret" not in err


def test_a_source_newer_than_the_code_or_missing_is_refused(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 999")
    db.close()
    assert main(["merge", pg_url, str(newer)]) == 3
    assert "newer than this tune-firehose" in capsys.readouterr().err
    assert main(["merge", pg_url, str(tmp_path / "missing.db")]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert pg_rows(pg_url, "SELECT count(*) FROM merge_sources") == [(0,)]
