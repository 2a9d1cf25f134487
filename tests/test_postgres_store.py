"""What only the PostgreSQL store has to get right: monthly partitions under the events key, text
PostgreSQL cannot hold, and the server's faults (restart, unreachable, refused login, read-only).

The contract both stores share is in test_store_contract.py; many writers at once in
test_postgres_writers.py. These run against the session's throwaway server (tests/pg.py).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from db.batch import EVENT_COLUMNS, Rows
from db.errors import DatabaseFault, DatabaseUrlError
from db.postgres import partitions
from db.postgres import schema as pg_schema
from db.postgres.store import PostgresStore
from db.store import Store
from tests.kit import tune_message
from worker.decoders import decode_batch
from worker.rows import empty_as_none

NOW = 1_790_100_000  # 2026-09-23
SEPT = 1_790_000_000  # 2026-09-21, in the month of NOW
MAX_DECODED = 32 * 1024 * 1024


def batch(*events: dict[str, Any], message_id: str = "m1") -> Any:
    return decode_batch([(message_id, tune_message(list(events)), 1)], MAX_DECODED, NOW)


def click(key: str, when: Any = SEPT, **fields: Any) -> dict[str, Any]:
    return {"action": "click", "tune_event_id": key, "datetime": when, "offer_id": 1, "payout": 0.05, **fields}


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]  # test SQL, written here


@pytest.fixture()
def store(pg_url: str) -> Any:
    s = PostgresStore.open(pg_url)
    yield s
    s.close()


def month_name(epoch: int) -> str:
    return partitions.partition_name(partitions.month_of(epoch))


# -- partitions and the events key ---------------------------------------------------------------


def test_a_redelivered_event_finds_its_first_copy_in_the_same_partition(store: PostgresStore, pg_url: str) -> None:
    far_future = "2400-01-01 00:00:00"  # beyond the months the store creates: events_default
    events = [click("dated"), click("undated", when=None), click("far", when=far_future)]
    first = store.write(batch(*events))
    again = [store.write(batch(*events, message_id=f"m{n}")) for n in range(2, 4)]
    assert (first.events, first.duplicates) == (3, 0)
    assert all((s.events, s.duplicates) == (0, 3) for s in again)
    placed = rows(pg_url, "SELECT tune_event_id, tableoid::regclass::text FROM events ORDER BY 1")
    assert placed == [("dated", month_name(SEPT)), ("far", "events_default"), ("undated", "events_default")]


def test_the_same_key_with_another_time_is_a_second_row_unlike_sqlite(
    store: PostgresStore, pg_url: str, tmp_path: Path
) -> None:
    """The documented difference: the key is (tune_event_id, event time) in PostgreSQL, because a
    partitioned table's unique key must hold the partition key; SQLite keeps the first row only."""
    same_key = [click("k"), click("k", when=SEPT + 60), click("k", when=SEPT + 40 * 86_400)]
    store.write(batch(*same_key))
    found = rows(pg_url, "SELECT event_time, tableoid::regclass::text FROM events ORDER BY 1")
    assert found == [
        (SEPT, month_name(SEPT)),
        (SEPT + 60, month_name(SEPT)),
        (SEPT + 40 * 86_400, month_name(SEPT + 40 * 86_400)),
    ]
    sqlite_store = Store.open(tmp_path / "f.db")
    assert sqlite_store.write(batch(*same_key)).events == 1
    sqlite_store.close()


def test_months_are_created_ahead_and_as_rows_need_them(store: PostgresStore, pg_url: str) -> None:
    current = partitions.month_of(int(datetime.now(UTC).timestamp()))
    ahead = {partitions.partition_name(current + n) for n in range(partitions.AHEAD + 1)}
    assert ahead <= {m.name for m in store.months()}
    old = int(datetime(2019, 3, 5, tzinfo=UTC).timestamp())
    store.write(batch(click("old", when=old)))
    assert "events_2019_03" in {m.name for m in store.months()}
    assert rows(pg_url, "SELECT tableoid::regclass::text FROM events") == [("events_2019_03",)]


def test_a_month_created_after_its_rows_arrived_takes_them_from_the_default_partition(
    store: PostgresStore, pg_url: str
) -> None:
    # Dated beyond the window the store creates months for: it waits in events_default ...
    current = partitions.month_of(int(datetime.now(UTC).timestamp()))
    later = current + partitions.FURTHEST_AHEAD + 2
    when = int(partitions.month_start(later).timestamp()) + 3600
    store.write(batch(click("early-bird", when=when)))
    assert rows(pg_url, "SELECT tableoid::regclass::text FROM events") == [("events_default",)]
    # ... until its month is created (time moved on), when it moves into the new partition.
    with store.conn.transaction():
        created = store.partitions.create(store.conn, [later])
    store.partitions.add(created)
    assert rows(pg_url, "SELECT tableoid::regclass::text FROM events") == [(partitions.partition_name(later),)]
    assert store.write(batch(click("early-bird", when=when), message_id="again")).duplicates == 1


def test_partitions_older_than_a_date_are_found_and_dropped(store: PostgresStore, pg_url: str) -> None:
    for year, month in ((2019, 3), (2019, 4), (2020, 1)):
        when = int(datetime(year, month, 2, tzinfo=UTC).timestamp())
        store.write(batch(click(f"e{year}{month}", when=when), message_id=f"m{year}{month}"))
    # Only whole months: April is not older than the 15th of April.
    assert [m.name for m in partitions.older_than(store.conn, date(2019, 4, 15))] == ["events_2019_03"]
    doomed = partitions.older_than(store.conn, date(2019, 5, 1))
    assert [m.name for m in doomed] == ["events_2019_03", "events_2019_04"]
    with store.conn.transaction():
        partitions.drop(store.conn, doomed)
    assert rows(pg_url, "SELECT tune_event_id FROM events WHERE event_time < 1600000000") == [("e20201",)]


@given(st.integers(-62_135_596_800, 253_402_300_799))  # every time worker.coerce.to_epoch accepts
def test_every_event_time_falls_inside_the_bounds_of_its_month(epoch: int) -> None:
    month = partitions.month_of(epoch)
    assert partitions.month_start(month).timestamp() <= epoch
    if month < 9999 * 12 + 11:  # December 9999 ends in year 10000, which datetime cannot hold
        assert epoch < partitions.month_start(month + 1).timestamp()
    moment = datetime.fromtimestamp(epoch, UTC)
    assert partitions.partition_name(month) == f"events_{moment.year:04d}_{moment.month:02d}"


@given(st.lists(st.one_of(st.none(), st.just(float("nan")), st.integers(-(2**63), 2**63 - 1)), max_size=20))
def test_a_month_is_asked_for_only_inside_the_window_and_only_for_a_time(times: list[Any]) -> None:
    now = float(NOW)
    first, last = partitions._window(now)
    wanted = {partitions.month_of(t) for t in times if type(t) is int and -62_135_596_800 <= t <= 253_402_300_799}
    assert partitions.Partitions().missing(times, now) == {m for m in wanted if first <= m <= last}


# -- text PostgreSQL cannot hold -----------------------------------------------------------------


def test_text_with_u0000_is_stored_with_a_replacement_character_and_the_raw_json_intact(
    store: PostgresStore, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stats = store.write(batch(click("nul", aff_sub="a\u0000b"), click("fine")))
    assert (stats.events, stats.duplicates) == (2, 0)
    [(aff_sub, raw)] = rows(pg_url, "SELECT aff_sub, raw_json FROM events WHERE tune_event_id = 'nul'")
    assert aff_sub == "a\ufffdb"
    assert '"aff_sub":"a\\u0000b"' in raw
    assert "U+FFFD" in caplog.text


# -- rows built for either store -----------------------------------------------------------------


def test_rows_built_for_sqlite_or_for_postgresql_are_stored_alike(
    pg_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty column is a NaN in rows built for SQLite and None in rows built for PostgreSQL (what
    `read_queue.py run` builds there); either way PostgreSQL takes them at once and stores NULL,
    never 'NaN', and no batch is refused and written again."""
    caplog.set_level(logging.WARNING)
    built = batch(click("a", aff_sub="x"), click("b", offer_id=None), {"action": "click", "tune_event_id": "c"})
    assert any(v != v for row in built.events for v in row)  # the NaN this test is about
    as_none = Rows()
    as_none.extend(built)
    as_none.events = [empty_as_none(row) for row in built.events]
    stored = []
    for rows_built in (built, as_none):
        url = pg_cluster.create_database()
        s = PostgresStore.open(url)
        try:
            assert s.write(rows_built).events == 3
        finally:
            s.close()
        stored.append(rows(url, "SELECT * FROM events ORDER BY tune_event_id"))
        offers = rows(url, "SELECT offer_id, aff_sub FROM events ORDER BY tune_event_id")
        assert offers == [(1, "x"), (None, None), (None, None)]
    assert stored[0] == stored[1]
    assert all(v is None or v == v for row in stored[0] for v in row)
    assert "refused" not in caplog.text


def test_a_worker_for_postgresql_and_its_helper_build_empty_columns_as_none() -> None:
    """After `build_empty_as_none` a process builds rows with None, and so does the decoding helper it
    starts next: neither side's rows hold a NaN, so PostgreSQL's COPY takes them as they are."""
    program = """
import json, sys
from worker import rows
from worker.decoders import make_decoder, decode_batch
from db.batch import Incoming
from tests.kit import tune_message
rows.build_empty_as_none()
items = [("m1", tune_message([{"action": "click", "tune_event_id": "a", "datetime": 1790000000}]), 1)]
inline = decode_batch(items, 1 << 20, 1790100000)
decoder = make_decoder("process")
helper = Incoming(decoder.submit(items, 1 << 20, 1790100000)).whole()
decoder.close()
print(json.dumps([[v != v for v in built.events[0]] for built in (inline, helper)]))
"""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", program], cwd=root, capture_output=True, text=True, check=True)
    inline, helper = json.loads(done.stdout)
    assert len(inline) == len(EVENT_COLUMNS) and not any(inline) and not any(helper)


# -- faults --------------------------------------------------------------------------------------


def test_a_restarted_server_is_reconnected_and_nothing_is_lost(
    store: PostgresStore, pg_url: str, pg_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store.write(batch(click("before")))
    pg_cluster.restart("immediate")  # a crash, as far as the store's connection can tell
    stats = store.write(batch(click("after"), click("before"), message_id="m2"))
    assert (stats.events, stats.duplicates) == (1, 1)
    assert rows(pg_url, "SELECT tune_event_id FROM events ORDER BY 1") == [("after",), ("before",)]
    assert "retrying" in caplog.text  # the lost connection was noticed and retried, not raised


def test_an_unreachable_server_is_retried_then_a_clear_fault(caplog: pytest.LogCaptureFixture) -> None:
    from tests.pg import _free_port

    url = f"postgresql://firehose:hunter2@127.0.0.1:{_free_port()}/firehose?connect_timeout=2"
    attempts = iter([False, False, True])
    caplog.set_level(logging.ERROR)
    with pytest.raises(DatabaseFault, match="cannot reach PostgreSQL at postgresql://firehose:\\*\\*\\*@") as raised:
        PostgresStore.open(url, give_up=lambda: next(attempts))
    assert caplog.text.count("unreachable, retrying") == 2
    assert "hunter2" not in str(raised.value) + caplog.text


class Patience:
    """A `give_up` that counts how often it was asked, and gives up at the third time."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked >= 3


def test_a_wrong_password_or_database_names_the_setting_and_hides_the_password(pg_cluster: Any) -> None:
    pg_cluster.require_password("firehose_pw", "right-secret")
    wrong = f"postgresql://firehose_pw:wrong-secret@127.0.0.1:{pg_cluster.port}/postgres"
    patience = Patience()
    with pytest.raises(DatabaseUrlError, match="DATABASE_URL") as raised:
        PostgresStore.open(wrong, give_up=patience)
    assert patience.asked == 0  # never retried: waiting would not help
    assert "wrong-secret" not in str(raised.value) and "firehose_pw:***@" in str(raised.value)
    with pytest.raises(DatabaseUrlError, match="DATABASE_URL"):
        PostgresStore.open(pg_cluster.url("no_such_database"), give_up=patience)
    assert patience.asked == 0
    own = pg_cluster.create_database().rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.url(own), autocommit=True) as admin:
        admin.execute("GRANT CREATE ON SCHEMA public TO firehose_pw")
    PostgresStore.open(wrong.replace("wrong-secret", "right-secret").replace("/postgres", f"/{own}")).close()


def test_a_server_that_refuses_writes_is_a_database_fault(store: PostgresStore) -> None:
    store.conn.execute("SET default_transaction_read_only = on")  # as a read-only replica would
    patience = Patience()
    with pytest.raises(DatabaseFault, match="read-only transaction"):
        store.write(batch(click("refused")), give_up=patience)
    assert patience.asked == 0  # a fault at once, not a retry


def test_libpq_parameters_in_the_url_pass_through_and_win_over_the_defaults(pg_url: str) -> None:
    sep = "&" if "?" in pg_url else "?"
    store = PostgresStore.open(f"{pg_url}{sep}application_name=etl-host-7&connect_timeout=3")
    try:
        shown = store.conn.execute("SELECT current_setting('application_name')").fetchone()
        assert (shown, store.conn.info.get_parameters()["connect_timeout"]) == (("etl-host-7",), "3")
    finally:
        store.close()
    store = PostgresStore.open(pg_url)  # without them: the store's own
    try:
        assert store.conn.execute("SELECT current_setting('application_name')").fetchone() == ("tune-firehose",)
    finally:
        store.close()


def test_a_transaction_on_a_fresh_server_session_still_writes(store: PostgresStore, pg_url: str) -> None:
    """A pooler in transaction mode (PgBouncer) may run each transaction on another server session,
    or reset one between clients (DISCARD ALL): nothing a batch needs may live only in the session."""
    for n in range(8):  # more than psycopg's threshold for preparing a statement it sees again
        store.write(batch(click(f"e{n}"), message_id=f"m{n}"))
    assert store.conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    store.conn.execute("DISCARD ALL")
    stats = store.write(batch(click("after"), message_id="after"))
    assert (stats.events, store.retried.total()) == (1, 0)
    assert rows(pg_url, "SELECT count(*) FROM events") == [(9,)]


def test_commits_are_durable_even_where_the_server_defaults_to_asynchronous_commit(pg_cluster: Any) -> None:
    pg_url = pg_cluster.create_database()  # its own: the setting below is the database's
    store = PostgresStore.open(pg_url)
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        name = admin.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        admin.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name)))
        # What the inserting transaction runs with, as a trigger inside it sees it.
        admin.execute(
            "CREATE TABLE seen (setting text);"
            "CREATE FUNCTION note_setting() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO seen VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$;"
            "CREATE TRIGGER note AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION note_setting()"
        )
    store = PostgresStore.open(pg_url)
    try:
        assert store.conn.execute("SHOW synchronous_commit").fetchone() == ("off",)  # the session's default
        store.write(batch(click("durable")))
    finally:
        store.close()
    assert rows(pg_url, "SELECT setting FROM seen") == [("on",)]


def test_a_failing_migration_leaves_the_database_as_it_was(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    PostgresStore.open(pg_url).close()
    broken = tmp_path / "migrations"
    shutil.copytree(pg_schema.MIGRATIONS_DIR, broken)
    latest = pg_schema.LATEST_VERSION
    (broken / f"{latest + 1:04d}_broken.sql").write_text("CREATE TABLE fine (x int);\nTHIS IS NOT SQL;\n")
    monkeypatch.setattr(pg_schema, "MIGRATIONS_DIR", broken)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError):
            pg_schema.migrate(conn, target=latest + 1)
        assert pg_schema.current_version(conn) == latest
        assert conn.execute("SELECT to_regclass('fine')").fetchone() == (None,)


def test_a_batch_of_the_most_events_is_sorted_in_memory_not_in_a_temporary_file(store: PostgresStore) -> None:
    """Each move sorts whole rows by key (docs/scaling-out.md, "How a batch is written"); at the
    server's default work_mem a batch of 5,000 events sorted on disk. The most a sort holds is the
    worker's largest batch, 5,000 events, of rows just under PostgreSQL's TOAST threshold (~2 KB:
    a longer row is compressed or moved out of line before the sort). Text that does not compress
    and ~1.6 KB rows: at 4 MB this spilled an 8 MB file."""
    rnd = random.Random(14)
    big = batch(*(click(f"big{n:05}", user_agent=rnd.randbytes(350).hex()) for n in range(5_000)))

    def temporary_files() -> int:
        # This session's counts reach pg_stat_database when its transaction ends: force that now.
        store.conn.execute("SELECT pg_stat_force_next_flush()")
        (count,) = store.conn.execute(
            "SELECT temp_files FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(count)

    before = temporary_files()
    assert store.write(big).events == 5_000
    assert temporary_files() == before
